"""Outcome reward."""

from __future__ import annotations

import pytest

from apr.config import ConfigError
from apr.task import Problem, reward

P = Problem([22, 26, 31, 53], 27)
GOOD = "26+((53-31)/22)"


def test_reward_cases():
    assert reward(P, f"53-31=22\n22/22=1\nanswer {GOOD}<eos>") == 1.0
    assert reward(P, f"answer {GOOD} = 27\n") == 1.0
    assert reward(P, f"answer 1+1\nanswer {GOOD}") == 1.0  # last answer line wins
    assert reward(P, f"answer {GOOD}\nanswer 1+1") == 0.0
    assert reward(P, f"I think {GOOD}") == 0.0  # no answer line
    assert reward(P, "") == 0.0
    assert reward(P, None) == 0.0
    assert reward(P, "answer 26+53-31-22") == 0.0  # wrong value, bonus off by default


def test_format_bonus():
    assert reward(P, "answer 26+53-31-22", format_bonus=0.1) == 0.1  # well formed, wrong value
    assert reward(P, "answer 22+26", format_bonus=0.1) == 0.1  # well formed, numbers missing
    assert reward(P, "answer 26 +", format_bonus=0.1) == 0.0  # malformed
    assert reward(P, "answer <eos>", format_bonus=0.1) == 0.0  # empty
    assert reward(P, "no answer", format_bonus=0.1) == 0.0
    assert reward(P, f"answer {GOOD}", format_bonus=0.1) == 1.0


@pytest.mark.parametrize("bonus", [-0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_bonus(bonus):
    with pytest.raises(ConfigError, match="^reward.format_bonus"):
        reward(P, "answer 1", format_bonus=bonus)
