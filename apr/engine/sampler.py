"""Owns token choice: greedy / temperature / top-k / top-p for a batch, batch-invariant per row.

Randomness is counter-based: the uniform number behind the k-th token a request samples (k = 0,
1, ...) is `uniforms(seed_key(seed), k)`, the (k+1)-th output of SplitMix64 keyed by the request's
seed. It is a pure function of (seed, k), computed for the whole batch in a few vectorised ops:
no per-request generator object, nothing that batch composition, preemption or the device can
change. The token is the inverse CDF of that row's filtered distribution at that number, so a
row's token depends only on its logits and its own (seed, k).

`sample` runs on the logits' device; it uploads the rows' draws (and, unless every row is plain
T=1 or greedy, their parameters), small host arrays, without waiting for the GPU. `fetch` brings
every row's token and log-prob back in one device -> host transfer per step.

    >>> import torch
    >>> from apr.engine.base import SamplingParams
    >>> logits = torch.tensor([[0.0, 5.0, 1.0]])
    >>> fetch([sample(logits, SampleRows.of([SamplingParams(temperature=0.0)], [0.5]))])[0]
    array([1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from apr.engine.base import SamplingParams

_MASK64 = (1 << 64) - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def seed_key(seed: int) -> int:
    """The 64-bit stream key of a request's seed (any non-negative int; taken mod 2^64): SplitMix64's mix.

    Mixing first means the streams of seeds s and s + 1 (n-samples) start far apart.

    >>> seed_key(0) == seed_key(2**64)
    True
    """
    z = (seed + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def uniforms(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) with 53 random bits: the (counter+1)-th SplitMix64 output of each key.

    `keys` uint64 from `seed_key` and `counters` (non-negative ints) broadcast together, e.g. (N,) and
    (N,), or (R,) keys against (W, R) counters. Vectorised numpy: uint64 arithmetic wraps by
    definition there, which SplitMix64 needs.

    >>> u = uniforms(np.array([seed_key(7)] * 2, dtype=np.uint64), np.array([0, 1]))  # tokens 0, 1 of seed 7
    >>> bool(((0 <= u) & (u < 1)).all()), bool(u[0] != u[1])
    (True, True)
    """
    z = keys.astype(np.uint64) + (counters.astype(np.uint64) + np.uint64(1)) * np.uint64(_GAMMA)  # (N,)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # (N,): exact, 53 bits


GREEDY, PLAIN, PLAIN_SCALED, FILTERED, FILTERED_SCALED = range(5)  # row kinds: which path a row takes


def row_kind(temperature: float, top_k: int, top_p: float) -> int:
    """A row's sampling path, from its own parameters only (so never from the rest of the batch)."""
    if temperature == 0:
        return GREEDY
    return (FILTERED if top_k > 0 or top_p < 1 else PLAIN) + (temperature != 1)


@dataclass
class SampleRows:
    """Per-row inputs of one `sample` call as host arrays (uploaded as needed), with the row kinds counted."""

    u: np.ndarray  # (N,) float64 draws in [0, 1) (greedy rows: unused)
    params: np.ndarray  # (3, N) float64: temperature (greedy rows: 1), top_p, top_k (<= 0: none)
    kinds: np.ndarray  # (N,) `row_kind` codes
    counts: list[int]  # rows of each kind

    @classmethod
    def of(cls, params: list[SamplingParams], draws: list[float]) -> SampleRows:
        """Rows from `SamplingParams` and explicit draws (tests, one-off calls)."""
        block = np.array([[p.temperature or 1.0 for p in params], [p.top_p for p in params],
                          [p.top_k for p in params]], dtype=np.float64)  # (3, N)
        kinds = np.array([row_kind(p.temperature, p.top_k, p.top_p) for p in params], dtype=np.int8)
        return cls(np.array(draws, dtype=np.float64), block, kinds, np.bincount(kinds, minlength=5).tolist())


@dataclass
class Sampled:
    """One `sample` call's results, still on the device."""

    tokens: torch.Tensor  # (N,) long
    logprobs: torch.Tensor  # (N,) float32; on a GPU, NaN where the fast path's p underflowed (`fetch` recomputes)
    logits: torch.Tensor  # (N, V) float32, for that recompute
    is_fast: bool = False  # the T=1 path on a GPU, whose log-probs may hold such NaNs


def sample(logits: torch.Tensor, rows: SampleRows) -> Sampled:
    """Pick one token per row of `logits` (N, V) on its device; return tokens and their log-probs.

    Log-probs are of the distribution the token was drawn from up to truncation:
    `log_softmax(logits / temperature)` (temperature 0, greedy: `log_softmax(logits)`), before
    top-k / top-p, as SGLang returns them by default; RL refuses top-k / top-p (see `Completion`).
    Which path a row takes depends only on its own parameters (`row_kind`), never on the other rows.
    """
    logits = logits.float()  # (N, V): bf16 models sample and score in fp32
    n = logits.shape[0]
    counts = rows.counts
    if counts[PLAIN] == n:
        # the rollout case: the sampling distribution *is* the raw one, so one softmax serves both
        probs = torch.softmax(logits, dim=-1)  # (N, V)
        tokens = _inverse_cdf(probs, to_device(rows.u, logits.device))  # (N,)
        chosen = probs.gather(1, tokens[:, None])[:, 0]  # (N,)
        # log(p) equals log_softmax to ~1e-7 unless p is subnormal (never, for a token drawn by chance);
        # such a row gets log_softmax: checked here on CPU, from a NaN by `fetch` on a GPU (no sync here)
        if logits.device.type != "cpu":
            return Sampled(tokens, torch.where(chosen > 1e-30, chosen.log(), float("nan")), logits, is_fast=True)
        is_tiny = chosen <= 1e-30  # (N,)
        if bool(is_tiny.any()):
            exact = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]  # (N,)
            return Sampled(tokens, torch.where(is_tiny, exact, chosen.log()), logits)
        return Sampled(tokens, chosen.log(), logits)
    if counts[GREEDY]:
        tokens = logits.argmax(dim=-1)  # (N,): the greedy rows' tokens; the others are overwritten
    else:
        tokens = torch.zeros(n, dtype=torch.long, device=logits.device)  # (N,)
    if counts[GREEDY] < n:
        u = to_device(rows.u, logits.device)  # (N,) float64
        params = to_device(rows.params, logits.device)  # (3, N) float64
        for kinds, fn in (((PLAIN, PLAIN_SCALED), _sample_plain), ((FILTERED, FILTERED_SCALED), _sample_filtered)):
            num, is_scaled = counts[kinds[0]] + counts[kinds[1]], bool(counts[kinds[1]])
            if num == n:
                tokens = fn(logits, u, params, is_scaled)  # (N,)
            elif num:
                idx = to_device(np.flatnonzero((rows.kinds == kinds[0]) | (rows.kinds == kinds[1])), logits.device)
                tokens[idx] = fn(logits[idx], u[idx], params[:, idx], is_scaled)  # (M,)
        if counts[PLAIN_SCALED] or counts[FILTERED_SCALED]:
            logits = logits / params[0].float()[:, None]  # (N, V)
    # the fused log_softmax kernel is ~2x faster on CPU than logsumexp + gather
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]  # (N,)
    return Sampled(tokens, logprobs, logits)


def fetch(parts: list[Sampled]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N,) int64 and log-probs (N,) of `parts`, in order: one device -> host transfer.

    The transfer packs both as float64, which holds token ids and float32 log-probs exactly. A
    fast-path row whose p underflowed (NaN) gets its exact `log_softmax` value here, from a
    second, tiny transfer.
    """
    tokens, logprobs = (_shared if parts[0].tokens.device.type == "cpu" else _packed)(parts)
    if any(p.is_fast for p in parts) and math.isnan(logprobs.min()):  # min propagates NaN: one reduction
        bad = np.flatnonzero(np.isnan(logprobs))
        logits = torch.cat([p.logits for p in parts]) if len(parts) > 1 else parts[0].logits  # (N, V)
        idx = to_device(bad, logits.device)  # (M,)
        tok = to_device(tokens[bad], logits.device)  # (M,)
        exact = torch.log_softmax(logits[idx], dim=-1).gather(1, tok[:, None])[:, 0]  # (M,)
        logprobs = logprobs.copy()
        logprobs[bad] = exact.cpu().numpy()
    return tokens, logprobs


def _shared(parts: list[Sampled]) -> tuple[np.ndarray, np.ndarray]:
    """CPU: nothing to transfer, the arrays share the tensors' memory."""
    if len(parts) == 1:
        return parts[0].tokens.numpy(), parts[0].logprobs.numpy()
    return np.concatenate([p.tokens.numpy() for p in parts]), np.concatenate([p.logprobs.numpy() for p in parts])


def _packed(parts: list[Sampled]) -> tuple[np.ndarray, np.ndarray]:
    """One device -> host copy of every part's tokens and log-probs, packed as float64 (both exact)."""
    packed = [torch.stack([p.tokens.double(), p.logprobs.double()]) for p in parts]  # (2, N_i) each
    host = (packed[0] if len(packed) == 1 else torch.cat(packed, dim=1)).cpu().numpy()  # (2, N)
    return host[0].astype(np.int64), host[1]


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`: shared memory on CPU; on CUDA an upload that does not wait for queued kernels.

    `non_blocking` from pageable memory stages the bytes before returning (the array may go at once);
    a blocking copy would first synchronise the stream, i.e. wait for the forward in flight.
    """
    return torch.from_numpy(array).to(device, non_blocking=True)


def _block_size(vocab: int) -> int:
    """A divisor of the vocabulary near 64 when there is one (no padding copy), else 64."""
    return next((b for b in (64, 60, 56, 50, 70, 48, 72, 40, 80, 42, 84, 35, 96, 32, 100, 128) if vocab % b == 0), 64)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index where the running sum of `weights` (M, V), unnormalised, first exceeds u * total (u: (M,) float64).

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
    x = (u * block_cdf[:, -1])[:, None]  # (M, 1)
    # right=True: first index with cdf > x, so zero-weight tokens are never chosen
    b = torch.searchsorted(block_cdf, x, right=True).clamp_(max=num_blocks - 1)  # (M, 1)
    before = torch.where(b > 0, block_cdf.gather(1, (b - 1).clamp(min=0)), 0.0)  # (M, 1)
    inner = blocks[torch.arange(M, device=weights.device), b[:, 0]]  # (M, bs)
    inner_cdf = torch.cumsum(inner, dim=-1, dtype=torch.float64) + before  # (M, bs)
    t = torch.searchsorted(inner_cdf, x, right=True).clamp_(max=block - 1)  # (M, 1)
    return (b * block + t)[:, 0].clamp_(max=V - 1)  # (M,)


def _sample_plain(logits: torch.Tensor, u: torch.Tensor, params: torch.Tensor, is_scaled: bool) -> torch.Tensor:
    """`u` (M,) draws; `params` (3, M): temperature, top_p, top_k rows (see `SampleRows`)."""
    if is_scaled:
        logits = logits / params[0].float()[:, None]  # (M, V)
    return _inverse_cdf(torch.softmax(logits, dim=-1), u)  # fused softmax beats exp alone on CPU


def _sample_filtered(logits: torch.Tensor, u: torch.Tensor, params: torch.Tensor, is_scaled: bool) -> torch.Tensor:
    # stable sort: tied logits keep vocabulary order, so the result is deterministic
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # (M, V), (M, V)
    scaled = sorted_logits / params[0].float()[:, None]  # (M, V)
    ranks = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    top_k = params[2].long()  # (M,)
    top_k = top_k.masked_fill(top_k <= 0, logits.shape[-1])  # (M,): no top-k keeps every rank
    scaled = scaled.masked_fill(ranks[None, :] >= top_k[:, None], float("-inf"))  # (M, V)
    probs = torch.softmax(scaled, dim=-1)  # (M, V)
    # keep a token while the mass strictly before it is < top_p: the smallest set reaching top_p
    mass_before = probs.cumsum(dim=-1) - probs  # (M, V)
    probs = probs * (mass_before < params[1].float()[:, None])  # (M, V)
    return order.gather(1, _inverse_cdf(probs, u)[:, None])[:, 0]  # (M,)
