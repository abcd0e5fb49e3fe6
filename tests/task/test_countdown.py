"""Problem, Op, the SoS move set, ops_to_expression and the answer line."""

from __future__ import annotations

import doctest
import importlib
import json
import random

import pytest

from apr.config import ConfigError
from apr.task import (
    ANSWER_PREFIX,
    Op,
    Problem,
    apply_ops,
    combine,
    extract_answer,
    format_answer,
    ops_to_expression,
    solve_exhaustive,
    verify,
)


@pytest.mark.parametrize("module", [
    "apr.task", "apr.task.countdown", "apr.task.verify", "apr.task.solver",
    "apr.task.generate", "apr.task.splits", "apr.task.reward",
])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_problem_basics():
    p = Problem([53, 22, 31, 26], 27)
    assert p.numbers == (53, 22, 31, 26)
    assert p.key == ((22, 26, 31, 53), 27)
    assert p.key == Problem((22, 26, 31, 53), 27).key
    assert p.key != Problem([22, 26, 31, 53], 28).key
    assert Problem.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.to_dict() == {"numbers": [53, 22, 31, 26], "target": 27}
    with pytest.raises(AttributeError):
        p.target = 3  # frozen


@pytest.mark.parametrize("numbers, target, field", [
    ([], 3, "problem.numbers"),
    ([5], 3, "problem.numbers"),
    ([1, -2], 3, "problem.numbers"),
    ([1, 2.0], 3, "problem.numbers"),
    ([1, 2.5], 3, "problem.numbers"),
    ([True, 2], 3, "problem.numbers"),
    ([1, "2"], 3, "problem.numbers"),
    ("12", 3, "problem.numbers"),
    (12, 3, "problem.numbers"),
    ([1, 2], -1, "problem.target"),
    ([1, 2], 3.0, "problem.target"),
    ([1, 2], False, "problem.target"),
    ([1, 2], None, "problem.target"),
])
def test_problem_rejects_bad_input(numbers, target, field):
    with pytest.raises(ConfigError, match=rf"^{field}: got "):
        Problem(numbers, target)


@pytest.mark.parametrize("d, field", [
    ({"numbers": [1, 2]}, "problem.target"),
    ({"target": 3}, "problem.numbers"),
    ({"numbers": [1, "x"], "target": 3}, r"problem.numbers\[1\]"),
    ({"numbers": [1, 2], "target": 3, "extra": 1}, "problem.extra"),
    ({"numbers": [1], "target": 3}, "problem.numbers"),
    ([1, 2, 3], "problem"),
])
def test_problem_from_dict_errors(d, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        Problem.from_dict(d)


def test_op_and_combine_order():
    assert str(Op(53, "-", 31, 22)) == "53-31=22"
    assert [str(o) for o in combine(31, 53)] == ["31+53=84", "31*53=1643", "53-31=22"]
    assert [str(o) for o in combine(12, 4)] == ["12+4=16", "12*4=48", "12-4=8", "12/4=3"]
    assert [str(o) for o in combine(4, 12)] == ["4+12=16", "4*12=48", "12-4=8", "12/4=3"]
    assert [str(o) for o in combine(5, 5)] == ["5+5=10", "5*5=25", "5-5=0", "5/5=1"]
    assert [str(o) for o in combine(0, 7)] == ["0+7=7", "0*7=0", "7-0=7"]  # no division by 0
    assert [str(o) for o in combine(0, 0)] == ["0+0=0", "0*0=0", "0-0=0"]
    with pytest.raises(ConfigError, match="^op.sym"):
        Op(1, "%", 2, 1)


def test_ops_to_expression_example():
    nums = [22, 26, 31, 53]
    ops = [Op(53, "-", 31, 22), Op(26, "-", 22, 4), Op(22, "+", 4, 26)]
    # 26-22 takes the 22 just produced by 53-31 (most recent entry with that value).
    assert ops_to_expression(nums, ops) == "22+(26-(53-31))"
    assert apply_ops(nums, ops[:2]) == [22, 4]
    ops = [Op(53, "-", 31, 22), Op(22, "/", 22, 1), Op(26, "+", 1, 27)]
    expr = ops_to_expression(nums, ops)
    assert expr == "26+((53-31)/22)"
    assert verify(Problem(nums, 27), expr)


def test_ops_to_expression_duplicates():
    assert ops_to_expression([2, 2, 4], [Op(2, "*", 2, 4), Op(4, "-", 4, 0)]) == "(2*2)-4"
    ops = [Op(3, "+", 3, 6), Op(3, "+", 3, 6), Op(6, "*", 6, 36)]
    assert ops_to_expression([3, 3, 3, 3], ops) == "(3+3)*(3+3)"
    assert ops_to_expression([5, 1], [Op(5, "*", 1, 5)]) == "5*1"


@pytest.mark.parametrize("numbers, ops, match", [
    ([1, 2], [Op(1, "+", 3, 4)], "operand 3 not available"),
    ([1, 2], [Op(1, "+", 1, 2)], "operand 1 not available"),
    ([1, 2, 3], [Op(1, "+", 2, 3)], "leave 2 values"),
    ([1, 2], [], "leave 2 values"),
    ([1, 2], [Op(1, "+", 2, 4)], "wrong result"),
    ([7, 2], [Op(7, "/", 2, 3)], "inexact division"),
    ([7, 0], [Op(7, "/", 0, 0)], "division by zero"),
])
def test_ops_to_expression_errors(numbers, ops, match):
    with pytest.raises(ValueError, match=match):
        ops_to_expression(numbers, ops)


def test_solver_ops_round_trip_with_duplicates():
    rng = random.Random(11)
    found = with_duplicates = 0
    for _ in range(400):
        n = rng.choice([2, 3, 4, 5])
        # Small values make repeated numbers and repeated intermediate values common.
        numbers = [rng.randint(0, 6) for _ in range(n)]
        p = Problem(numbers, rng.randint(0, 24))
        ops = solve_exhaustive(p)
        if ops is None:
            continue
        found += 1
        with_duplicates += len(set(numbers)) < n
        assert len(ops) == n - 1
        assert apply_ops(p.numbers, ops) == [p.target]
        assert verify(p, ops_to_expression(p.numbers, ops)), (p, ops)
    assert found > 150 and with_duplicates > 50


def test_answer_format_and_extraction():
    assert ANSWER_PREFIX == "answer "
    assert format_answer("1+2") == "answer 1+2"
    assert extract_answer(format_answer("1+2")) == "1+2"
    assert extract_answer("answer 1+2\nmore\nanswer 3*4\nthe end") == "3*4"  # last answer line wins
    assert extract_answer("answer 3*4  <eos><pad>") == "3*4"
    assert extract_answer("answer 3*4\r\n") == "3*4"
    assert extract_answer("x\nanswer   (1+2) = 3 \n") == "(1+2) = 3"
    assert extract_answer("answer <eos>") == ""
    assert extract_answer("the answer 3*4") is None  # must start the line
    assert extract_answer("answer\n") is None
    assert extract_answer("Answer 3") is None
    assert extract_answer("") is None
    assert extract_answer(None) is None
    assert extract_answer(42) is None
