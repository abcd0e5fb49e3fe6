"""Solver configuration (`conf/search/`), validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass

from apr.config import check
from apr.search.heuristics import HEURISTICS

ALGORITHMS = ("sosp", "apr")


@dataclass
class SearchConfig:
    """One solver. Ranges `(lo, hi)` are drawn uniformly per trace (inclusive)."""

    algorithm: str = "sosp"  # sosp: serial hybrid search (Alg. 1); apr: spawns child threads (Alg. 2)
    beam_size: tuple[int, int] = (5, 5)  # K: successors kept per expansion and nodes popped per round
    sub_beam_size: tuple[int, int] = (5, 5)  # Ks: beam of APR child threads
    promising_prob: float = 0.5  # p: chance an expansion is promising (SoS+ dives, APR spawns)
    heuristics: tuple[str, ...] = ("sum", "mult")  # one drawn per trace
    max_depth: int = 1  # APR: how many levels of threads may spawn (the paper: 1)
    condition: bool = False  # prefix the root prompt with `threads N` (apr) / `budget B` (sosp)
    # the order of an expansion's successor lines: shuffled (Pan et al.) or ranked (best first, the order
    # SoS+ dives into and APR spawns them); the same search either way, only the lines' order and ids differ
    order: str = "shuffled"

    def __post_init__(self) -> None:
        check(self.algorithm in ALGORITHMS, "search.algorithm", self.algorithm, ", ".join(ALGORITHMS))
        for name in ("beam_size", "sub_beam_size"):
            lo, hi = getattr(self, name)
            check(1 <= lo <= hi, f"search.{name}", [lo, hi], "[lo, hi] with 1 <= lo <= hi")
        check(0.0 <= self.promising_prob <= 1.0, "search.promising_prob", self.promising_prob,
              "a probability in [0, 1]")
        check(len(self.heuristics) > 0, "search.heuristics", list(self.heuristics),
              "a non-empty list of " + ", ".join(HEURISTICS))
        for h in self.heuristics:
            check(h in HEURISTICS, "search.heuristics", h, ", ".join(HEURISTICS))
        check(self.order in ("shuffled", "ranked"), "search.order", self.order, "shuffled or ranked")
        check(self.max_depth >= 0, "search.max_depth", self.max_depth, "an integer >= 0")
