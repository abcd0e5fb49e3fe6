"""`verify` and the solver against brute-force enumeration of every expression."""

from __future__ import annotations

import random

from apr.task import Problem, is_solvable, ops_to_expression, solve_exhaustive, verify

from ._exprs import all_trees, evaluate, render


def _problems(n: int, seed: int) -> list[Problem]:
    """Half random targets 1..100, half targets some expression actually reaches."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        numbers = [rng.randint(1, 30) for _ in range(3)]
        target = rng.randint(1, 100)
        if i % 2:
            values = [v for v, _ in map(evaluate, all_trees(numbers)) if v is not None and v >= 0]
            target = int(rng.choice(values))
        out.append(Problem(numbers, target))
    return out


def test_verify_and_solver_agree_with_enumeration_n3():
    checked = hits = solvable = 0
    for k, p in enumerate(_problems(2000, seed=7)):
        sos_hit = False
        for t, tree in enumerate(all_trees(p.numbers)):
            value, nonneg = evaluate(tree)
            expected = value is not None and value == p.target
            # Vary the surface form: spaces, and no outer parentheses, on some expressions.
            s = render(tree, " " if (t + k) % 3 == 0 else "")
            if (t + k) % 5 == 0:
                s = s[1:-1]
            assert verify(p, s) is expected, (p, s, value)
            checked += 1
            hits += expected
            sos_hit |= expected and nonneg
        ops = solve_exhaustive(p)
        assert is_solvable(p) is (ops is not None)
        if ops is None:
            # No expression whose intermediates stay >= 0 (the SoS move set's reach) hits it.
            assert not sos_hit, p
        else:
            solvable += 1
            assert sos_hit, p  # the solver never finds what enumeration can't
            assert verify(p, ops_to_expression(p.numbers, ops)), (p, ops)
    assert checked > 300_000 and hits > 1000 and 500 < solvable < 2000


def _reachable(values: list[int]) -> set[int]:
    """All values reachable with non-negative intermediates (independent of the solver)."""
    if len(values) == 1:
        return {values[0]}
    out: set[int] = set()
    for i in range(len(values)):
        for j in range(len(values)):
            if i == j:
                continue
            a, b = values[i], values[j]
            rest = [v for k, v in enumerate(values) if k not in (i, j)]
            results = [a + b, a * b] + ([a - b] if a >= b else []) + ([a // b] if b and a % b == 0 else [])
            for r in results:
                out |= _reachable(rest + [r])
    return out


def test_solver_matches_brute_force_n4():
    rng = random.Random(3)
    for _ in range(12):
        numbers = [rng.randint(1, 20) for _ in range(4)]
        reach = _reachable(numbers)
        for target in range(0, 121):
            p = Problem(numbers, target)
            ops = solve_exhaustive(p)
            assert (ops is not None) is (target in reach), p
            if ops is not None:
                assert verify(p, ops_to_expression(p.numbers, ops)), (p, ops)
