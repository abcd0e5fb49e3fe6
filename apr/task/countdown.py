"""Countdown problems, the Stream-of-Search move set and the answer-line format.

A problem is a multiset of non-negative integers and a target; a solution combines all the
numbers with + - * / (each used exactly once) into the target.

    >>> p = Problem([22, 26, 31, 53], 27)
    >>> [str(op) for op in combine(53, 31)]
    ['53+31=84', '53*31=1643', '53-31=22']
    >>> ops = [Op(53, "-", 31, 22), Op(22, "/", 22, 1), Op(26, "+", 1, 27)]
    >>> ops_to_expression(p.numbers, ops)
    '26+((53-31)/22)'
    >>> extract_answer("thinking...\\n" + format_answer("26+((53-31)/22)") + "<eos>")
    '26+((53-31)/22)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from apr.config import check, from_dict

ANSWER_PREFIX = "answer "
# An answer line starts a line. Never right after markup: `<result>answer 1+2` is a child's joined
# message, not the root's answer (callers pass the root's own text, `ReasoningTree.own_text`).
_ANSWER_LINE = re.compile(r"(?:^|\n)" + re.escape(ANSWER_PREFIX) + r"([^\n]*)")
SYMBOLS = ("+", "*", "-", "/")


def _is_int(x: Any) -> bool:
    # bool is an int subclass; True/False as numbers is almost certainly a bug upstream.
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Problem:
    """A Countdown instance: use every number once to reach `target`.

    `numbers` may be given as any sequence and is stored as a tuple; order is kept for
    display but is irrelevant to identity (see `key`).

        >>> Problem([3, 1, 2], 6).key
        ((1, 2, 3), 6)
    """

    numbers: tuple[int, ...]
    target: int

    def __post_init__(self) -> None:
        nums = self.numbers
        ok_seq = isinstance(nums, Sequence) and not isinstance(nums, (str, bytes))
        check(ok_seq, "problem.numbers", nums, "a list of at least 2 integers >= 0")
        nums = tuple(nums)
        check(len(nums) >= 2, "problem.numbers", list(nums), "a list of at least 2 integers >= 0")
        for x in nums:
            check(_is_int(x) and x >= 0, "problem.numbers", list(nums), "a list of at least 2 integers >= 0")
        check(_is_int(self.target) and self.target >= 0, "problem.target", self.target, "an integer >= 0")
        object.__setattr__(self, "numbers", nums)

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """Identity of the problem: the sorted numbers and the target."""
        return tuple(sorted(self.numbers)), self.target

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: `{"numbers": [...], "target": n}`."""
        return {"numbers": list(self.numbers), "target": self.target}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Problem:
        """Inverse of `to_dict`; unknown or missing keys raise `ConfigError`.

            >>> Problem.from_dict({"numbers": [1, 2], "target": 3})
            Problem(numbers=(1, 2), target=3)
        """
        check(isinstance(d, Mapping), "problem", d, "a mapping with keys numbers, target")
        for name in ("numbers", "target"):
            check(name in d, f"problem.{name}", None, "a required field")
        return from_dict(Problem, d, "problem")


@dataclass(frozen=True)
class Op:
    """One Stream-of-Search move: `a sym b = result`, printed without spaces.

        >>> str(Op(53, "-", 31, 22))
        '53-31=22'
    """

    a: int
    sym: str
    b: int
    result: int

    def __post_init__(self) -> None:
        check(self.sym in SYMBOLS, "op.sym", self.sym, "one of + * - /")

    def __str__(self) -> str:
        return f"{self.a}{self.sym}{self.b}={self.result}"


def combine(a: int, b: int) -> list[Op]:
    """All SoS moves on the pair (a, b), in the fixed order +, *, -, /.

    Subtraction and division are written larger operand first, so results never go
    negative or fractional; division only when exact and the divisor is non-zero.

        >>> [str(op) for op in combine(4, 12)]
        ['4+12=16', '4*12=48', '12-4=8', '12/4=3']
    """
    hi, lo = (a, b) if a >= b else (b, a)
    ops = [Op(a, "+", b, a + b), Op(a, "*", b, a * b), Op(hi, "-", lo, hi - lo)]
    if lo != 0 and hi % lo == 0:
        ops.append(Op(hi, "/", lo, hi // lo))
    return ops


def _op_value(op: Op) -> int:
    """Recompute an op's result, so a forged `result` field can't slip through."""
    if op.sym == "+":
        return op.a + op.b
    if op.sym == "*":
        return op.a * op.b
    if op.sym == "-":
        return op.a - op.b
    if op.b == 0 or op.a % op.b != 0:
        raise ValueError(f"op {op}: inexact division or division by zero")
    return op.a // op.b


def _take(entries: list[tuple[int, str]], value: int, op: Op) -> str:
    # Most recently produced entry first: results are appended, so scan from the end.
    for i in range(len(entries) - 1, -1, -1):
        if entries[i][0] == value:
            return entries.pop(i)[1]
    raise ValueError(f"op {op}: operand {value} not available in {[v for v, _ in entries]}")


def _run(numbers: Iterable[int], ops: Iterable[Op]) -> list[tuple[int, str]]:
    entries = [(n, str(n)) for n in numbers]
    for op in ops:
        if _op_value(op) != op.result:
            raise ValueError(f"op {op}: wrong result, {op.a}{op.sym}{op.b} is {_op_value(op)}")
        ea = _take(entries, op.a, op)
        eb = _take(entries, op.b, op)
        entries.append((op.result, f"({ea}{op.sym}{eb})"))
    return entries


def apply_ops(numbers: Iterable[int], ops: Iterable[Op]) -> list[int]:
    """Values left after applying `ops` in order (results are appended at the end).

        >>> apply_ops([1, 2, 3], [Op(1, "+", 2, 3)])
        [3, 3]
    """
    return [v for v, _ in _run(numbers, ops)]


def ops_to_expression(numbers: Iterable[int], ops: Iterable[Op]) -> str:
    """One expression, using every input number once, equivalent to `ops`.

    Subexpressions are fully parenthesised, the outermost level is not. When a value
    occurs several times, an op consumes the most recently produced entry with that value.
    Raises `ValueError` if an operand is missing or more than one value remains.

        >>> ops_to_expression([2, 2, 4], [Op(2, "*", 2, 4), Op(4, "-", 4, 0)])
        '(2*2)-4'
    """
    entries = _run(numbers, ops)
    if len(entries) != 1:
        raise ValueError(f"ops leave {len(entries)} values {[v for v, _ in entries]}, expected 1")
    expr = entries[0][1]
    return expr[1:-1] if expr.startswith("(") else expr


def format_answer(expr: str) -> str:
    """The answer line a model emits: `answer <expr>`.

        >>> format_answer("1+2")
        'answer 1+2'
    """
    return ANSWER_PREFIX + expr


def extract_answer(text: Any) -> str | None:
    """The expression of the last `answer ` line, or None.

    An answer line starts at a line start, never right after markup such as `<result>` (that
    would be a child's joined message): pass the text a thread wrote itself, e.g.
    `ReasoningTree.own_text()`, whose spans start on lines of their own. The expression is cut
    at its first `<` (special tokens such as `<eos>`) and stripped; a bare `answer ` line gives
    "" (an answer line exists but is empty).

        >>> extract_answer("answer 1+2\\nanswer 3*4<eos><pad>")
        '3*4'
        >>> extract_answer("<result>answer 1+2</result><eos>") is None
        True
        >>> extract_answer("no answer here") is None
        True
    """
    if not isinstance(text, str):
        return None
    matches = _ANSWER_LINE.findall(text)
    if not matches:
        return None
    return matches[-1].split("<", 1)[0].strip()

