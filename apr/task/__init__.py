"""Countdown: problems, generators, splits, a safe answer verifier, a solver and the reward.

    >>> from apr.task import CountdownConfig, generate_problems, solve_exhaustive, ops_to_expression, verify
    >>> p = generate_problems(CountdownConfig(num_numbers=3), 1, seed=0)[0]
    >>> verify(p, ops_to_expression(p.numbers, solve_exhaustive(p)))
    True
"""

from apr.task.countdown import (
    ANSWER_PREFIX,
    Op,
    Problem,
    apply_ops,
    combine,
    extract_answer,
    format_answer,
    ops_to_expression,
)
from apr.task.generate import CountdownConfig, draw_problem, generate_problems, iter_problems
from apr.task.reward import reward
from apr.task.solver import is_solvable, solve_exhaustive
from apr.task.splits import load_problems, make_splits, problems_path, split_of
from apr.task.verify import verify, verify_with_reason, well_formed

__all__ = [
    "ANSWER_PREFIX",
    "CountdownConfig",
    "Op",
    "Problem",
    "apply_ops",
    "combine",
    "draw_problem",
    "extract_answer",
    "format_answer",
    "generate_problems",
    "is_solvable",
    "iter_problems",
    "load_problems",
    "make_splits",
    "ops_to_expression",
    "problems_path",
    "reward",
    "solve_exhaustive",
    "split_of",
    "verify",
    "verify_with_reason",
    "well_formed",
]
