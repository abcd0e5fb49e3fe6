"""Placement of the RL pieces (rollout workers, learners, reference, weight sync): in this process or on
Ray, behind one small protocol (`Cluster`) that the RL loop drives. The only package that imports ray
(lazily, from `make_cluster`).

in_process   `InProcessCluster` (`dist.mode=none`)
ray_cluster  `RayCluster` (`ray_local`, `ray_cluster`): actors, placement groups, worker restarts

    >>> # cluster = make_cluster(cfg)     # dist.mode: none | ray_local | ray_cluster
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Cluster(Protocol):
    """What `apr.rl.trainer.RLTrainer` asks of a placement (both clusters implement it)."""

    num_workers: int  # rollout workers (shards per step)
    restarts: int  # rollout workers replaced so far

    def rollout(self, shards: list[tuple], num_samples: int, temperature: float | None = None,
                step: int | None = None) -> list: ...

    def launch_rollout(self, shards: list[tuple], num_samples: int, step: int | None = None) -> Any:
        """Start a step's rollouts on the weights the workers hold now; `collect_rollouts` waits for them."""

    def collect_rollouts(self, launched: Any) -> list: ...

    def ref_logprobs(self, batch) -> Any: ...

    def update(self, batch, ref_logprobs) -> dict: ...

    def sync_weights(self) -> int:
        """The learner's weights to every worker; returns the policy version."""

    def save(self, path: Path) -> None: ...

    def load(self, path: Path) -> int: ...

    def close(self) -> None: ...


def make_cluster(cfg) -> Cluster:
    """`InProcessCluster` for `dist.mode=none`, else a `RayCluster` (local or joined)."""
    if cfg.dist.mode == "none":
        from apr.cluster.in_process import InProcessCluster

        return InProcessCluster(cfg)
    from apr.cluster.ray_cluster import RayCluster

    return RayCluster(cfg)
