"""Sampling rules on fixed logits: greedy, top-k, top-p, determinism per draw, raw log-probs."""

from __future__ import annotations

import random

import pytest
import torch

from apr.engine.base import SamplingParams
from apr.engine.sampler import sample

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])  # (1, 6)


def draw(params: SamplingParams, num: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    logits = LOGITS.expand(num, -1)  # (num, 6)
    tokens, _ = sample(logits, [params] * num, [rng.random() for _ in range(num)])
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
    tokens, logprobs = sample(logits, params, uniforms)
    for i in range(3):  # the same row alone gives the same token
        alone, _ = sample(logits[i:i + 1], [params[i]], [uniforms[i]])
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
        u = torch.rand(8, generator=g, dtype=torch.float64).tolist()
        cdf = weights.double().cumsum(-1)  # (8, V)
        x = torch.tensor(u, dtype=torch.float64)[:, None] * cdf[:, -1:]  # (8, 1)
        expected = torch.searchsorted(cdf, x, right=True)[:, 0]  # (8,)
        got = _inverse_cdf(weights, u)
        assert torch.equal(got, expected)
        assert torch.all(weights[torch.arange(8), got] > 0)
