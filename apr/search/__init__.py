"""Symbolic Countdown solvers (SoS+, APR) that write thread-tree traces."""

from apr.search.config import SearchConfig
from apr.search.heuristics import HEURISTICS
from apr.search.outcome import child_outcome
from apr.search.solvers import SearchResult, problem_prompt, solve, with_prompt_prefix
from apr.search.trace import Segment, ThreadTrace

__all__ = ["HEURISTICS", "SearchConfig", "SearchResult", "Segment", "ThreadTrace", "child_outcome", "problem_prompt",
           "solve", "with_prompt_prefix"]
