"""Node-ranking heuristics (lower is more promising), registered by name.

    >>> HEURISTICS["sum"]([20, 30], 27)
    5.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Heuristic = Callable[[Sequence[int], int], float]
HEURISTICS: dict[str, Heuristic] = {}


def register(name: str) -> Callable[[Heuristic], Heuristic]:
    def wrap(fn: Heuristic) -> Heuristic:
        HEURISTICS[name] = fn
        return fn

    return wrap


@register("sum")
def sum_heuristic(nums: Sequence[int], target: int) -> float:
    """Mean distance of the numbers to the target."""
    return sum(abs(n - target) for n in nums) / len(nums)


def _factors(target: int) -> list[int]:
    # Cached per target: the solver calls this for every generated node.
    if target not in _FACTORS:
        _FACTORS[target] = [i for i in range(2, target + 1) if target % i == 0] or [1]
    return _FACTORS[target]


_FACTORS: dict[int, list[int]] = {}


@register("mult")
def mult_heuristic(nums: Sequence[int], target: int) -> float:
    """Summed distance of each number to its nearest factor of the target."""
    factors = _factors(target)
    return float(sum(min(abs(n - f) for f in factors) for n in nums))
