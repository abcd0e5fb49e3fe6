"""The RL driver: one loop that reads top to bottom, over a cluster of rollout workers and a learner.

Each step: `rollout` (B problems x G samples, sharded over the workers) -> `advantages` (rewards,
group baselines, credit to every thread; token-exact sequences) -> `ref` (reference log-probs for
the KL) -> `update` (the learner's inner steps) -> `sync` (weights to the workers, in buckets) ->
`eval` / `checkpoint` when due. Every phase is timed.

`dist.ref_placement=rollout`: the workers return the reference log-probs with their rollouts (the
`ref` phase only assembles them). `train.off_policy_steps=1`: once a step has its rollouts, the next
step's start on the weights the workers hold (Ray: futures; in process: at once) and run beside the
update; `next_rollout` collects them before `sync`. They are one update old when trained on
(`rl/policy_lag` 1, checked never above the setting), the PPO ratio against their sampled log-probs.
Checkpoints keep them (`pending_rollouts.pkl`), so a resume is exact.

The cluster is any `apr.cluster.Cluster`: `InProcessCluster` (`dist=none`) or `RayCluster`
(`dist=ray_local`, `ray_cluster`); the loop is the same code for both.

    >>> # trainer = RLTrainer(cfg, make_cluster(cfg)); summary = trainer.fit()   # apr.cluster.make_cluster
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from pathlib import Path

from apr.config import ConfigError, to_dict
from apr.model.integrity import check_checkpoint, files_fingerprint, weights_hash
from apr.rl.algos import CREDIT
from apr.rl.config import RLConfig
from apr.rl.rollout import (
    ProblemStream,
    Rollout,
    ref_logprobs_of,
    rollout_metrics,
    rollout_seed,
)
from apr.rl.sequences import advantage_params, sequences_from_trees
from apr.task import load_problems, problems_path
from apr.train import checkpoint as ckpt
from apr.train.budget import TimeBudget
from apr.train.metrics import MetricsLog, is_due, progress_bar, say, timer

PENDING_FILE = "pending_rollouts.pkl"  # in a checkpoint: train.off_policy_steps=1's rollouts of the next step


class RLError(RuntimeError):
    """The run stopped; the message says at which step and phase, and what was saved."""


def shards_of(problems: list, num_workers: int, seed: int, step: int) -> list[tuple]:
    """Contiguous slices of the batch, one per worker (fewer if there are fewer problems), with their seeds."""
    n = len(problems)
    k = min(num_workers, n)
    bounds = [round(i * n / k) for i in range(k + 1)]
    return [(problems[a:b], rollout_seed(seed, step, a), a) for a, b in zip(bounds, bounds[1:])]


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
        # train.off_policy_steps=1: (step, rollouts, generation wall s) generated ahead for that step
        self.pending: tuple[int, list[Rollout], float] | None = None

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
        with timer("rollout", row):  # in process, launching the next step's rollouts runs them (sequentially)
            rollouts, gen_s = self._take_rollouts()
            launched = self._launch_next()  # train.off_policy_steps=1: on Ray, they run beside the phases below
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
                ref = (ref_logprobs_of(rollouts, tuple(batch.ids.shape)) if cfg.dist.ref_placement == "rollout"
                       else self.cluster.ref_logprobs(batch))
        self.phase = "update"
        with timer("update", row):
            row.update(self.cluster.update(batch, ref))
        self.pending = None  # this step's rollouts are spent
        if launched is not None:
            self.phase = "next_rollout"
            with timer("rollout_wait", row):
                self.pending = (self.step + 1, self.cluster.collect_rollouts(launched[0]),
                                time.perf_counter() - launched[1])
        self.phase = "sync"
        with timer("sync", row):
            version = self.cluster.sync_weights()
        row.update(self._step_metrics(rollouts, gen_s, version, row))
        row["time/step_s"] = time.perf_counter() - t0
        return row

    def _shards(self, step: int) -> list[tuple]:
        problems = self.stream.batch(step * self.cfg.train.batch_problems, self.cfg.train.batch_problems)
        return shards_of(problems, self.cluster.num_workers, self.cfg.seed, step)

    def _take_rollouts(self) -> tuple[list[Rollout], float]:
        """This step's rollouts and the wall seconds they took: generated ahead during the previous step's
        update (train.off_policy_steps=1; seconds from their launch to their collection, the update's
        included), or now, on the weights the workers hold."""
        if self.pending is not None and self.pending[0] == self.step:
            return self.pending[1], self.pending[2]
        t = time.perf_counter()
        rollouts = self.cluster.rollout(self._shards(self.step), self.cfg.algo.group_size, step=self.step)
        return rollouts, time.perf_counter() - t

    def _launch_next(self) -> tuple | None:
        """train.off_policy_steps=1: start the next step's rollouts now, on the weights the workers hold
        (those this step's rollouts came from, or newer), to be collected after this step's update;
        (handle, start time), or None (on-policy, or no next step within train.steps)."""
        step = self.step + 1
        if self.cfg.train.off_policy_steps == 0 or step >= self.cfg.train.steps:
            return None
        t = time.perf_counter()
        return self.cluster.launch_rollout(self._shards(step), self.cfg.algo.group_size, step=step), t

    def _step_metrics(self, rollouts: list[Rollout], gen_s: float, version: int, row: dict) -> dict:
        """Rollout means, throughputs, and the policy lag: the learner's version before this update minus
        the oldest version the rollouts were sampled from (never above train.off_policy_steps)."""
        lag = version - 1 - min(r.policy_version for r in rollouts)
        if lag > self.cfg.train.off_policy_steps:
            raise RuntimeError(f"rollouts {lag} policy versions behind the learner; train.off_policy_steps="
                               f"{self.cfg.train.off_policy_steps} allows at most that many")
        out = rollout_metrics(rollouts, "rollout")
        gen = out["rollout/mean_generated_tokens"] * len(rollouts)
        out.update({"rollout/tokens_per_s": gen / max(gen_s, 1e-9),
                    "rl/train_tokens_per_s": row["rl/train_tokens"] / max(row["time/update_s"], 1e-9),
                    "rl/policy_version": version, "rl/policy_lag": lag,
                    "dist/worker_restarts": getattr(self.cluster, "restarts", 0)})
        return out

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
        state: dict = {}
        if resume_from is not None:
            ckpt.check_same_recipe(resume_from, self.recipe, cfg.resume_changed, _say)
            self.phase = "resume"
            self.cluster.load(resume_from)
            state = json.loads((resume_from / ckpt.STATE_FILE).read_text())
            self.step = state["step"]
            self._load_pending(resume_from)
            _say(f"resuming at step {self.step} from {resume_from}")
        if cfg.train.max_minutes:  # a resumed run continues its checkpoint's count of training time
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

        def write(tmp: Path) -> None:
            self.cluster.save(tmp)
            if self.pending is not None:  # off-policy: the next step's rollouts, generated from older weights
                with open(tmp / PENDING_FILE, "wb") as f:
                    pickle.dump(self.pending, f)

        return ckpt.save(path, write, state)

    def _load_pending(self, resume_from: Path) -> None:
        """train.off_policy_steps=1: the rollouts a checkpoint saved for its next step (the resumed run is the
        uninterrupted one). Without them (`final`) they are generated again from its weights: that step is
        on-policy (rl/policy_lag 0), and the run differs from an uninterrupted one from there."""
        path = resume_from / PENDING_FILE
        if self.cfg.train.off_policy_steps == 0 or self.step >= self.cfg.train.steps:
            return
        if not path.is_file():
            _say(f"{resume_from} holds no rollouts generated ahead for step {self.step + 1}: they are generated "
                 "again from its weights (that step on-policy, rl/policy_lag 0)")
            return
        with open(path, "rb") as f:
            self.pending = pickle.load(f)
        if self.pending[0] != self.step:
            raise ConfigError(f"resume: {path} holds rollouts for step {self.pending[0] + 1}, the checkpoint is "
                              f"at step {self.step}; accepted: a checkpoint this version of apr wrote")

    def _fail(self, e: BaseException) -> None:
        """Record why the run stopped; keep a checkpoint of the last finished step unless the learner broke."""
        saved = "nothing new (the newest checkpoint stands)"
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))  # Ctrl-C, or SIGTERM (see apr.cli.rl)
        # from the update on, the learner is a step ahead of self.step: saving would replace this step's good
        # checkpoint with one whose resume repeats the update
        if self.phase not in ("update", "next_rollout", "sync", "resume", "setup") and self.step > 0 and not stopped:
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
    check_local_gpus(cfg)


def check_local_gpus(cfg: RLConfig, available: int | None = None) -> None:
    """`dist=ray_local` asks Ray for the GPUs the config names: more than this machine has would wait for
    ever ("No available node types can fulfill {GPU: 1}"), so it is refused here, naming the fields."""
    d = cfg.dist
    wanted = {"dist.worker_gpus": d.worker_gpus * d.num_rollout_workers, "dist.learner_gpus": d.learner_gpus *
              d.num_learners, "dist.ref_gpus": d.ref_gpus}
    total = sum(wanted.values())
    if d.mode != "ray_local" or total == 0:
        return
    if available is None:
        import torch

        available = torch.cuda.device_count()
    if total > available + 1e-9:
        fields = ", ".join(f"{k}={v:g}" for k, v in wanted.items() if v)
        raise ConfigError(f"dist: the run asks a local Ray cluster for {total:g} GPUs ({fields}, counting every "
                          f"worker and learner) but this machine has {available}; accepted: at most {available} "
                          "GPUs in all (0 on a CPU-only machine: dist.worker_gpus=0 dist.learner_gpus=0 "
                          "dist.ref_gpus=0), or dist=ray_cluster on a cluster that has them")


def run_recipe(cfg: RLConfig) -> dict:
    """What defines a run: `resume=true` with any of it changed is refused unless `resume_changed=true`."""
    return {"data.dir contents": files_fingerprint([problems_path(cfg.data.dir, cfg.data.split)]),
            "data.split": cfg.data.split, "data.max_problems": cfg.data.max_problems,
            "init weights": weights_hash(cfg.init), "optim.lr": cfg.optim.lr, "optim.critic_lr": cfg.optim.critic_lr,
            "optim.warmup_steps": cfg.optim.warmup_steps, "train.steps": cfg.train.steps,
            "train.max_minutes": cfg.train.max_minutes,
            "train.batch_problems": cfg.train.batch_problems, "algo.group_size": cfg.algo.group_size,
            "train.off_policy_steps": cfg.train.off_policy_steps, "seed": cfg.seed,
            "algo.advantage": cfg.algo.advantage, "algo.credit": cfg.algo.credit, "loss.policy": cfg.loss.policy,
            "loss.kl_coef": cfg.loss.kl_coef, "loss.clip": cfg.loss.clip, "loss.entropy_coef": cfg.loss.entropy_coef,
            "rollout.runtime.temperature": cfg.rollout.runtime.temperature,
            "rollout.runtime.max_thread_tokens": cfg.rollout.runtime.max_thread_tokens}


def _say(msg: str) -> None:
    say("rl", msg)
