"""One way to solve problems and score them: a record per sample, and the standard metrics.

The SFT solve-rate hook (`apr.cli.sft`), RL's evaluation and rollout logs (`apr.rl.trainer`) and the
eval suite (`apr.eval`) all measure with this module, so a metric has one name everywhere (`METRICS`,
listed once in the README). It sits just below `api` rather than in `eval/`: RL, a layer above `eval/`,
uses it too.

    >>> recs = [EvalRecord(0, 0, "1+2", True, 3, 3, 100, 120, 2, 0.5),
    ...         EvalRecord(1, 0, None, False, 0, 9, 900, 900, 0, 1.0)]
    >>> score(recs)["accuracy"], score(recs)["mean_total_tokens"], score(recs)["mean_child_threads"]
    (0.5, 510.0, 1.0)
    >>> # records, metrics = solve_and_score(reasoner, problems, {"max_thread_tokens": 1024})
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from apr.api import Reasoner
    from apr.runtime import ThreadTree

# The standard metrics, each a mean over samples (several samples of a problem all count):
METRICS = (
    "accuracy",  # share of samples whose root's own answer verifies (and that ended with <eos>)
    "mean_generated_tokens",  # tokens the model generated, over all threads of a sample
    "mean_total_tokens",  # tokens in all threads: prompts, generated, joined results
    "mean_sequential_tokens",  # generated one after another: each spawn waits for its slowest child
    "mean_longest_thread_tokens",  # the longest thread: the context window a sample needed
    "mean_child_threads",  # child threads spawned
    "mean_latency_s",  # wall-clock seconds from a sample's start to its root's end
)


@dataclass
class EvalRecord:
    """One sample of one problem."""

    problem_index: int
    sample_index: int
    answer: str | None
    correct: bool
    generated_tokens: int
    sequential_tokens: int
    longest_thread_tokens: int
    total_tokens: int
    num_child_threads: int
    latency_s: float
    root_finish: str = ""

    @classmethod
    def from_tree(cls, problem_index: int, sample_index: int, answer: str | None, correct: bool,
                  tree: ThreadTree) -> EvalRecord:
        """The record of one finished thread tree (`apr.runtime.ThreadTree`)."""
        m = tree.metrics()
        return cls(problem_index, sample_index, answer, correct, m["generated_tokens"], m["sequential_tokens"],
                   m["longest_thread_tokens"], m["total_tokens"], m["num_child_threads"], m["latency_s"],
                   tree.root.finish_reason or "")

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(values: Iterable) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def score(records: Sequence[EvalRecord]) -> dict[str, float]:
    """The standard metrics (`METRICS`) of some records; 0.0 each when there are none."""
    return {
        "accuracy": _mean(r.correct for r in records),
        "mean_generated_tokens": _mean(r.generated_tokens for r in records),
        "mean_total_tokens": _mean(r.total_tokens for r in records),
        "mean_sequential_tokens": _mean(r.sequential_tokens for r in records),
        "mean_longest_thread_tokens": _mean(r.longest_thread_tokens for r in records),
        "mean_child_threads": _mean(r.num_child_threads for r in records),
        "mean_latency_s": _mean(r.latency_s for r in records),
    }


class Scored(NamedTuple):
    records: list[EvalRecord]  # prompt-major: every sample of a problem, then the next problem
    metrics: dict[str, float]  # `score(records)`


def solve_and_score(reasoner: Reasoner, problems: Sequence, limits: Mapping[str, Any] | None = None,
                    num_samples: int = 1, condition: str | None = None,
                    indices: Sequence[int] | None = None) -> Scored:
    """Solve `problems` in one runtime call (their threads share engine batches) and score them.

    `limits`: `apr.runtime.RuntimeConfig` fields (limits, sampling, seed) over the Reasoner's own;
    `condition`: an optional first prompt line (e.g. "threads 4"); `indices`: each problem's
    `problem_index` in the records (default 0, 1, ...).

        >>> # records, metrics = solve_and_score(reasoner, problems[:8], {"temperature": 1.0}, num_samples=4)
    """
    indices = range(len(problems)) if indices is None else indices
    results = reasoner.solve_batch(problems, num_samples=num_samples, condition=condition, **(limits or {}))
    records = [EvalRecord.from_tree(indices[k // num_samples], k % num_samples, r.answer, r.correct, r.tree.thread_tree)
               for k, r in enumerate(results)]
    return Scored(records, score(records))
