"""Runtime limits and sampling (`conf/runtime/`), validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass

from apr.config import check


@dataclass
class RuntimeConfig:
    """Limits of one spawn/join rollout; breaking one ends the thread with a recorded reason."""

    max_children: int = 16  # child threads one spawn may start
    max_depth: int = 1  # levels of threads that may spawn (1: only roots spawn, as in the paper)
    max_thread_tokens: int = 1024  # context window of one thread: prompt + generated + written results
    max_total_tokens: int | None = None  # generated tokens per problem over all its threads (None: no budget)
    timeout_s: float | None = None  # wall clock per problem (None: none)
    temperature: float = 0.0  # 0 = greedy (evaluation); 1.0 for RL rollouts
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k
    seed: int = 0  # base seed: each thread's sampling seed derives from it and the thread's position

    def __post_init__(self) -> None:
        check(self.max_children >= 1, "runtime.max_children", self.max_children, "an integer >= 1")
        check(self.max_depth >= 0, "runtime.max_depth", self.max_depth, "an integer >= 0")
        check(self.max_thread_tokens >= 2, "runtime.max_thread_tokens", self.max_thread_tokens,
              "an integer >= 2 (and longer than every prompt)")
        check(self.max_total_tokens is None or self.max_total_tokens >= 1, "runtime.max_total_tokens",
              self.max_total_tokens, "null or a positive integer")
        check(self.timeout_s is None or self.timeout_s > 0, "runtime.timeout_s", self.timeout_s,
              "null or a positive number of seconds")
        check(self.temperature >= 0, "runtime.temperature", self.temperature, "a number >= 0 (0 = greedy)")
        check(0 < self.top_p <= 1, "runtime.top_p", self.top_p, "a number in (0, 1]")
        check(self.top_k >= -1, "runtime.top_k", self.top_k, "-1 (off) or a positive integer")
        check(self.seed >= 0, "runtime.seed", self.seed, "a non-negative integer")
