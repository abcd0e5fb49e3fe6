"""Model presets, conf/model/*.yaml, HF build for the project tokenizer, and HF-format checkpoints."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from apr.cli.common import to_container
from apr.config import ConfigError, from_dict
from apr.model import (
    PRESETS,
    ModelConfig,
    build_for_tokenizer,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_model_yaml_matches_preset(name):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        c = to_container(compose("sft", overrides=[f"model={name}"]))
    assert from_dict(ModelConfig, c["model"], "model") == PRESETS[name]


def test_bad_model_fields_name_the_field():
    with pytest.raises(ConfigError, match="model.name: got 'huge'"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="model.num_heads"):
        ModelConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ConfigError, match="model.attn_implementation: got .flash.; accepted: sdpa, sdpa_packed, eager"):
        ModelConfig(attn_implementation="flash")


def test_paper_model_has_228m_non_embedding_parameters(tokenizer):
    with torch.device("meta"):  # shapes only, no memory
        model = build_for_tokenizer(ModelConfig.preset("paper_228m"), tokenizer)
    assert 226e6 < count_parameters(model)["non_embedding"] < 230e6


def test_build_uses_tokenizer_ids(tokenizer):
    model = build_for_tokenizer(ModelConfig.preset("tiny"), tokenizer)
    cfg, gen = model.config, model.generation_config
    assert cfg.vocab_size == len(tokenizer)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (
        tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert (gen.pad_token_id, gen.eos_token_id, gen.do_sample) == (tokenizer.pad_token_id, tokenizer.eos_token_id,
                                                                    False)
    assert model.config._attn_implementation == "sdpa"


def test_checkpoint_loads_with_plain_transformers(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = build_for_tokenizer(ModelConfig.preset("tiny", init_std=0.2), tokenizer, seed=3).eval()
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    text = "<bos>node 0 24:[16,19,21] []\ntry 19-16=3 [21,3] gen 0,0\n"
    ids = hf_tok.encode(text, add_special_tokens=False)
    assert ids == tokenizer.encode(text, add_special_tokens=False) and hf_tok.decode(ids) == text
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, hf_model(x).logits)
    assert hf_model.generation_config.eos_token_id == tokenizer.eos_token_id
    out = hf_model.generate(x, max_new_tokens=3)  # greedy by default, pad/eos from the checkpoint
    assert out.shape[1] <= x.shape[1] + 3
    reloaded, _ = load_checkpoint(tmp_path / "ckpt", attn_implementation="eager")
    assert reloaded.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="no config.json"):
        load_checkpoint(tmp_path / "missing")
