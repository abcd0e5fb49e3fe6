"""Sampling rules on fixed logits: greedy, top-k, top-p, determinism per draw, raw log-probs; the draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from apr.engine.base import SamplingParams
from apr.engine.sampler import SampleRows, fetch, sample, seed_key, uniforms

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])  # (1, 6)


def sample_lists(logits, params: list[SamplingParams], draws: list[float]) -> tuple[list[int], list[float]]:
    tokens, logprobs = fetch([sample(logits, SampleRows.of(params, draws))])
    return tokens.tolist(), logprobs.tolist()


def draw(params: SamplingParams, num: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    logits = LOGITS.expand(num, -1)  # (num, 6)
    tokens, _ = sample_lists(logits, [params] * num, [rng.random() for _ in range(num)])
    return tokens


def test_greedy_ignores_the_draw():
    assert draw(SamplingParams(temperature=0.0), 50) == [0] * 50


def test_top_k_and_top_p_restrict_the_support():
    assert set(draw(SamplingParams(top_k=2), 400)) == {0, 1}
    probs = torch.softmax(LOGITS[0], -1)
    # top_p just above p0 keeps exactly the two most likely tokens; just below keeps one
    assert set(draw(SamplingParams(top_p=float(probs[0]) + 0.01), 400)) == {0, 1}
    assert set(draw(SamplingParams(top_p=float(probs[0]) - 0.01), 100)) == {0}
    assert set(draw(SamplingParams(top_k=3, top_p=0.999), 800)) == {0, 1, 2}


def test_frequencies_follow_the_tempered_distribution():
    num = 4000
    for temperature in (1.0, 0.5):
        counts = torch.bincount(torch.tensor(draw(SamplingParams(temperature=temperature), num)), minlength=6)
        expected = torch.softmax(LOGITS[0] / temperature, -1) * num
        assert torch.all((counts - expected).abs() <= 4 * expected.sqrt() + 5), (counts, expected)


def test_rows_are_independent_and_logprobs_are_of_the_sampled_distribution():
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, top_k=2),
              SamplingParams(temperature=0.7)]
    uniforms = [0.3, 0.99, 0.01]
    logits = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))  # (3, 6)
    tokens, logprobs = sample_lists(logits, params, uniforms)
    for i in range(3):  # the same row alone gives the same token
        alone, _ = sample_lists(logits[i:i + 1], [params[i]], [uniforms[i]])
        assert alone == [tokens[i]]
    # after temperature (greedy: 1), before top-k: the distribution RL's learner recomputes
    tempered = torch.log_softmax(logits / torch.tensor([[1.0], [2.0], [0.7]]), -1)  # (3, 6)
    assert torch.allclose(torch.tensor(logprobs), tempered[torch.arange(3), torch.tensor(tokens)])


@pytest.mark.parametrize("vocab", [2100, 2099])  # blocks divide the vocabulary / padded last block
def test_two_level_inverse_cdf_equals_a_plain_running_sum(vocab):
    from apr.engine.sampler import _inverse_cdf

    g = torch.Generator().manual_seed(0)
    weights = torch.rand(8, vocab, generator=g) ** 8  # (8, V) spread over orders of magnitude
    weights[:, 1000:1100] = 0  # a zeroed stretch (as after top-k / top-p) across block edges
    weights[3, 2050:] = 0  # a zero tail inside the last block
    for _ in range(50):
        u = torch.rand(8, generator=g, dtype=torch.float64)  # (8,)
        cdf = weights.double().cumsum(-1)  # (8, V)
        x = u[:, None] * cdf[:, -1:]  # (8, 1)
        expected = torch.searchsorted(cdf, x, right=True)[:, 0]  # (8,)
        got = _inverse_cdf(weights, u)
        assert torch.equal(got, expected)
        assert torch.all(weights[torch.arange(8), got] > 0)


def splitmix64_reference(seed: int, num: int) -> list[int]:
    """SplitMix64 as published (Steele, Lea, Flood 2014; Vigna's splitmix64.c), in Python ints."""
    mask, state, out = (1 << 64) - 1, seed, []
    for _ in range(num):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_draws_are_splitmix64_streams_keyed_by_the_seed():
    # the contract: token k of a request with seed s uses the (k+1)-th output of SplitMix64 seeded
    # with seed_key(s), its top 53 bits as a float in [0, 1)
    for seed in (0, 1, 2**63 - 1, 12345678901234567890):
        key = seed_key(seed)
        assert key == splitmix64_reference(seed, 1)[0]  # the key is itself SplitMix64's first output
        expected = [(z >> 11) * 2.0**-53 for z in splitmix64_reference(key, 40)]
        counters = np.arange(40)
        got = uniforms(np.full(40, key, dtype=np.uint64), counters)
        assert got.tolist() == expected
        # any batch order and any mix of keys gives every row the same number
        perm = np.random.default_rng(seed % 1000).permutation(40)
        keys = np.array([key, seed_key(seed + 1)] * 20, dtype=np.uint64)[perm]
        mixed = uniforms(keys, counters[perm])
        assert all(mixed[i] == expected[perm[i]] for i in range(40) if keys[i] == key)


def test_draws_look_uniform_and_independent_across_seeds_and_counters():
    keys = np.array([seed_key(s) for s in range(256)], dtype=np.uint64)  # adjacent seeds: n-samples
    u = uniforms(np.repeat(keys, 256), np.tile(np.arange(256), 256)).reshape(256, 256)  # (seed, k)
    assert u.min() >= 0 and u.max() < 1
    counts = np.bincount((u * 32).astype(int).ravel(), minlength=32)  # 65536 draws, 32 bins
    expected = u.size / 32
    assert ((counts - expected) ** 2 / expected).sum() < 80  # chi-square, 31 dof: p < 1e-6 past 80
    # neither consecutive tokens of one seed nor the same token of adjacent seeds correlate
    assert abs(np.corrcoef(u[:, :-1].ravel(), u[:, 1:].ravel())[0, 1]) < 0.02
    assert abs(np.corrcoef(u[:-1].ravel(), u[1:].ravel())[0, 1]) < 0.02


def test_gpu_transfer_packing_and_nan_recompute_on_cpu_tensors():
    """What `fetch` does on a GPU, run on CPU tensors: the packed copy is exact, a NaN log-prob is recomputed."""
    from apr.engine.sampler import Sampled, _packed, _shared

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 30, generator=g) * 20  # (4, V)
    tokens = torch.tensor([3, 29, 0, 17])  # (4,)
    exact = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]  # (4,)
    parts = [Sampled(tokens[:3], exact[:3], logits[:3]), Sampled(tokens[3:], exact[3:], logits[3:])]
    for got, want in zip(_packed(parts), _shared(parts)):
        assert got.tolist() == want.tolist()
    with_nan = exact.clone()
    with_nan[1] = float("nan")  # as the fast path marks an underflowed p on a GPU
    tok, lp = fetch([Sampled(tokens, with_nan, logits, is_fast=True)])
    assert tok.tolist() == tokens.tolist() and lp.tolist() == exact.tolist()


def test_fast_path_recomputes_an_underflowed_probability_exactly():
    # token 0 has p = e^-80 ~ 1.8e-35: log(p) in fp32 is off, so `fetch` takes log_softmax instead
    logits = torch.tensor([[-80.0, 0.0], [0.0, 1.0]])  # (2, 2)
    tokens, logprobs = fetch([sample(logits, SampleRows.of([SamplingParams()] * 2, [1e-36, 0.9]))])
    assert tokens.tolist() == [0, 1]
    assert logprobs.tolist() == torch.log_softmax(logits, -1)[[0, 1], [0, 1]].double().tolist()


def test_one_transfer_returns_several_calls_in_order():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 50, generator=g), torch.randn(2, 50, generator=g)  # (3, V), (2, V)
    pa = SampleRows.of([SamplingParams(temperature=0.0), SamplingParams(), SamplingParams(top_k=5)], [0.1, 0.5, 0.7])
    pb = SampleRows.of([SamplingParams(temperature=0.5), SamplingParams()], [0.2, 0.3])
    tokens, logprobs = fetch([sample(a, pa), sample(b, pb)])
    ta, la = fetch([sample(a, pa)])
    tb, lb = fetch([sample(b, pb)])
    assert tokens.tolist() == ta.tolist() + tb.tolist() and logprobs.tolist() == la.tolist() + lb.tolist()
