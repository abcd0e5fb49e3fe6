"""HF-format models and checkpoints: build for a tokenizer, save, load, count parameters.

A checkpoint directory is a plain HF one (`config.json`, `model.safetensors`,
`generation_config.json`, `tokenizer.json`, ...) that `AutoModelForCausalLM.from_pretrained(dir)`
and `AutoTokenizer.from_pretrained(dir)` load with no project code.

    >>> from apr.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> model = build_for_tokenizer(ModelConfig.preset("tiny"), tok)
    >>> model.config.vocab_size == len(tok), model.config.eos_token_id == tok.eos_token_id
    (True, True)
    >>> count_parameters(model)["non_embedding"]
    1049728
"""

from __future__ import annotations

from pathlib import Path

from apr.config import ConfigError
from apr.model.config import ModelConfig, build_model


def build_for_tokenizer(cfg: ModelConfig, tokenizer, seed: int = 0):
    """A fresh `LlamaForCausalLM` sized for `tokenizer` (vocab, pad/bos/eos ids), generation config set."""
    model = build_model(cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=seed)
    set_generation_ids(model, tokenizer)
    return model


def set_generation_ids(model, tokenizer) -> None:
    """Greedy-by-default generation config that stops at `<eos>` and pads with `<pad>`."""
    gen = model.generation_config
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False


def save_checkpoint(model, tokenizer, path: str | Path, state_dict: dict | None = None) -> Path:
    """Write `model` (fp32 safetensors + config + generation config) and `tokenizer` into `path`.

    `state_dict` overrides the model's own (e.g. parameters gathered from ZeRO-3 shards).
    """
    from transformers.utils import logging as hf_logging

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    set_generation_ids(model, tokenizer)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per checkpoint breaks the training bar
    try:
        model.save_pretrained(path, state_dict=state_dict)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(path)
    return path


def load_checkpoint(path: str | Path, attn_implementation: str | None = None):
    """(model, tokenizer) from an HF checkpoint directory, model in fp32 and train mode off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from apr.model.integrity import check_checkpoint

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"checkpoint: {str(path)!r} is not an HF model directory (no config.json)")
    check_checkpoint(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    return model, AutoTokenizer.from_pretrained(path)


def count_parameters(model) -> dict[str, int]:
    """Total, embedding (input + untied output) and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    embedding = emb.numel() + (0 if out is emb else out.numel())
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
