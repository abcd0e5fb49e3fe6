"""The project's word-level HF fast tokenizer, built deterministically from the trace format.

Integers 0..max_int are single tokens, larger ones fall back to digits; every keyword and
punctuation mark of the format is a token; each word exists bare (line start, after markup) and
with its leading space. Decoding concatenates tokens, so `decode(encode(t)) == t` for any text
made of these words.

    >>> tok = build_tokenizer()
    >>> ids = tok.encode("node 0 27:[22,26,31,53] []\\n", add_special_tokens=False)
    >>> tok.decode(ids) == "node 0 27:[22,26,31,53] []\\n", len(ids)
    (True, 16)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apr.config import check
from apr.protocol import BOS, EOS, PAD, SPECIAL_TOKENS, UNK
from apr.search.format import KEYWORDS, PUNCTUATION


@dataclass
class TokenizerConfig:
    max_int: int = 999  # integers up to this are single tokens; must be 10**k - 1
    extra_words: tuple[str, ...] = field(default_factory=tuple)  # words of other tasks' formats

    def __post_init__(self) -> None:
        digits = len(str(self.max_int))
        check(self.max_int >= 9 and self.max_int == 10**digits - 1, "tokenizer.max_int", self.max_int,
              "10**k - 1 for k >= 1 (9, 99, 999, 9999)")
        for w in self.extra_words:
            check(bool(w) and not any(c.isspace() for c in w), "tokenizer.extra_words", w,
                  "non-empty words without whitespace")


def _pre_tokenizer_pattern(max_digits: int) -> str:
    # A piece is an optional leading space plus: a whole integer of <= max_digits digits (no
    # leading zero), else a single digit, else a run of letters, else one other character; or a
    # lone whitespace character (newline, a space not followed by a word).
    return (rf"[ ]?(?<!\d)(?:0|[1-9]\d{{0,{max_digits - 1}}})(?!\d)|[ ]?\d|[ ]?[A-Za-z_]+"
            rf"|[ ]?[^\sA-Za-z_\d]|\s")


def vocabulary(cfg: TokenizerConfig) -> list[str]:
    """The ordered vocabulary: special tokens first, then words bare and space-prefixed."""
    words = ["\n", " ", "\t"]
    base = list(KEYWORDS) + list(PUNCTUATION) + list(cfg.extra_words) + [str(i) for i in range(cfg.max_int + 1)]
    for w in base:
        words += [w, " " + w]
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    for w in words:
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    return vocab


def build_tokenizer(cfg: TokenizerConfig | None = None):
    """A `PreTrainedTokenizerFast` for the trace format with the protocol's special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    cfg = cfg or TokenizerConfig()
    vocab = {w: i for i, w in enumerate(vocabulary(cfg))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    pattern = _pre_tokenizer_pattern(len(str(cfg.max_int)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[s for s in SPECIAL_TOKENS if s not in (BOS, EOS, PAD, UNK)],
        clean_up_tokenization_spaces=False, model_max_length=1_000_000, padding_side="right",
    )
