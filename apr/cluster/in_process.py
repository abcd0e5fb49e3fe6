"""`dist=none`: the rollout workers, the learner and the reference in this process (for debugging, and the
reference the Ray cluster's results are tested against).

    >>> # cluster = InProcessCluster(cfg); RLTrainer(cfg, cluster).fit()
"""

from __future__ import annotations

from pathlib import Path

from apr.rl.config import RLConfig
from apr.rl.learner import Learner, RefPolicy, ref_kwargs
from apr.rl.rollout import Rollout, RolloutWorker, worker_device, worker_engine_config

SHARD = tuple  # (problems, seed, first_index)


class InProcessCluster:
    """`dist=none`: the rollout workers, learner and reference all live in this process (for debugging).

    The reference sits beside the learner (`dist.ref_placement=learner`, on the learner's device) or
    in every rollout worker (`rollout`, on the worker's engine device)."""

    def __init__(self, cfg: RLConfig) -> None:
        self.cfg = cfg
        self.learner = Learner(cfg)
        self.ref_in_workers = cfg.uses_ref and cfg.dist.ref_placement == "rollout"
        self.ref = None
        if cfg.uses_ref and not self.ref_in_workers:
            self.ref = RefPolicy(**ref_kwargs(cfg, str(self.learner.device)))
        n = cfg.dist.num_rollout_workers
        engines = [worker_engine_config(cfg.engine, i, n) for i in range(n)]
        self.workers = [RolloutWorker(cfg.init, cfg.rollout, cfg.algo, cfg.data.condition, engine=e,
                                      ref=ref_kwargs(cfg, worker_device(e)) if self.ref_in_workers else None)
                        for e in engines]
        self.num_workers = len(self.workers)
        self.restarts = 0

    def rollout(self, shards: list[SHARD], num_samples: int, temperature: float | None = None,
                step: int | None = None) -> list[Rollout]:
        out: list[Rollout] = []
        with_ref = self.ref_in_workers and temperature is None  # training rollouts (not greedy evaluation)
        for worker, (problems, seed, first) in zip(self.workers, shards):
            out += worker.rollout(problems, num_samples, seed, first, temperature, with_ref=with_ref)
        return out

    def launch_rollout(self, shards: list[SHARD], num_samples: int, step: int | None = None) -> list[Rollout]:
        """Start a step's rollouts on the weights the workers hold now (in process: run them now)."""
        return self.rollout(shards, num_samples, step=step)

    def collect_rollouts(self, launched: list[Rollout]) -> list[Rollout]:
        """The rollouts `launch_rollout` started."""
        return launched

    def ref_logprobs(self, batch):
        return self.ref.logprobs(batch)

    def update(self, batch, ref_logprobs):
        return self.learner.update(batch, ref_logprobs)

    def sync_weights(self) -> int:
        buckets = self.learner.export_weights(self.cfg.dist.bucket_mb)
        for w in self.workers:
            w.set_weights(buckets, self.learner.version)
        return self.learner.version

    def save(self, path: Path) -> None:
        self.learner.save(path)

    def load(self, path: Path) -> int:
        return self.learner.load(path)

    def close(self) -> None:
        for w in self.workers:
            w.close()
