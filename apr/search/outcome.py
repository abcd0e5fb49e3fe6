"""What a child thread's join is worth: checked against the child's own start state, not trusted.

A child of the APR format starts from a node line (`node 0,3 59:[47,54,42] [39+3=42]`: target,
numbers left, the operations that led there) and joins back either the whole path to the goal
(`39+3=42,47+54=101,101-42=59`) or nothing ("no solution below this node").

    >>> from apr.task import Problem
    >>> p, prompt = Problem([39, 3, 47, 54], 59), "node 0,3 59:[47,54,42] [39+3=42]\\n"
    >>> child_outcome(p, prompt, "39+3=42,47+54=101,101-42=59", "(47+54)-(39+3)")  # used by the root
    1
    >>> child_outcome(p, prompt, "39+3=42,47+54=101,101-42=59", None)  # valid, but the root did not use it
    0
    >>> child_outcome(p, prompt, "39+3=42,1+1=7", "(47+54)-(39+3)")  # invented
    -1
    >>> child_outcome(p, prompt, "", None), child_outcome(p, "node 0,1 59:[1,1] []\\n", "", None)
    (-1, 0)
"""

from __future__ import annotations

import re

from apr.search.format import parse_path_message
from apr.task.countdown import Op, Problem, apply_ops, ops_to_expression
from apr.task.solver import is_solvable

_NODE = re.compile(r"^node [\d,]+ (\d+):\[([\d,]*)\] \[([^\]\n]*)\]", re.MULTILINE)

USED, NEUTRAL, WRONG = 1, 0, -1


def _start_state(prompt: str) -> tuple[int, list[int], list[Op]] | None:
    """(target, numbers, operations so far) of the child's node line, or None if it has none."""
    found = _NODE.findall(prompt)
    if not found:
        return None
    target, nums, ops = found[-1]
    prefix = parse_path_message(ops) if ops else []
    if prefix is None or not nums:
        return None
    return int(target), [int(n) for n in nums.split(",")], prefix


def _solvable(numbers: list[int], target: int) -> bool:
    return numbers == [target] if len(numbers) < 2 else is_solvable(Problem(numbers, target))


def child_outcome(problem: Problem, prompt: str, joined: str | None, root_answer: str | None) -> int:
    """+1 (USED): the child joined a path that is valid from its own start state (its first operations
    are the ones its prompt lists, each later step's arithmetic checks on the numbers left, and it ends
    at the target) and the root's verified answer is that path's expression. 0 (NEUTRAL): a correct
    "no solution" report (an empty join where none exists), or a valid path the root did not use.
    -1 (WRONG): an invented or wrong path, an empty join where a solution existed, or no join at all
    (`joined` None: the child was cut off or malformed), or a prompt that is not a node line."""
    state = _start_state(prompt)
    if joined is None or state is None:
        return WRONG
    target, numbers, prefix = state
    if not joined.strip():
        return WRONG if _solvable(numbers, target) else NEUTRAL
    path = parse_path_message(joined.strip())
    if path is None or path[:len(prefix)] != prefix:
        return WRONG
    try:
        if apply_ops(numbers, path[len(prefix):]) != [target]:
            return WRONG
    except ValueError:  # an operand it did not have, or wrong arithmetic
        return WRONG
    if root_answer is None or target != problem.target:
        return NEUTRAL
    try:  # the root may have handed the child a state that is not the problem's: then nothing was used
        expression = ops_to_expression(problem.numbers, path)
    except ValueError:
        return NEUTRAL
    return USED if root_answer.replace(" ", "") == expression else NEUTRAL
