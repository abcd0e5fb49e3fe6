"""The RL cluster on Ray: rollout-worker actors, a learner actor, a reference actor; weight sync; restarts.

`dist=ray_local` starts a local Ray cluster for the run (its temp dir under the run dir) and stops
it at the end; `dist=ray_cluster` joins a running one (`address=auto`) and leaves it running.
The driver (`apr.rl.trainer.RLTrainer`) calls the same methods as on `InProcessCluster`.

Weight sync: the learner actor cuts its state dict into buckets of `dist.bucket_mb`, puts each in
the object store once and returns the references; every worker fetches them (one object per
bucket, shared by all workers on a node) and copies them into its engine in place.

The frozen reference (for the KL) is its own actor beside the learner (bundle 0), or, with
`dist.ref_placement=rollout`, a copy inside every rollout worker that scores the worker's rollouts
right after generating them. `launch_rollout` / `collect_rollouts` split a rollout call so that the
driver can run the learner meanwhile (`train.off_policy_steps=1`).

Fault tolerance: a rollout call that fails because its worker died (or the worker was killed)
replaces that worker by a fresh actor, gives it the current weights and re-runs its shard, up
to `dist.max_worker_restarts` times per call. Every `ray.get` has a timeout, so nothing hangs.

Placement (`dist.placement.strategy`, off by default): one placement group reserves a bundle for
the learner (+ reference) and one per rollout worker before any actor starts, PACKed onto few
nodes or SPREAD over many; each actor is scheduled into its own bundle (a replaced worker too).

Data-parallel learners (`dist.num_learners` > 1): that many learner actors form one torch.distributed
world (rank 0 hosts the rendezvous on its node; gloo on CPU, nccl on CUDA). Each step the driver
splits the batch's rows into token-balanced shards, one per learner, and gives every learner the
whole step's loss denominator and token count, so their summed gradients are one learner's. They
all take part in weight export and checkpoints (collectives); rank 0's buckets go to the workers.
Learner r > 0 gets its own placement bundle after the workers'. A checkpoint directory must be
visible to every learner's node (a shared filesystem on a multi-node cluster).

    >>> # cluster = RayCluster(cfg); RLTrainer(cfg, cluster).fit()
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

import ray
import torch

from apr.config import ConfigError
from apr.net import free_port
from apr.rl.algos import aggregation_denominator
from apr.rl.batch import shard_rows
from apr.rl.config import RLConfig
from apr.rl.learner import Learner, RefPolicy, ref_kwargs
from apr.rl.rollout import Rollout, RolloutWorker, worker_device, worker_engine_config
from apr.train import collectives
from apr.train.device import AUTO_ENV, select_device


def _all_threads(num_threads: int) -> int:
    """Ray caps an actor's OpenMP threads at its logical CPUs (often 1); the learner and reference run
    between rollouts, when the node's cores are free, so by default they take them all."""
    return num_threads or os.cpu_count() or 1


class LearnerActor:
    """The learner; with `dist.num_learners` > 1 rank `rank` of their world, built once `join` is called."""

    def __init__(self, cfg: RLConfig, rank: int = 0) -> None:
        from dataclasses import replace

        num_learners = cfg.dist.num_learners
        # several learners on a node share its cores
        threads = cfg.train.num_threads or max(_all_threads(0) // num_learners, 1)
        self.cfg = replace(cfg, train=replace(cfg.train, num_threads=threads))
        self.rank = rank
        self.learner = Learner(self.cfg) if num_learners == 1 else None

    def address(self) -> tuple[str, int]:
        """Rank 0: (node IP, free port) for the group's rendezvous."""
        return ray.util.get_node_ip_address(), free_port("")

    def join(self, master_addr: str, master_port: int) -> None:
        """Join the learners' world, then build the learner (DeepSpeed's setup is collective)."""
        collectives.join(self.rank, self.cfg.dist.num_learners, master_addr, master_port,
                   select_device(self.cfg.train.device).type)
        self.learner = Learner(self.cfg)

    def update(self, batch, ref_logprobs, denom: float | None = None, num_tokens: int | None = None):
        return self.learner.update(batch, ref_logprobs, denom, num_tokens)

    def export_weights(self, bucket_mb: float) -> tuple[list, int]:
        """(object refs of the weight buckets, policy version); none from ranks > 0, which only take
        part in the gathering (a collective under ZeRO-3)."""
        buckets = self.learner.export_weights(bucket_mb)
        return ([ray.put(b) for b in buckets] if self.rank == 0 else []), self.learner.version

    def save(self, path: str) -> None:
        self.learner.save(path)

    def load(self, path: str) -> int:
        return self.learner.load(path)


class RefActor:
    def __init__(self, path: str, max_tokens: int, precision: str, num_threads: int, device: str = "cpu",
                 temperature: float = 1.0) -> None:
        self.ref = RefPolicy(path, max_tokens, precision, device, _all_threads(num_threads), temperature)

    def logprobs(self, batch):
        return self.ref.logprobs(batch)


class WorkerActor(RolloutWorker):
    def set_weight_refs(self, refs: list, version: int) -> int:
        return self.set_weights(ray.get(refs), version)


def _runtime_env() -> dict | None:
    """What every actor's process must see: `APR_PRECISION_AUTO`, where set (a joined cluster's nodes
    were started without the driver's environment)."""
    value = os.environ.get(AUTO_ENV)
    return {"env_vars": {AUTO_ENV: value}} if value else None


def _join_cluster(address: str) -> None:
    """`ray.init(address)`, or one clear line: Ray itself raises a ConnectionError for `auto`, and retries a
    dead `host:port` for minutes, so that is probed first."""
    no_cluster = ConfigError(f"dist.address: no running Ray cluster found at {address!r}; accepted: the address "
                             "of a running cluster (start one with `ray start --head`), or dist=ray_local to start "
                             "one on this machine")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():
        import socket

        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError:
            raise no_cluster from None
    try:
        ray.init(address=address, logging_level="warning", runtime_env=_runtime_env())
    except ConnectionError:
        raise no_cluster from None


class RayCluster:
    def __init__(self, cfg: RLConfig) -> None:
        self.cfg = cfg
        d = cfg.dist
        self._owns_ray = False
        self._tmp_dir: Path | None = None
        if not ray.is_initialized():
            if d.mode == "ray_cluster":
                _join_cluster(d.address)
            else:
                self._start_local(cfg)
        self.timeout = d.call_timeout_s
        self.pg = self._placement_group()
        self.learners = self._new_learners()
        self.learner = self.learners[0]
        self.ref = None
        self.ref_in_workers = cfg.uses_ref and d.ref_placement == "rollout"  # else a reference actor
        if cfg.uses_ref and not self.ref_in_workers:
            self.ref = ray.remote(num_cpus=d.ref_cpus, num_gpus=d.ref_gpus)(RefActor).options(
                **self._in_bundle(0)).remote(cfg.init, cfg.train.micro_batch_tokens, cfg.train.precision,
                                            cfg.train.num_threads, "cuda" if d.ref_gpus > 0 else "cpu",
                                            cfg.logprob_temperature)
        self.workers = [self._new_worker(i) for i in range(d.num_rollout_workers)]
        self.num_workers = len(self.workers)
        self.restarts = 0
        self._weights: tuple[list, int] | None = None  # the refs of the latest sync, for replaced workers

    def _start_local(self, cfg: RLConfig) -> None:
        d = cfg.dist
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private single-machine cluster needs no token
        tmp = Path(cfg.run_dir).resolve() / "ray"
        if len(str(tmp)) > 40:  # Ray's sockets live ~65 bytes below it; unix socket paths are limited to 107
            tmp = Path(tempfile.mkdtemp(prefix="apr-ray-"))
            self._tmp_dir = tmp  # ours to delete at close
        tmp.mkdir(parents=True, exist_ok=True)
        cpus = math.ceil(d.learner_cpus * d.num_learners + d.ref_cpus + d.worker_cpus * d.num_rollout_workers)
        ray.init(num_cpus=max(cpus, 1), _temp_dir=str(tmp), include_dashboard=False, logging_level="warning",
                 configure_logging=True, runtime_env=_runtime_env())
        self._owns_ray = True

    def _placement_group(self):
        """The placement group of `dist.placement` (bundle 0: learner + reference, 1+i: worker i, then one
        per further learner), or None."""
        d = self.cfg.dist
        if d.placement.strategy is None:
            return None
        from ray.util.placement_group import placement_group, remove_placement_group

        def bundle(cpus: float, gpus: float) -> dict:
            return {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}

        bundles = [bundle(d.learner_cpus + d.ref_cpus, d.learner_gpus + d.ref_gpus)]
        bundles += [bundle(d.worker_cpus, d.worker_gpus) for _ in range(d.num_rollout_workers)]
        bundles += [bundle(d.learner_cpus, d.learner_gpus) for _ in range(d.num_learners - 1)]
        pg = placement_group(bundles, strategy=d.placement.strategy)
        try:
            ray.get(pg.ready(), timeout=d.placement.timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            raise RuntimeError(f"dist.placement: the cluster did not grant {len(bundles)} bundles {bundles} "
                               f"({d.placement.strategy}) within {d.placement.timeout_s:.0f} s; it has "
                               f"{ray.cluster_resources()}") from None
        return pg

    def _in_bundle(self, index: int) -> dict:
        """Actor options that schedule it into bundle `index` of the placement group (none without one)."""
        if self.pg is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index)}

    def _new_learners(self) -> list:
        """`dist.num_learners` learner actors (learner r > 0 in bundle num_rollout_workers + r); several
        join one world, rank 0 hosting its rendezvous."""
        d = self.cfg.dist
        actor = ray.remote(num_cpus=d.learner_cpus, num_gpus=d.learner_gpus)(LearnerActor)
        learners = [actor.options(**self._in_bundle(r and d.num_rollout_workers + r)).remote(self.cfg, r)
                    for r in range(d.num_learners)]
        if len(learners) > 1:
            addr, port = self._get(learners[0].address.remote())
            self._get([a.join.remote(addr, port) for a in learners])
        return learners

    def _new_worker(self, i: int):
        c, d = self.cfg, self.cfg.dist
        actor = ray.remote(num_cpus=d.worker_cpus, num_gpus=d.worker_gpus)(WorkerActor).options(**self._in_bundle(1 + i))
        engine = worker_engine_config(c.engine, i, d.num_rollout_workers)
        ref = ref_kwargs(c, worker_device(engine)) if self.ref_in_workers else None
        return actor.remote(c.init, c.rollout, c.algo, c.data.condition, d.worker_threads, engine, ref=ref)

    def _get(self, ref):
        return ray.get(ref, timeout=self.timeout)

    # ---- the cluster interface (see apr.cluster.in_process.InProcessCluster) ------------------------------------
    def rollout(self, shards: list[tuple], num_samples: int, temperature: float | None = None,
                step: int | None = None) -> list[Rollout]:
        return self.collect_rollouts(self.launch_rollout(shards, num_samples, step, temperature))

    def launch_rollout(self, shards: list[tuple], num_samples: int, step: int | None = None,
                       temperature: float | None = None) -> tuple:
        """Start every worker on its shard (on the weights it holds now); returns the handle that
        `collect_rollouts` waits on. Training rollouts (`temperature` None) carry the workers' reference
        log-probs with `dist.ref_placement=rollout`."""
        call = (shards, num_samples, temperature)
        return call, {i: self._call(call, i) for i in range(len(shards))}

    def _call(self, call: tuple, i: int):
        shards, num_samples, temperature = call
        problems, seed, first = shards[i]
        with_ref = self.ref_in_workers and temperature is None
        return self.workers[i].rollout.remote(problems, num_samples, seed, first, temperature, with_ref)

    def collect_rollouts(self, launched: tuple) -> list[Rollout]:
        """The rollouts of a `launch_rollout`: a worker that died is replaced (with the weights of the
        latest sync) and its shard run again, up to `dist.max_worker_restarts` times."""
        call, refs = launched[0], dict(launched[1])
        results: dict[int, list[Rollout]] = {}
        attempts = 0
        while refs:
            i, ref = next(iter(refs.items()))
            try:
                results[i] = self._get(ref)
                del refs[i]
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                attempts += 1
                if attempts > self.cfg.dist.max_worker_restarts:
                    raise RuntimeError(f"rollout worker {i} died {attempts} times in one call; last: {e}") from e
                self._replace_worker(i)
                refs[i] = self._call(call, i)
        return [r for i in sorted(results) for r in results[i]]

    def _replace_worker(self, i: int) -> None:
        from tqdm import tqdm

        tqdm.write(f"[rl] rollout worker {i} died; starting a new one and re-running its share of the step")
        try:
            ray.kill(self.workers[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[i] = self._new_worker(i)
        self.restarts += 1
        if self._weights is not None:
            refs, version = self._weights
            self._get(self.workers[i].set_weight_refs.remote(refs, version))

    def ref_logprobs(self, batch):
        return self._get(self.ref.logprobs.remote(batch))

    def update(self, batch, ref_logprobs):
        if len(self.learners) == 1:
            return self._get(self.learner.update.remote(batch, ref_logprobs))
        # the whole step's denominator and tokens: each shard's loss is its share of the batch's
        denom = aggregation_denominator(self.cfg.loss.aggregation, batch.mask, batch.seq_weights)
        calls = []
        for actor, rows in zip(self.learners, shard_rows(batch.lengths.tolist(), len(self.learners))):
            sub = batch.select(rows)
            ref = None if ref_logprobs is None else ref_logprobs[torch.tensor(rows), :sub.ids.shape[1]]  # (n, t)
            calls.append(actor.update.remote(sub, ref, denom, batch.num_tokens))
        return self._get(calls)[0]  # the metrics are reduced over the learners: rank 0's are the step's

    def sync_weights(self) -> int:
        exports = self._get([a.export_weights.remote(self.cfg.dist.bucket_mb) for a in self.learners])
        refs, version = exports[0]
        self._weights = (refs, version)
        done = [w.set_weight_refs.remote(refs, version) for w in self.workers]
        for i, ref in enumerate(done):
            try:
                self._get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                self._replace_worker(i)  # gets these weights as it starts
        return version

    def save(self, path: Path) -> None:
        self._get([a.save.remote(str(path)) for a in self.learners])

    def load(self, path: Path) -> int:
        return self._get([a.load.remote(str(path)) for a in self.learners])[0]

    def close(self) -> None:
        try:  # engines first (SGLang servers leave their weight-sync groups), then the actors
            ray.get([w.close.remote() for w in self.workers], timeout=60)
        except Exception:
            pass
        for a in [*self.workers, *self.learners, self.ref]:
            if a is not None:
                try:
                    ray.kill(a)
                except Exception:
                    pass
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.pg)
        if self._owns_ray:
            ray.shutdown()
            if self._tmp_dir is not None:
                shutil.rmtree(self._tmp_dir, ignore_errors=True)
