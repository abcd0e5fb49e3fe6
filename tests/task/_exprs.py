"""Test helpers: an expression-tree enumerator and evaluator independent of `apr.task`.

Trees are ints (leaves) or (left, sym, right) tuples. Evaluation uses Fraction and rejects
division by zero and inexact division, mirroring the task's rules but sharing no code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction

SYMS = "+-*/"


def evaluate(tree) -> tuple[Fraction | None, bool]:
    """(value or None if invalid, every intermediate value >= 0)."""
    if isinstance(tree, int):
        return Fraction(tree), tree >= 0
    left, sym, right = tree
    a, ok_a = evaluate(left)
    b, ok_b = evaluate(right)
    if a is None or b is None:
        return None, False
    if sym == "+":
        v = a + b
    elif sym == "-":
        v = a - b
    elif sym == "*":
        v = a * b
    else:
        if b == 0:
            return None, False
        v = a / b
        if v.denominator != 1:
            return None, False
    return v, ok_a and ok_b and v >= 0


def render(tree, space: str = "") -> str:
    """Fully parenthesised, e.g. ((1+2)*3); `space` goes around operators."""
    if isinstance(tree, int):
        return str(tree)
    left, sym, right = tree
    return f"({render(left, space)}{space}{sym}{space}{render(right, space)})"


def leaves(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree]
    return leaves(tree[0]) + leaves(tree[2])


def shapes(seq: tuple[int, ...]) -> Iterator:
    """Every binary tree with leaves `seq` in order and every operator choice."""
    if len(seq) == 1:
        yield seq[0]
        return
    for cut in range(1, len(seq)):
        for left in shapes(seq[:cut]):
            for right in shapes(seq[cut:]):
                for sym in SYMS:
                    yield (left, sym, right)


def all_trees(numbers) -> Iterator:
    """Every expression over `numbers`: tree shapes x permutations x operators (deduplicated)."""
    for perm in sorted(set(itertools.permutations(numbers))):
        yield from shapes(perm)
