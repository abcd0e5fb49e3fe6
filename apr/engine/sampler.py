"""Owns token choice: greedy / temperature / top-k / top-p for a batch, batch-invariant per row.

Randomness comes from one uniform number per sampled token, drawn by the caller from the
sequence's own `random.Random(seed)`; the token is the inverse CDF of that row's filtered
distribution at that number. So a row's token depends only on its logits and its own draw,
never on batch composition, and the whole batch is sampled with a handful of tensor ops
(a `torch.multinomial(generator=...)` call per row would cost ~10 us each, ~15% of a
64-row tiny-model step).

    >>> import torch
    >>> from apr.engine.base import SamplingParams
    >>> logits = torch.tensor([[0.0, 5.0, 1.0]])
    >>> sample(logits, [SamplingParams(temperature=0.0)], [0.5])[0]
    [1]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from apr.engine.base import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]
           ) -> tuple[list[int], list[float]]:
    """Pick one token per row of `logits` (N, V); return tokens and their log-probs.

    `uniforms[i]` in [0, 1) is row i's draw (ignored for greedy rows). Log-probs are of the
    distribution the token was drawn from up to truncation: `log_softmax(logits / temperature)`
    (temperature 0, greedy: `log_softmax(logits)`), before top-k / top-p, as SGLang returns them
    by default; RL refuses top-k / top-p (see `Completion`).
    """
    logits = logits.float()  # (N, V): bf16 models sample and score in fp32
    plain, filtered, all_t1 = [], [], True
    for i, p in enumerate(params):
        if p.temperature != 0:
            (filtered if p.top_k > 0 or p.top_p < 1 else plain).append(i)
        all_t1 = all_t1 and p.temperature == 1.0
    if len(plain) == len(params) and all_t1:
        # the rollout case: the sampling distribution *is* the raw one, so one softmax serves both
        probs = torch.softmax(logits, dim=-1)  # (N, V)
        tokens = _inverse_cdf(probs, uniforms)  # (N,)
        chosen = probs.gather(1, tokens[:, None])[:, 0]  # (N,)
        # log(p) equals log_softmax to ~1e-7 unless p is subnormal (never, for a token drawn by chance)
        if bool((chosen > 1e-30).all()):
            return tokens.tolist(), chosen.log().tolist()
    elif len(plain) == len(params):
        tokens = _sample_plain(logits, params, uniforms)  # (N,)
    else:
        tokens = logits.argmax(dim=-1)  # (N,)
        for rows, fn in ((plain, _sample_plain), (filtered, _sample_filtered)):
            if rows:
                idx = torch.tensor(rows, device=logits.device)  # (M,)
                tokens[idx] = fn(logits[idx], [params[i] for i in rows], [uniforms[i] for i in rows])
    temps = [p.temperature if p.temperature > 0 else 1.0 for p in params]
    if any(t != 1.0 for t in temps):
        logits = logits / torch.tensor(temps, dtype=logits.dtype, device=logits.device)[:, None]  # (N, V)
    # the fused log_softmax kernel is ~2x faster on CPU than logsumexp + gather
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]  # (N,)
    return tokens.tolist(), logprobs.tolist()


def _block_size(vocab: int) -> int:
    """A divisor of the vocabulary near 64 when there is one (no padding copy), else 64."""
    return next((b for b in (64, 60, 56, 50, 70, 48, 72, 40, 80, 42, 84, 35, 96, 32, 100, 128) if vocab % b == 0), 64)


def _inverse_cdf(weights: torch.Tensor, uniforms: list[float]) -> torch.Tensor:
    """Index where the running sum of `weights` (M, V), unnormalised, first exceeds u * total.

    Two levels: sums of ~64-token blocks locate the block, one block's running sum the token. A
    running sum over the whole vocabulary is a sequential kernel ~10x slower than block sums.
    Sums are fp64, so block totals and in-block running sums agree far below fp32 resolution.
    """
    M, V = weights.shape
    block = _block_size(V)
    num_blocks = -(-V // block)
    if num_blocks * block != V:
        weights = F.pad(weights, (0, num_blocks * block - V))  # (M, nb * bs)
    blocks = weights.view(M, num_blocks, block)  # (M, nb, bs)
    block_cdf = blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # (M, nb)
    u = torch.tensor(uniforms, dtype=torch.float64, device=weights.device)  # (M,)
    x = (u * block_cdf[:, -1])[:, None]  # (M, 1)
    # right=True: first index with cdf > x, so zero-weight tokens are never chosen
    b = torch.searchsorted(block_cdf, x, right=True).clamp_(max=num_blocks - 1)  # (M, 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), 0.0)  # (M, 1)
    inner = blocks[torch.arange(M, device=weights.device), b[:, 0]]  # (M, bs)
    inner_cdf = torch.cumsum(inner, dim=-1, dtype=torch.float64) + before  # (M, bs)
    t = torch.searchsorted(inner_cdf, x, right=True).clamp_(max=block - 1)  # (M, 1)
    return (b * block + t)[:, 0].clamp_(max=V - 1)  # (M,)


def _temperatures(params: list[SamplingParams], logits: torch.Tensor) -> torch.Tensor:
    return torch.tensor([p.temperature for p in params], dtype=logits.dtype, device=logits.device)[:, None]  # (M, 1)


def _sample_plain(logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]) -> torch.Tensor:
    if any(p.temperature != 1.0 for p in params):
        logits = logits / _temperatures(params, logits)  # (M, V)
    return _inverse_cdf(torch.softmax(logits, dim=-1), uniforms)  # fused softmax beats exp alone on CPU


def _sample_filtered(logits: torch.Tensor, params: list[SamplingParams], uniforms: list[float]) -> torch.Tensor:
    # stable sort: tied logits keep vocabulary order, so the result is deterministic
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # (M, V), (M, V)
    scaled = sorted_logits / _temperatures(params, logits)  # (M, V)
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=logits.device)  # (M,)
    ranks = torch.arange(vocab, device=logits.device)  # (V,)
    scaled = scaled.masked_fill(ranks[None, :] >= top_k[:, None], float("-inf"))  # (M, V)
    probs = torch.softmax(scaled, dim=-1)  # (M, V)
    top_p = torch.tensor([p.top_p for p in params], dtype=probs.dtype, device=logits.device)  # (M,)
    # keep a token while the mass strictly before it is < top_p: the smallest set reaching top_p
    mass_before = probs.cumsum(dim=-1) - probs  # (M, V)
    probs = probs * (mass_before < top_p[:, None])  # (M, V)
    return order.gather(1, _inverse_cdf(probs, uniforms)[:, None])[:, 0]  # (M,)
