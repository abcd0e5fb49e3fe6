"""A wall-clock training budget (`train.max_minutes`), shared by the SFT and RL trainers.

The budget counts *training* time: the trainer's loop (steps, periodic evaluation and checkpoints),
not its setup (reading data, building the model) nor the final evaluation and checkpoint. A resumed
run continues the count where its checkpoint left it (`elapsed_s` in `trainer_state.json`), so
`max_minutes=12` means twelve minutes of training however many times the run was interrupted.

Under a budget the learning-rate schedule is laid out over time instead of steps: the cosine runs
from the start to the deadline (its progress is `fraction`, the share of the budget used) and the
warmup still takes `optim.warmup_steps` steps, as a cap: lr factor = min(warmup(step), cosine(time)).
So a budget shorter than the warmup still ends at `min_lr_ratio * lr`, and the step that crosses the
deadline leaves the schedule at its end; the run then ends as a finished run: final evaluation and
`<run_dir>/final`.

With several processes (DDP, DeepSpeed) every rank must stop at the same step and use the same
learning rate: `sync` takes rank 0's clock through one all-reduce.

    >>> t = iter(range(0, 1000, 30))                       # a fake clock: 30 s per call
    >>> b = TimeBudget(max_minutes=2.0, clock=lambda: float(next(t)))
    >>> b.start()                                          # clock 0
    >>> [round(b.sync(), 2) for _ in range(4)], b.is_over  # clock 30, 60, 90, 120
    ([0.25, 0.5, 0.75, 1.0], True)
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TimeBudget:
    """Seconds of training allowed and used; `fraction` is what the schedule reads."""

    def __init__(self, max_minutes: float, clock: Callable[[], float] | None = None, elapsed_s: float = 0.0) -> None:
        self.max_s = 60.0 * max_minutes
        self.clock = clock or time.monotonic
        self.elapsed_before = elapsed_s  # training time of earlier (resumed) runs
        self.elapsed_s = elapsed_s  # as of the last `sync`
        self._t0: float | None = None

    def start(self) -> None:
        """Start (or, after a resume, continue) counting."""
        self._t0 = self.clock()

    def sync(self, strategy=None) -> float:
        """Read the clock (rank 0's, when `strategy` spans several processes); returns `fraction`."""
        if self._t0 is None:
            self.start()
        now = self.elapsed_before + self.clock() - self._t0
        if strategy is not None and strategy.world_size > 1:
            (now,) = strategy.all_reduce_sum([now if strategy.is_main else 0.0])
        self.elapsed_s = now
        return self.fraction

    @property
    def fraction(self) -> float:
        """Share of the budget used, in [0, 1]."""
        return min(self.elapsed_s / self.max_s, 1.0) if self.max_s > 0 else 1.0

    @property
    def is_over(self) -> bool:
        return self.elapsed_s >= self.max_s

    def state(self) -> dict:
        """What a checkpoint keeps so that a resumed run continues the same budget."""
        return {"elapsed_s": self.elapsed_s, "max_minutes": self.max_s / 60}

    @classmethod
    def resumed(cls, max_minutes: float, state: dict, clock: Callable[[], float] | None = None) -> TimeBudget:
        return cls(max_minutes, clock, float(state.get("elapsed_s", 0.0)))
