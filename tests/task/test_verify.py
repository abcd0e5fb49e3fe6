"""Hand cases and hypothesis fuzzing for the answer verifier."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from apr.task import Problem, verify, verify_with_reason, well_formed
from apr.task.verify import MAX_DEPTH, MAX_LENGTH

from ._exprs import evaluate, leaves, render

P = Problem([22, 26, 31, 53], 27)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("answer", [
    "26 + ((53 - 31) / 22)",
    "26+((53-31)/22)",
    "26 + (53 - 31) / 22",
    "(53-31)/22+26",
    "\t26 +\n((53-31)/22) ",
    "26 + ((53 - 31) / 22) = 27",
    "26+((53-31)/22)=27",
])
def test_valid_answers(answer):
    assert verify_with_reason(P, answer) == (True, "ok")


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"),
    ("   ", "empty answer"),
    (None, "empty answer"),
    (27, "not a string"),
    (b"26+1", "not a string"),
    ("26 + ((53 - 31) / 22) = 28", "stated result 28 != target 27"),
    ("26 + ((53 - 31) / 22) =", "expected a number after '=' at end"),
    ("26 + ((53 - 31) / 22) = 27 = 27", "unexpected '=' at 27"),
    ("26 + 53 - 31 - 22", "value 26 != target 27"),
    ("26 + ((53 - 31) / 22) + 7", "number 7 not available"),
    ("26 + ((53 - 31) / 31)", "number 31 not available"),
    ("26 + (53 - 31)", "number 22 unused"),
    ("26 + ((53 - 22) / 31)", "ok"),
    ("26 + ((53 - 31) x 22)", "unexpected character 'x' at 16"),
    ("26 + 53 - 31 - 22 - 0", "number 0 not available"),
    ("026 + ((53 - 31) / 22)", "leading zero in 026 at 0"),
    ("26 + ((53 - 31) / 22", "expected ')' at end"),
    ("26 + ((53 - 31) / 22))", "unexpected ')' at 21"),
    ("-26 + ((53 - 31) / 22)", "expected a number or '(' at 0"),
    ("26 + ((53 - 31) // 22)", "expected a number or '(' at 17"),
    ("26 * 53 / 31 - 22", "inexact division 1378/31"),
    ("x" * (MAX_LENGTH + 1), "too long"),
    ("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "too deeply nested"),
])
def test_reasons(answer, reason):
    ok, got = verify_with_reason(P, answer)
    assert got == reason
    assert ok is (reason == "ok")


def test_division_by_zero_and_target_zero():
    p = Problem([5, 3, 3], 0)
    assert verify_with_reason(p, "5/(3-3)") == (False, "division by zero")
    assert verify(p, "(3-3)/5")
    assert verify(p, "(3-3)*5 = 0")


def test_negative_intermediates_are_valid_expressions():
    assert verify(Problem([2, 5, 3], 0), "(2-5)+3")
    assert verify(Problem([2, 5, 4], 1), "(2-5)+4")
    assert verify(Problem([2, 8, 3, 6], 2), "(2-8)/(3-6)")
    assert verify_with_reason(Problem([2, 8, 3], 0), "(2-8)/3") == (False, "value -2 != target 0")
    assert verify_with_reason(Problem([2, 9, 2], 0), "(2-9)/2") == (False, "inexact division -7/2")


def test_nesting_within_cap_is_accepted():
    depth = MAX_DEPTH
    s = "(" * depth + "1+2" + ")" * depth
    assert verify(Problem([1, 2], 3), s)


def test_duplicates_and_zero_numbers():
    assert verify(Problem([5, 5, 0], 25), "5*5+0")
    assert verify_with_reason(Problem([5, 5, 0], 25), "5*5") == (False, "number 0 unused")
    assert verify_with_reason(Problem([5, 5, 0], 25), "5*5+5") == (False, "number 5 not available")


CODE_LIKE = [
    "__import__('os').system('x')",
    '__import__("os")',
    "1 if 1 else 2",
    "27#",
    "26+1 # comment",
    "lambda: 27",
    "(lambda x: x)(27)",
    "exec('27')",
    "eval('26+1')",
    "27;",
    "26+1;import os",
    "26 + ((53 - 31) / 22) and 1",
    "[26][0]+1",
    "26+True",
    "26**1+1",
    "26+1.0",
    "1e5",
    "0x10",
    "0b1",
    "1_000",
    "٣+٤",
    "２６+1",
    "26+1\x00",
    "26\u00a0+ ((53 - 31) / 22)",
    "+26 + ((53 - 31) / 22)",
    "26 + ((53 - 31) / 22)\n= 27\nimport os",
    "{26}",
    "26, 27",
    "abs(-27)",
]


@pytest.mark.parametrize("answer", CODE_LIKE)
def test_code_like_strings_rejected(answer):
    for p in (P, Problem([26, 1], 27), Problem([1, 2], 3), Problem([1, 1], 2)):
        ok, reason = verify_with_reason(p, answer)
        assert not ok and reason != "ok"
        assert not reason.startswith("internal error"), reason


@FUZZ
@given(st.text(max_size=300))
def test_never_raises_on_any_text(s):
    ok, reason = verify_with_reason(P, s)
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert not reason.startswith("internal error"), (s, reason)
    assert verify(P, s) is ok
    assert well_formed(s) in (True, False)


NEAR = st.text(alphabet="0123456789+-*/()= \t.exj٣_", max_size=40)


@FUZZ
@given(NEAR, st.lists(st.integers(0, 60), min_size=2, max_size=5), st.integers(0, 200))
def test_near_miss_strings(s, numbers, target):
    p = Problem(numbers, target)
    ok, reason = verify_with_reason(p, s)
    assert not reason.startswith("internal error"), (s, reason)
    if ok:
        # Independent necessary conditions: ASCII digits only, literals are exactly the numbers.
        assert well_formed(s)
        assert re.fullmatch(r"[0-9+\-*/()= \t]+", s)
        body = s.split("=")[0]
        assert Counter(int(x) for x in re.findall(r"[0-9]+", body)) == Counter(numbers)


TREES = st.recursive(
    st.integers(0, 40),
    lambda kids: st.tuples(kids, st.sampled_from("+-*/"), kids),
    max_leaves=5,
)
SPACES = st.sampled_from(["", " ", "  ", "\t"])


@FUZZ
@given(TREES, SPACES)
def test_random_expressions_and_mutations(tree, space):
    nums = leaves(tree)
    assume(len(nums) >= 2)
    value, _ = evaluate(tree)
    s = render(tree, space)
    target = int(value) if value is not None and value >= 0 else 0
    p = Problem(nums, target)
    assert verify(p, s) is (value is not None and value == target)
    assume(value is not None and value >= 0)
    # Wrong target.
    for d in (1, 2, 7):
        assert not verify(Problem(nums, target + d), s)
    # A number missing from the expression (the problem has one more).
    assert verify_with_reason(Problem(nums + [7], target), s)[1] == "number 7 unused"
    # A number reused / replaced: swap one literal for a different value.
    literal = re.search(r"[0-9]+", s)
    for new in {nums[-1], int(literal.group()) + 1} - {int(literal.group())}:
        mutated = s[:literal.start()] + str(new) + s[literal.end():]
        assert not verify(p, mutated), mutated
    # The same literal used twice.
    assert not verify(p, f"({s}){space}*{space}{nums[0]}")
    assert not verify(p, f"{nums[0]}{space}+{space}({s}){space}-{space}{nums[0]}")
    # Inexact division by an extra number k.
    for k in (3, 7, 11):
        if target % k:
            for t in {target // k, target // k + 1, target}:
                ok, reason = verify_with_reason(Problem(nums + [k], t), f"({s})/{k}")
                assert not ok and reason == f"inexact division {target}/{k}"
    # Trailing junk.
    for junk in ("#", " if 1 else 2", ";", ".0", " = 999999", "=", "x"):
        assert not verify(p, s + junk), s + junk
