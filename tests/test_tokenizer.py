import pytest

from apr.config import ConfigError
from apr.protocol import SPECIAL_TOKENS
from apr.tokenizer import TokenizerConfig, build_tokenizer, vocabulary


def test_deterministic_vocabulary():
    assert vocabulary(TokenizerConfig()) == vocabulary(TokenizerConfig())
    tok = build_tokenizer()
    assert [tok.convert_ids_to_tokens(i) for i in range(len(SPECIAL_TOKENS))] == list(SPECIAL_TOKENS)


def test_integers_single_tokens_up_to_bound_then_digits(tokenizer):
    enc = lambda s: tokenizer.convert_ids_to_tokens(tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    assert enc("999") == ["999"] and enc(" 27") == [" 27"]
    assert enc("1234") == ["1", "2", "3", "4"]
    assert enc("007") == ["0", "0", "7"]
    assert enc("[1431,5]") == ["[", "1", "4", "3", "1", ",", "5", "]"]
    small = build_tokenizer(TokenizerConfig(max_int=99))
    assert small.convert_ids_to_tokens(small.encode("123 45", add_special_tokens=False)) == ["1", "2", "3", " 45"]


def test_save_and_reload_with_autotokenizer(tmp_path, tokenizer):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<bos>node 0 27:[22,26,31,53] []\ntry 53-31=22 [22,26,22] gen 0,0\n<spawn>node 0,0 27:[22,26,22] [53-31=22]\n</spawn><result></result>answer (53-31)+5\n<eos>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert loaded.encode(text, add_special_tokens=False) == ids
    assert loaded.decode(ids) == text
    assert loaded.eos_token == "<eos>" and loaded.pad_token_id == 0


@pytest.mark.parametrize("max_int", [0, 50, 1000])
def test_bad_bound_names_the_field(max_int):
    with pytest.raises(ConfigError, match="tokenizer.max_int"):
        TokenizerConfig(max_int=max_int)
