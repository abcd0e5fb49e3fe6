"""Exhaustive Countdown solver over the Stream-of-Search move set (`combine`).

Depth-first search on multisets of remaining values (sorted tuples), remembering states
already shown to be dead ends, so each multiset is expanded at most once per problem.

    >>> from apr.task.countdown import Problem
    >>> [str(op) for op in solve_exhaustive(Problem([2, 3, 4], 20))]
    ['2+3=5', '4*5=20']
    >>> is_solvable(Problem([1, 1], 5))
    False
"""

from __future__ import annotations

from apr.task.countdown import Op, Problem, combine


def _results(a: int, b: int) -> list[int]:
    """Results of `combine(a, b)` for a <= b, in the same order, without building Ops."""
    out = [a + b, a * b, b - a]
    if a != 0 and b % a == 0:
        out.append(b // a)
    return out


def _remove_pair(state: tuple[int, ...], i: int, j: int) -> tuple[int, ...]:
    return state[:i] + state[i + 1:j] + state[j + 1:]


def _last_move(a: int, b: int, target: int) -> Op | None:
    for k, r in enumerate(_results(a, b)):
        if r == target:
            return combine(a, b)[k]
    return None


def _search(state: tuple[int, ...], target: int, dead: set[tuple[int, ...]]) -> list[Op] | None:
    if len(state) == 2:
        # Two values left: the last move is a direct check, the hottest path of the search.
        op = _last_move(state[0], state[1], target)
        return None if op is None else [op]
    if state in dead:
        return None
    tried: set[tuple[int, int]] = set()
    n = len(state)
    for i in range(n - 1):
        for j in range(i + 1, n):
            pair = (state[i], state[j])
            if pair in tried:  # equal values at other positions give the same moves
                continue
            tried.add(pair)
            rest = _remove_pair(state, i, j)
            for k, r in enumerate(_results(*pair)):
                sub = _search(tuple(sorted((*rest, r))), target, dead)
                if sub is not None:
                    return [combine(*pair)[k], *sub]
    dead.add(state)
    return None


def solve_exhaustive(problem: Problem) -> list[Op] | None:
    """A sequence of SoS ops reducing all the numbers to the target, or None if none exists.

    Operands of + and * are written smaller first (the search keeps values sorted).

        >>> [str(op) for op in solve_exhaustive(Problem([4, 6], 24))]
        ['4*6=24']
    """
    state = tuple(sorted(problem.numbers))
    return _search(state, problem.target, set())


def is_solvable(problem: Problem) -> bool:
    """True iff some sequence of SoS moves reaches the target using every number.

        >>> is_solvable(Problem([4, 6], 24)), is_solvable(Problem([4, 6], 25))
        (True, False)
    """
    return solve_exhaustive(problem) is not None
