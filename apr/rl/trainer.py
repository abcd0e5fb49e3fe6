"""The RL driver: one loop that reads top to bottom, over a cluster of rollout workers and a learner.

Each step: `rollout` (B problems x G samples, sharded over the workers) -> `advantages` (rewards,
group baselines, credit to every thread; token-exact sequences) -> `ref` (reference log-probs for
the KL) -> `update` (the learner's inner steps) -> `sync` (weights to the workers, in buckets) ->
`eval` / `checkpoint` when due. Every phase is timed.

The cluster is `InProcessCluster` here (`dist=none`) or `apr.dist.RayCluster` (`dist=ray_local`,
`ray_cluster`); both have the same methods, so the loop is the same code for both.

    >>> # trainer = RLTrainer(cfg, InProcessCluster(cfg)); summary = trainer.fit()
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from apr.config import ConfigError, to_dict
from apr.model.integrity import check_checkpoint, files_fingerprint, weights_hash
from apr.rl.algos import CREDIT
from apr.rl.config import RLConfig
from apr.rl.learner import Learner, RefPolicy
from apr.rl.rollout import (
    ProblemStream,
    Rollout,
    RolloutWorker,
    rollout_seed,
    worker_engine_config,
)
from apr.rl.sequences import advantage_params, sequences_from_trees
from apr.scoring import EvalRecord, score
from apr.task import load_problems, problems_path
from apr.train import checkpoint as ckpt
from apr.train.budget import TimeBudget
from apr.train.metrics import MetricsLog, is_due, progress_bar, say, timer

SHARD = tuple  # (problems, seed, first_index)


class RLError(RuntimeError):
    """The run stopped; the message says at which step and phase, and what was saved."""


def shards_of(problems: list, num_workers: int, seed: int, step: int) -> list[tuple]:
    """Contiguous slices of the batch, one per worker (fewer if there are fewer problems), with their seeds."""
    n = len(problems)
    k = min(num_workers, n)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(problems[a:b], rollout_seed(seed, step, a), a) for a, b in zip(bounds, bounds[1:])]


class InProcessCluster:
    """`dist=none`: the rollout workers, learner and reference all live in this process (for debugging)."""

    def __init__(self, cfg: RLConfig) -> None:
        self.cfg = cfg
        self.learner = Learner(cfg)
        self.ref = RefPolicy(cfg.init, cfg.train.micro_batch_tokens, cfg.train.precision,
                             temperature=cfg.logprob_temperature) if cfg.uses_ref else None
        n = cfg.dist.num_rollout_workers
        self.workers = [RolloutWorker(cfg.init, cfg.rollout, cfg.algo, cfg.data.condition,
                                      engine=worker_engine_config(cfg.engine, i, n)) for i in range(n)]
        self.num_workers = len(self.workers)
        self.restarts = 0

    def rollout(self, shards: list[SHARD], num_samples: int, temperature: float | None = None,
                step: int | None = None) -> list[Rollout]:
        out: list[Rollout] = []
        for worker, (problems, seed, first) in zip(self.workers, shards):
            out += worker.rollout(problems, num_samples, seed, first, temperature)
        return out

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


class RLTrainer:
    def __init__(self, cfg: RLConfig, cluster, clock=None) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.clock = clock  # of the time budget (train.max_minutes); None: time.monotonic
        self.budget: TimeBudget | None = None
        self.run_dir = Path(cfg.run_dir)
        self.stream = ProblemStream(load_problems(cfg.data.dir, cfg.data.split, cfg.data.max_problems), cfg.seed)
        r = cfg.rollout
        self.eval_problems = load_problems(cfg.data.dir, r.eval_split, r.eval_problems) if r.eval_problems else []
        self.step = 0
        self.phase = "setup"
        self.recipe = run_recipe(cfg)

    # ---- the loop -------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        try:
            resume_from = self._start()
        except BaseException:
            self.cluster.close()  # e.g. a refused resume: stop the actors the cluster started
            raise
        self.log = MetricsLog(self.run_dir, cfg.wandb, cfg.name, to_dict(cfg),
                              resume_step=self.step if resume_from else None)
        bar = progress_bar(cfg.train.steps, self.step, cfg.progress, "rl")
        last_eval: dict = {}
        try:
            self.phase = "sync"
            self.cluster.sync_weights()
            if self.step == 0 and self.eval_problems:
                last_eval = self.evaluate()
                self.log.log(last_eval, 0)
            if self.budget is not None:
                self.budget.start()
            while not self.is_done():
                row = self.train_step()
                self.step += 1
                if self.budget is not None:
                    self.budget.sync()
                if is_due(self.step, cfg.rollout.eval_every_steps) and not self.is_done() and self.eval_problems:
                    with timer("eval", row):
                        last_eval = self.evaluate()
                    row.update(last_eval)
                if is_due(self.step, cfg.checkpoint.every_steps) and not self.is_done():
                    with timer("checkpoint", row):
                        self.save(self.run_dir / "checkpoints" / f"step_{self.step:08d}")
                        ckpt.prune(self.run_dir, cfg.checkpoint.keep_last)
                if self.step % cfg.log_every_steps == 0 or self.is_done():
                    self.log.log(row, self.step)
                bar.set_postfix(reward=f"{row['rollout/reward']:.3f}", acc=f"{row['rollout/accuracy']:.3f}",
                                children=f"{row['rollout/mean_child_threads']:.1f}", refresh=False)
                bar.update(1)
            self.phase = "final"
            if self.eval_problems:
                last_eval = self.evaluate()
                self.log.log(last_eval, self.step)
            self.save(self.run_dir / "final")
        except BaseException as e:
            self._fail(e)
        finally:
            bar.close()
            self.log.close()
            self.cluster.close()
        summary = {"step": self.step, "final": str(self.run_dir / "final"), **last_eval}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def train_step(self) -> dict:
        cfg, row = self.cfg, {}
        t0 = time.perf_counter()
        self.phase = "rollout"
        with timer("rollout", row):
            problems = self.stream.batch(self.step * cfg.train.batch_problems, cfg.train.batch_problems)
            shards = shards_of(problems, self.cluster.num_workers, cfg.seed, self.step)
            rollouts = self.cluster.rollout(shards, cfg.algo.group_size, step=self.step)
        self.phase = "advantages"
        with timer("advantages", row):
            rewards = [r.reward for r in rollouts]
            groups = [r.problem_index for r in rollouts]
            outcomes = [r.thread_outcomes for r in rollouts] if CREDIT[cfg.algo.credit].needs_outcomes else None
            batch = sequences_from_trees([r.tree for r in rollouts], rewards, groups, cfg.algo.advantage,
                                         cfg.algo.credit, outcomes=outcomes, **advantage_params(cfg.algo))
        ref = None
        if cfg.uses_ref:
            self.phase = "ref"
            with timer("ref", row):
                ref = self.cluster.ref_logprobs(batch)
        self.phase = "update"
        with timer("update", row):
            row.update(self.cluster.update(batch, ref))
        self.phase = "sync"
        with timer("sync", row):
            version = self.cluster.sync_weights()
        step_s = time.perf_counter() - t0
        row.update(rollout_metrics(rollouts, "rollout"))
        gen = row["rollout/mean_generated_tokens"] * len(rollouts)
        row.update({"rollout/tokens_per_s": gen / max(row["time/rollout_s"], 1e-9),
                    "rl/train_tokens_per_s": row["rl/train_tokens"] / max(row["time/update_s"], 1e-9),
                    "rl/policy_version": version,
                    "rl/policy_lag": version - 1 - min(r.policy_version for r in rollouts),
                    "dist/worker_restarts": getattr(self.cluster, "restarts", 0), "time/step_s": step_s})
        return row

    def evaluate(self) -> dict:
        """Greedy rollouts of the held-out problems with the current weights."""
        self.phase = "eval"
        shards = shards_of(self.eval_problems, self.cluster.num_workers, self.cfg.seed, -1)
        rollouts = self.cluster.rollout(shards, 1, temperature=0.0)
        return rollout_metrics(rollouts, "eval")

    # ---- run directory, checkpoints, failure ---------------------------------------------------------
    def _start(self) -> Path | None:
        cfg = self.cfg
        ckpt.refuse_to_clobber(self.run_dir, cfg.resume, cfg.overwrite)
        if cfg.overwrite and not cfg.resume:
            ckpt.set_aside_earlier_run(self.run_dir, _say)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        resume_from = ckpt.latest(self.run_dir, _say) if cfg.resume else None
        if resume_from is not None:
            ckpt.check_same_recipe(resume_from, run_recipe(cfg), cfg.resume_changed, _say)
            self.phase = "resume"
            self.cluster.load(resume_from)
            state = json.loads((resume_from / ckpt.STATE_FILE).read_text())
            self.step = state["step"]
            _say(f"resuming at step {self.step} from {resume_from}")
        if cfg.train.max_minutes:  # a resumed run continues its checkpoint's count of training time
            state = json.loads((resume_from / ckpt.STATE_FILE).read_text()) if resume_from else {}
            self.budget = TimeBudget.resumed(cfg.train.max_minutes, state.get("budget", {}), self.clock)
        return resume_from

    def is_done(self) -> bool:
        """`train.steps` done, or the time budget (`train.max_minutes`) spent."""
        return self.step >= self.cfg.train.steps or (self.budget is not None and self.budget.is_over)

    def save(self, path: Path) -> Path:
        """Atomically: learner (HF policy, optimizer, critic, RNG) + driver state (step, data position)."""
        state = {"step": self.step, "problems_consumed": self.step * self.cfg.train.batch_problems,
                 "seed": self.cfg.seed, "recipe": self.recipe}
        if self.budget is not None:
            state["budget"] = self.budget.state()
        return ckpt.save(path, self.cluster.save, state)

    def _fail(self, e: BaseException) -> None:
        """Record why the run stopped; keep a checkpoint of the last finished step unless the learner broke."""
        saved = "nothing new (the newest checkpoint stands)"
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))  # Ctrl-C, or SIGTERM (see apr.cli.rl)
        if self.phase not in ("update", "resume", "setup") and self.step > 0 and not stopped:
            try:
                saved = str(self.save(self.run_dir / "checkpoints" / f"step_{self.step:08d}"))
            except Exception as e2:  # the learner may be gone too
                saved = f"nothing (saving failed: {e2})"
        info = {"step": self.step, "phase": self.phase, "error": f"{type(e).__name__}: {e}", "saved": saved,
                "traceback": traceback.format_exc()}
        (self.run_dir / "error.json").write_text(json.dumps(info, indent=2))
        if isinstance(e, (ConfigError, KeyboardInterrupt, SystemExit)):
            raise e
        raise RLError(f"RL run stopped at step {self.step} in phase {self.phase!r}: {type(e).__name__}: {e}. "
                      f"Saved: {saved}. Details: {self.run_dir / 'error.json'}; resume=true continues.") from e


def check_inputs(cfg: RLConfig) -> None:
    """The files the run reads exist and are intact: call it before any actor starts, so a typo is one
    clear line rather than an actor's traceback."""
    init = Path(cfg.init)
    for name in ("config.json", "tokenizer.json"):
        if not (init / name).is_file():
            raise ConfigError(f"init: {cfg.init!r} has no {name}; accepted: the directory of an SFT checkpoint "
                              "(model and tokenizer), e.g. runs/sft/<name>/final")
    check_checkpoint(init, "init")
    load_problems(cfg.data.dir, cfg.data.split, 1)
    if cfg.rollout.eval_problems:
        load_problems(cfg.data.dir, cfg.rollout.eval_split, 1)


def run_recipe(cfg: RLConfig) -> dict:
    """What defines a run: `resume=true` with any of it changed is refused unless `resume_changed=true`."""
    return {"data.dir contents": files_fingerprint([problems_path(cfg.data.dir, cfg.data.split)]),
            "data.split": cfg.data.split, "data.max_problems": cfg.data.max_problems,
            "init weights": weights_hash(cfg.init), "optim.lr": cfg.optim.lr, "optim.critic_lr": cfg.optim.critic_lr,
            "optim.warmup_steps": cfg.optim.warmup_steps, "train.steps": cfg.train.steps,
            "train.max_minutes": cfg.train.max_minutes,
            "train.batch_problems": cfg.train.batch_problems, "algo.group_size": cfg.algo.group_size,
            "seed": cfg.seed}


def rollout_metrics(rollouts: list[Rollout], prefix: str) -> dict:
    """`<prefix>/<name>`: the standard metrics (`apr.scoring.METRICS`), the mean reward, thread lengths."""
    n = max(len(rollouts), 1)
    records = [EvalRecord.from_tree(r.problem_index, r.sample_index, r.answer, r.correct, r.tree) for r in rollouts]
    lengths = [t.num_tokens for r in rollouts for t in r.tree.threads()]
    return {f"{prefix}/reward": sum(r.reward for r in rollouts) / n,
            **{f"{prefix}/{k}": v for k, v in score(records).items()},
            f"{prefix}/thread_len_mean": sum(lengths) / max(len(lengths), 1),
            f"{prefix}/thread_len_max": max(lengths, default=0)}


def _say(msg: str) -> None:
    say("rl", msg)
