"""Owns token choice: greedy / temperature / top-k / top-p for a batch, batch-invariant per row.

Randomness is counter-based: the uniform number behind the k-th token a request samples (k = 0,
1, ...) is `uniforms(seed_key(seed), k)`, the (k+1)-th output of SplitMix64 keyed by the request's
seed. It is a pure function of (seed, k), computed for the whole batch in a few vectorised ops:
no per-request generator object, nothing that batch composition, preemption or the device can
change. The token is the inverse CDF of that row's filtered distribution at that number, so a
row's token depends only on its logits and its own (seed, k).

`sample` runs on the logits' device with one upload of per-row parameters; `fetch` brings every
row's token and log-prob back in one device -> host transfer.

    >>> import torch
    >>> from apr.engine.base import SamplingParams
    >>> logits = torch.tensor([[0.0, 5.0, 1.0]])
    >>> fetch([sample(logits, SampleRows.of([SamplingParams(temperature=0.0)], [0.5]))])[0]
    array([1])
"""

from __future__ import annotations

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

    `keys` (N,) uint64 from `seed_key`, `counters` (N,) non-negative ints. Vectorised numpy: uint64
    arithmetic wraps by definition there, which SplitMix64 needs.

    >>> u = uniforms(np.array([seed_key(7)] * 2, dtype=np.uint64), np.array([0, 1]))  # tokens 0, 1 of seed 7
    >>> bool(((0 <= u) & (u < 1)).all()), bool(u[0] != u[1])
    (True, True)
    """
    z = keys.astype(np.uint64) + (counters.astype(np.uint64) + np.uint64(1)) * np.uint64(_GAMMA)  # (N,)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # (N,): exact, 53 bits


@dataclass
class SampleRows:
    """Per-row inputs of one `sample` call, as host arrays (N,): one upload, and the row kinds known here."""

    temperature: np.ndarray  # float64; 0 = greedy
    top_k: np.ndarray  # int64; <= 0: no top-k
    top_p: np.ndarray  # float64 in (0, 1]
    u: np.ndarray  # float64 in [0, 1): the row's draw (ignored for greedy rows)

    @classmethod
    def of(cls, params: list[SamplingParams], draws: list[float]) -> SampleRows:
        """Rows from `SamplingParams` and explicit draws (tests, one-off calls)."""
        return cls(np.array([p.temperature for p in params], dtype=np.float64),
                   np.array([p.top_k for p in params], dtype=np.int64),
                   np.array([p.top_p for p in params], dtype=np.float64), np.array(draws, dtype=np.float64))


@dataclass
class Sampled:
    """One `sample` call's results, still on the device."""

    tokens: torch.Tensor  # (N,) long
    logprobs: torch.Tensor  # (N,) float32; NaN where the fast path's p underflowed (`fetch` recomputes those)
    logits: torch.Tensor  # (N, V) float32, for that recompute


def sample(logits: torch.Tensor, rows: SampleRows) -> Sampled:
    """Pick one token per row of `logits` (N, V) on its device; return tokens and their log-probs.

    Log-probs are of the distribution the token was drawn from up to truncation:
    `log_softmax(logits / temperature)` (temperature 0, greedy: `log_softmax(logits)`), before
    top-k / top-p, as SGLang returns them by default; RL refuses top-k / top-p (see `Completion`).
    Which path a row takes depends only on its own parameters, never on the other rows.
    """
    logits = logits.float()  # (N, V): bf16 models sample and score in fp32
    n, vocab = logits.shape
    greedy = rows.temperature == 0  # (N,) host
    filtered = ~greedy & ((rows.top_k > 0) | (rows.top_p < 1))  # (N,)
    plain = ~greedy & ~filtered  # (N,)
    temps = np.where(greedy, 1.0, rows.temperature)  # (N,): greedy log-probs are of the raw distribution
    top_k = np.where(rows.top_k > 0, np.minimum(rows.top_k, vocab), vocab)  # (N,)
    host = np.stack([rows.u, temps, rows.top_p, top_k.astype(np.float64)])  # (4, N)
    params = to_device(host, logits.device)  # (4, N) float64: the one upload
    if plain.all() and (temps == 1).all():
        # the rollout case: the sampling distribution *is* the raw one, so one softmax serves both
        probs = torch.softmax(logits, dim=-1)  # (N, V)
        tokens = _inverse_cdf(probs, params[0])  # (N,)
        chosen = probs.gather(1, tokens[:, None])[:, 0]  # (N,)
        # log(p) equals log_softmax to ~1e-7 unless p is subnormal (never, for a token drawn by chance)
        logprobs = torch.where(chosen > 1e-30, chosen.log(), float("nan"))  # (N,)
        return Sampled(tokens, logprobs, logits)
    if greedy.all():
        tokens = logits.argmax(dim=-1)  # (N,)
    else:
        tokens = logits.argmax(dim=-1) if greedy.any() else torch.zeros(n, dtype=torch.long, device=logits.device)
        for mask, fn in ((plain, _sample_plain), (filtered, _sample_filtered)):
            if mask.all():
                tokens = fn(logits, params, bool((temps != 1).any()))  # (N,)
            elif mask.any():
                idx = to_device(np.flatnonzero(mask), logits.device)  # (M,)
                tokens[idx] = fn(logits[idx], params[:, idx], bool((temps[mask] != 1).any()))
    if (temps != 1).any():
        logits = logits / params[1].float()[:, None]  # (N, V)
    # the fused log_softmax kernel is ~2x faster on CPU than logsumexp + gather
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]  # (N,)
    return Sampled(tokens, logprobs, logits)


def fetch(parts: list[Sampled]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N,) int64 and log-probs (N,) float64 of `parts`, in order: one device -> host transfer.

    float64 holds token ids and float32 log-probs exactly. A fast-path row whose p underflowed
    (NaN) gets its exact `log_softmax` value here, from a second, tiny transfer.
    """
    packed = [torch.stack([p.tokens.double(), p.logprobs.double()]) for p in parts]  # (2, N_i) each
    host = (packed[0] if len(packed) == 1 else torch.cat(packed, dim=1)).cpu().numpy()  # (2, N)
    tokens, logprobs = host[0].astype(np.int64), host[1].copy()
    bad = np.flatnonzero(np.isnan(logprobs))
    if bad.size:
        logits = torch.cat([p.logits for p in parts]) if len(parts) > 1 else parts[0].logits  # (N, V)
        idx = to_device(bad, logits.device)  # (M,)
        tok = to_device(tokens[bad], logits.device)  # (M,)
        exact = torch.log_softmax(logits[idx], dim=-1).gather(1, tok[:, None])[:, 0]  # (M,)
        logprobs[bad] = exact.double().cpu().numpy()
    return tokens, logprobs


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


def _sample_plain(logits: torch.Tensor, params: torch.Tensor, is_scaled: bool) -> torch.Tensor:
    """`params` (4, M): u, temperature, top_p, top_k rows (see `sample`)."""
    if is_scaled:
        logits = logits / params[1].float()[:, None]  # (M, V)
    return _inverse_cdf(torch.softmax(logits, dim=-1), params[0])  # fused softmax beats exp alone on CPU


def _sample_filtered(logits: torch.Tensor, params: torch.Tensor, is_scaled: bool) -> torch.Tensor:
    # stable sort: tied logits keep vocabulary order, so the result is deterministic
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # (M, V), (M, V)
    scaled = sorted_logits / params[1].float()[:, None]  # (M, V)
    ranks = torch.arange(logits.shape[-1], device=logits.device)  # (V,)
    scaled = scaled.masked_fill(ranks[None, :] >= params[3].long()[:, None], float("-inf"))  # (M, V)
    probs = torch.softmax(scaled, dim=-1)  # (M, V)
    # keep a token while the mass strictly before it is < top_p: the smallest set reaching top_p
    mass_before = probs.cumsum(dim=-1) - probs  # (M, V)
    probs = probs * (mass_before < params[2].float()[:, None])  # (M, V)
    return order.gather(1, _inverse_cdf(probs, params[0])[:, None])[:, 0]  # (M,)
