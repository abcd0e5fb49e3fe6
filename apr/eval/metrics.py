"""The paper's aggregate measures over per-sample records (`apr.scoring.EvalRecord`), pure functions.

    >>> recs = [EvalRecord(0, 0, "1+2", True, 3, 3, 100, 120, 2, 0.5),
    ...         EvalRecord(1, 0, None, False, 0, 9, 900, 900, 0, 1.0)]
    >>> accuracy_vs_window(recs, [128, 1024])
    {'128': 0.5, '1024': 0.5}
    >>> [(p["n"], p["pass"], p["mean_total_tokens"]) for p in sample_curve(recs, 1)]
    [(1, 0.5, 510.0)]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from apr.scoring import EvalRecord, score

__all__ = ["EvalRecord", "accuracy_vs_window", "cons_at_n", "pass_at_n", "sample_curve", "summarize_records"]


def accuracy_vs_window(records: Sequence[EvalRecord], windows: Sequence[int]) -> dict[str, float]:
    """Share of samples solved with every thread within each window (cumulative in the window)."""
    n = len(records)
    return {str(w): (sum(r.correct and r.longest_thread_tokens <= w for r in records) / n if n else 0.0)
            for w in windows}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def summarize_records(records: Sequence[EvalRecord], windows: Sequence[int]) -> dict:
    """The standard metrics (`apr.scoring.METRICS`) with accuracy per window, counts and how roots ended."""
    metrics = score(records)
    return {
        "num_problems": len({r.problem_index for r in records}),
        "num_records": len(records),
        "accuracy": metrics.pop("accuracy"),
        "accuracy_vs_window": accuracy_vs_window(records, windows),
        **metrics,
        "root_finish": dict(Counter(r.root_finish for r in records)),
    }


def _by_problem(records: Sequence[EvalRecord]) -> dict[int, list[EvalRecord]]:
    out: dict[int, list[EvalRecord]] = {}
    for r in records:
        out.setdefault(r.problem_index, []).append(r)
    return {k: sorted(v, key=lambda r: r.sample_index) for k, v in out.items()}


def pass_at_n(records: Sequence[EvalRecord], n: int) -> float:
    """Share of problems where any of the first n samples is correct."""
    groups = _by_problem(records)
    return _mean(any(r.correct for r in g[:n]) for g in groups.values())


def _majority_is_correct(samples: Sequence[EvalRecord]) -> bool:
    votes = [r for r in samples if r.answer]
    if not votes:
        return False
    counts = Counter(r.answer for r in votes)
    top = max(counts.values())
    return next(r for r in votes if counts[r.answer] == top).correct


def cons_at_n(records: Sequence[EvalRecord], n: int) -> float:
    """Share of problems whose majority answer among the first n samples' valid answers is correct.

    Only samples that produced an answer vote; ties go to the earliest answer reaching the top count.
    """
    return _mean(_majority_is_correct(g[:n]) for g in _by_problem(records).values())


def sample_curve(records: Sequence[EvalRecord], max_n: int) -> list[dict]:
    """pass@n and cons@n for n = 1..max_n, with what n samples cost per problem.

    n independent samples cost the sum of their total tokens; run side by side, they take as many
    sequential tokens as the longest of them.
    """
    groups = list(_by_problem(records).values())
    return [{
        "n": n,
        "pass": pass_at_n(records, n),
        "cons": cons_at_n(records, n),
        "mean_total_tokens": _mean(sum(r.total_tokens for r in g[:n]) for g in groups),
        "mean_sequential_tokens": _mean(max((r.sequential_tokens for r in g[:n]), default=0) for g in groups),
    } for n in range(1, max_n + 1)]
