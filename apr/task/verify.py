"""Check a Countdown answer expression: a tiny tokenizer, parser and exact evaluator.

Grammar (whitespace allowed between tokens, an optional trailing `= INT`)::

    answer := expr ['=' INT]
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INT | '(' expr ')'

Model output is untrusted, so nothing here evaluates Python: any input returns a verdict and
never raises. Integers are ASCII digits without leading zeros; division must be exact.

    >>> from apr.task.countdown import Problem
    >>> verify(Problem([22, 26, 31, 53], 27), "26 + ((53 - 31) / 22)")
    True
    >>> verify_with_reason(Problem([22, 26, 31, 53], 27), "26 + 53 - 31 - 22")
    (False, 'value 26 != target 27')
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from apr.task.countdown import Problem

MAX_LENGTH = 2000  # characters; real answers are < 100, the cap bounds work on hostile input
MAX_DEPTH = 64  # parenthesis nesting; keeps the recursive-descent parser far from the stack limit
_DIGITS = "0123456789"  # not str.isdigit: that accepts '٣', '²' and other non-ASCII digits
_SPACE = " \t\r\n"
_PUNCT = "+-*/()="


class _Reject(Exception):
    """Internal: parsing or evaluation stopped; the message is the human-readable reason."""


Token = tuple[str, int, int]  # (kind, integer value or 0, position); kind is "int" or a symbol


def _tokenize(s: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in _SPACE:
            i += 1
        elif c in _PUNCT:
            tokens.append((c, 0, i))
            i += 1
        elif c in _DIGITS:
            j = i
            while j < n and s[j] in _DIGITS:
                j += 1
            if s[i] == "0" and j - i > 1:
                raise _Reject(f"leading zero in {s[i:j]} at {i}")
            tokens.append(("int", int(s[i:j]), i))
            i = j
        else:
            raise _Reject(f"unexpected character {c!r} at {i}")
    return tokens


class _Parser:
    """Recursive descent producing reverse Polish notation: ints and operator symbols."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.rpn: list[int | str] = []

    def peek(self) -> str | None:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else None

    def where(self) -> str:
        return f"at {self.tokens[self.i][2]}" if self.i < len(self.tokens) else "at end"

    def expr(self) -> None:
        self.term()
        while self.peek() in ("+", "-"):
            sym = self.tokens[self.i][0]
            self.i += 1
            self.term()
            self.rpn.append(sym)

    def term(self) -> None:
        self.factor()
        while self.peek() in ("*", "/"):
            sym = self.tokens[self.i][0]
            self.i += 1
            self.factor()
            self.rpn.append(sym)

    def factor(self) -> None:
        kind = self.peek()
        if kind == "int":
            self.rpn.append(self.tokens[self.i][1])
            self.i += 1
        elif kind == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Reject("too deeply nested")
            self.i += 1
            self.expr()
            if self.peek() != ")":
                raise _Reject(f"expected ')' {self.where()}")
            self.i += 1
            self.depth -= 1
        else:
            raise _Reject(f"expected a number or '(' {self.where()}")


def _parse(s: str) -> tuple[list[int | str], int | None]:
    """RPN of the expression and the stated result after `=` (None if absent)."""
    p = _Parser(_tokenize(s))
    p.expr()
    stated = None
    if p.peek() == "=":
        p.i += 1
        if p.peek() != "int":
            raise _Reject(f"expected a number after '=' {p.where()}")
        stated = p.tokens[p.i][1]
        p.i += 1
    if p.peek() is not None:
        raise _Reject(f"unexpected {p.tokens[p.i][0]!r} {p.where()}")
    return p.rpn, stated


def _evaluate(rpn: list[int | str]) -> int:
    # A stack machine rather than recursion: long chains like 1+1+...+1 stay iterative.
    stack: list[int] = []
    for item in rpn:
        if isinstance(item, int):
            stack.append(item)
            continue
        b, a = stack.pop(), stack.pop()
        if item == "+":
            stack.append(a + b)
        elif item == "-":
            stack.append(a - b)
        elif item == "*":
            stack.append(a * b)
        elif b == 0:
            raise _Reject("division by zero")
        elif a % b != 0:
            raise _Reject(f"inexact division {a}/{b}")
        else:
            stack.append(a // b)
    return stack[0]


def _check_numbers(problem: Problem, rpn: list[int | str]) -> None:
    available = Counter(problem.numbers)
    for item in rpn:
        if isinstance(item, int):
            if available[item] <= 0:
                raise _Reject(f"number {item} not available")
            available[item] -= 1
    for n, left in sorted(available.items()):
        if left > 0:
            raise _Reject(f"number {n} unused")


def _reason(problem: Problem, answer: Any) -> str:
    if answer is None:
        return "empty answer"
    if not isinstance(answer, str):
        return "not a string"
    if len(answer) > MAX_LENGTH:
        return "too long"
    if not answer.strip(_SPACE):
        return "empty answer"
    try:
        rpn, stated = _parse(answer)
        # Numbers before arithmetic: a matching multiset also bounds the size of every value.
        _check_numbers(problem, rpn)
        value = _evaluate(rpn)
    except _Reject as e:
        return str(e)
    if value != problem.target:
        return f"value {value} != target {problem.target}"
    if stated is not None and stated != problem.target:
        return f"stated result {stated} != target {problem.target}"
    return "ok"


def verify_with_reason(problem: Problem, answer: Any) -> tuple[bool, str]:
    """(True, "ok") if `answer` uses every number once and evaluates to the target.

    Otherwise (False, reason), e.g. "number 7 not available", "inexact division 7/2".
    Never raises, whatever `answer` is.

        >>> verify_with_reason(Problem([2, 7], 3), "7/2")
        (False, 'inexact division 7/2')
    """
    try:
        reason = _reason(problem, answer)
    except Exception as e:  # defence in depth: a verifier bug must not crash a training run
        reason = f"internal error: {type(e).__name__}"
    return reason == "ok", reason


def verify(problem: Problem, answer: Any) -> bool:
    """True iff `answer` is a correct solution of `problem` (see `verify_with_reason`).

        >>> verify(Problem([1, 2], 3), "1 + 2 = 3")
        True
    """
    return verify_with_reason(problem, answer)[0]


def well_formed(answer: Any) -> bool:
    """True iff `answer` parses under the grammar, whatever its numbers and value.

        >>> well_formed("(1+2)*3"), well_formed("1+"), well_formed("-1")
        (True, False, False)
    """
    if not isinstance(answer, str) or len(answer) > MAX_LENGTH:
        return False
    try:
        _parse(answer)
    except Exception:  # _Reject, or (defensively) any parser bug
        return False
    return True
