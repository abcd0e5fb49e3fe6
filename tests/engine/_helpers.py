"""Helpers for engine tests: a tiny random Llama and HF / full-recompute references."""

from __future__ import annotations

import torch

from apr.model.config import ModelConfig, build_model

VOCAB = 100


def tiny_model(seed: int = 0):
    # init_std 0.5 instead of 0.02: with small weights every prompt decodes to the same few
    # tokens and parity tests would pass vacuously; num_kv_heads=2 exercises GQA
    cfg = ModelConfig(name="test", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                      max_position_embeddings=256, init_std=0.5)
    return build_model(cfg, vocab_size=VOCAB, seed=seed).eval()


def random_prompts(lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """HF `generate`, one prompt at a time, EOS disabled (the engine only stops on stop_token_ids)."""
    x = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def full_logprobs(model, context: list[int], output: list[int], temperature: float = 1.0) -> list[float]:
    """Log-prob of each output token from one full forward over context + output (no cache), under
    logits / temperature (temperature 0, greedy: the raw distribution)."""
    with torch.inference_mode():
        logits = model(torch.tensor([context + output])).logits[0].float()  # (T, V)
    lp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)  # (T, V)
    return [lp[len(context) - 1 + i, t].item() for i, t in enumerate(output)]


def by_id(completions):
    return {c.request_id: c for c in completions}
