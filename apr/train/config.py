"""Config pieces both trainers use: where metrics go (wandb) and how often checkpoints are written.

    >>> CheckpointConfig(every_steps=50).keep_last
    2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from apr.config import check


@dataclass
class CheckpointConfig:
    every_steps: int = 500  # 0: only the final checkpoint
    keep_last: int = 2  # periodic checkpoints kept (the final one is separate)

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "checkpoint.every_steps", self.every_steps, "an integer >= 0")
        check(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "a positive integer")


@dataclass
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "apr"
    entity: str | None = None
