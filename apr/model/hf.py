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
from apr.model.config import ModelConfig, build_model, register_attention


def build_for_tokenizer(cfg: ModelConfig, tokenizer, seed: int = 0):
    """A fresh `LlamaForCausalLM` sized for `tokenizer` (vocab, pad/bos/eos ids), generation config set."""
    model = build_model(cfg, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, seed=seed)
    set_generation_ids(model, tokenizer)
    if cfg.number_init == "numeric":
        init_number_embeddings(model, tokenizer, cfg.init_std, seed)
    return model


def init_number_embeddings(model, tokenizer, std: float, seed: int = 0) -> int:
    """Start every number token's embedding from its value: sin/cos of 2*pi*n/p at log-spaced periods p
    (2 ... 4 x the largest number) in the first half of the dimensions, a random part per value in the
    other half, and one shared direction for the spaced form (" 7" vs "7"), all at `std` per dimension.
    Sums and differences are then rotations of these features, which a SwiGLU block can compute, and a
    number is copied or compared by its value from the first step. Returns how many tokens it set.

        >>> from apr.tokenizer import build_tokenizer
        >>> tok = build_tokenizer()
        >>> model = build_for_tokenizer(ModelConfig.preset("tiny", number_init="numeric"), tok)
        >>> w = model.get_input_embeddings().weight
        >>> a, sa, b, sb = tok.convert_tokens_to_ids(["7", " 7", "8", " 8"])
        >>> bool(((w[sa] - w[a]) - (w[sb] - w[b])).abs().max() < 1e-6), bool((w[a] == w[b]).all())
        (True, False)
    """
    import math

    import torch

    numbers = [(i, int(w.strip()), w.startswith(" ")) for w, i in tokenizer.get_vocab().items() if w.strip().isdigit()]
    if not numbers:
        return 0
    weight = model.get_input_embeddings().weight  # (V, H)
    hidden = weight.shape[1]
    num_freq = hidden // 4
    largest = max(n for _, n, _ in numbers)
    gen = torch.Generator().manual_seed(seed + 1)
    periods = torch.logspace(math.log10(2.0), math.log10(4.0 * largest + 4), num_freq)  # (F,)
    rand = torch.randn(largest + 1, hidden - 2 * num_freq, generator=gen) * std  # (N, H - 2F), one row per value
    spaced = torch.randn(hidden, generator=gen) * std * 0.5  # (H,)
    with torch.no_grad():
        for token_id, n, is_spaced in numbers:
            angle = 2 * math.pi * n / periods  # (F,)
            feats = torch.cat([torch.sin(angle), torch.cos(angle)]) * std * math.sqrt(2)  # (2F,)
            row = torch.cat([feats, rand[n]]) + (spaced if is_spaced else 0)  # (H,)
            weight[token_id] = row.to(weight.dtype)
    return len(numbers)


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

    from apr.model.integrity import check_checkpoint, check_finite_weights

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"checkpoint: {str(path)!r} is not an HF model directory (no config.json)")
    check_checkpoint(path)
    register_attention(attn_implementation)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    check_finite_weights(model, path)
    return model, AutoTokenizer.from_pretrained(path)


def count_parameters(model) -> dict[str, int]:
    """Total, embedding (input + untied output) and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    embedding = emb.numel() + (0 if out is emb else out.numel())
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
