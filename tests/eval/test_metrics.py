"""The paper's measures on hand-built records: pass@n / cons@n at several n, token accounting."""

import doctest
import importlib

import pytest

from apr.eval import EvalRecord, cons_at_n, pass_at_n, sample_curve, summarize_records


def rec(p, s, answer, correct, total=20, seq=10, children=0, latency=0.1, longest=100):
    return EvalRecord(p, s, answer, correct, total // 2, seq, longest, total, children, latency)


# problem 0: answers a(wrong) b(right) a(wrong) b(right) b(right)
# problem 1: no answer, wrong c, wrong c, right d, no answer
P0 = [("a", False), ("b", True), ("a", False), ("b", True), ("b", True)]
P1 = [(None, False), ("c", False), ("c", False), ("d", True), (None, False)]
RECORDS = ([rec(0, s, a, ok, total=10 * (s + 1), seq=5 * (s + 1)) for s, (a, ok) in enumerate(P0)]
           + [rec(1, s, a, ok, total=100, seq=50 + s) for s, (a, ok) in enumerate(P1)])


@pytest.mark.parametrize("n,pass_n,cons_n", [
    (1, 0.0, 0.0),    # p0: a wrong; p1: no answer
    (2, 0.5, 0.0),    # p0: a/b tie -> a (earliest) wrong; p1: only c votes, wrong
    (3, 0.5, 0.0),    # p0: a 2-1; p1: c 2-0
    (4, 1.0, 0.0),    # p0: a/b 2-2 tie -> a; p1: c 2-1
    (5, 1.0, 0.5),    # p0: b 3-2; p1: c 2-1 (the blank votes do not count)
])
def test_pass_and_cons_at_several_n(n, pass_n, cons_n):
    # samples arrive out of order from a resumed file: the measures sort by sample index
    shuffled = RECORDS[::-1]
    assert pass_at_n(shuffled, n) == pytest.approx(pass_n)
    assert cons_at_n(shuffled, n) == pytest.approx(cons_n)


def test_sample_curve_costs_n_samples():
    curve = sample_curve(RECORDS, 5)
    assert [p["n"] for p in curve] == [1, 2, 3, 4, 5]
    assert [p["pass"] for p in curve] == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert [p["cons"] for p in curve] == [0.0, 0.0, 0.0, 0.0, 0.5]
    # total tokens: n samples cost the sum of theirs (p0: 10+20+..., p1: 100 each), averaged over problems
    assert [p["mean_total_tokens"] for p in curve] == [(10 + 100) / 2, (30 + 200) / 2, (60 + 300) / 2,
                                                        (100 + 400) / 2, (150 + 500) / 2]
    # sequential tokens: samples run side by side, so the longest of the first n
    assert [p["mean_sequential_tokens"] for p in curve] == [(5 + 50) / 2, (10 + 51) / 2, (15 + 52) / 2,
                                                             (20 + 53) / 2, (25 + 54) / 2]


def test_summary_is_per_sample_over_distinct_problems():
    s = summarize_records(RECORDS, [100])
    assert s["num_problems"] == 2 and s["num_records"] == 10
    assert s["accuracy"] == pytest.approx(4 / 10)
    assert s["mean_total_tokens"] == pytest.approx((150 + 500) / 10)
    assert s["mean_generated_tokens"] == pytest.approx((150 + 500) / 20)
    assert s["accuracy_vs_window"] == {"100": pytest.approx(0.4)}
    empty = summarize_records([], [100])
    assert empty["num_problems"] == 0 and empty["accuracy"] == 0.0


def test_child_threads_and_latency_means():
    recs = [rec(0, 0, "x", True, children=4, latency=1.0), rec(1, 0, "y", False, children=0, latency=3.0)]
    s = summarize_records(recs, [100])
    assert s["mean_child_threads"] == 2.0 and s["mean_latency_s"] == 2.0


@pytest.mark.parametrize("module", ["apr.eval.metrics", "apr.eval.run", "apr.eval.suite"])
def test_docstring_examples(module):
    assert doctest.testmod(importlib.import_module(module)).failed == 0
