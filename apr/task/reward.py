"""Outcome reward for Countdown rollouts.

    >>> from apr.task.countdown import Problem
    >>> p = Problem([1, 2], 3)
    >>> reward(p, "1+2=3? yes\\nanswer 1+2<eos>"), reward(p, "answer 2*1"), reward(p, "no idea")
    (1.0, 0.0, 0.0)
    >>> reward(p, "answer 2*1", format_bonus=0.1), reward(p, "answer ???", format_bonus=0.1)
    (0.1, 0.0)
"""

from __future__ import annotations

import math
from typing import Any

from apr.config import check
from apr.task.countdown import Problem, extract_answer
from apr.task.verify import verify, well_formed


def reward(problem: Problem, text: Any, format_bonus: float = 0.0) -> float:
    """1.0 if the last `answer ` line of `text` solves `problem`, else a shaping bonus or 0.0.

    `format_bonus` (off by default) is paid when the last answer line holds a well-formed
    expression (it parses; numbers and value may be wrong). A malformed or missing answer
    line gets 0.0, so the bonus rewards the format, not merely printing the prefix.
    """
    ok = isinstance(format_bonus, (int, float)) and not isinstance(format_bonus, bool) \
        and math.isfinite(format_bonus) and 0.0 <= format_bonus <= 1.0
    check(ok, "reward.format_bonus", format_bonus, "a number in [0, 1]")
    answer = extract_answer(text)
    if answer is None:
        return 0.0
    if verify(problem, answer):
        return 1.0
    return float(format_bonus) if well_formed(answer) else 0.0
