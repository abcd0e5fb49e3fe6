"""Typed RL configuration (`conf/rl.yaml`, presets in `conf/rl/`, placement in `conf/dist/`).

    >>> from apr.config import from_dict
    >>> cfg = from_dict(RLConfig, {"init": "runs/sft/n3_tiny_apr/final", "train": {"steps": 3}}, "")
    >>> cfg.algo.advantage, cfg.algo.group_size, cfg.dist.mode
    ('grpo', 5, 'ray_local')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from apr.config import ConfigError, check
from apr.engine.config import EngineConfig, engine_config, engine_name, with_window
from apr.rl.algos import ADVANTAGES, AGGREGATIONS, CREDIT, POLICY_LOSSES
from apr.runtime import RuntimeConfig
from apr.train.config import CheckpointConfig, WandbConfig


@dataclass
class RLDataConfig:
    """Problems to train on, in a seeded order that resumes exactly."""

    dir: str = "data/countdown_n3"  # written by `python -m apr.cli.data` (<dir>/<split>/problems.jsonl)
    split: str = "train"
    max_problems: int | None = None  # first N problems of the split (None: all)
    condition: str | None = None  # first prompt line for conditioned models (e.g. "threads 6")

    def __post_init__(self) -> None:
        check(self.split in ("train", "val", "test"), "data.split", self.split, "train, val or test")
        check(self.max_problems is None or self.max_problems >= 1, "data.max_problems", self.max_problems,
              "null or a positive integer")


@dataclass
class AlgoConfig:
    """How rollouts become per-token advantages."""

    advantage: str = "grpo"  # grpo | rloo (group baselines) | gae (PPO: critic + GAE)
    credit: str = "root"  # root: every thread gets the tree's advantage; child_outcome: see algos.py
    group_size: int = 5  # G rollouts per problem
    norm_std: bool = True  # grpo: divide by the group's reward std
    eps: float = 1e-6  # grpo: added to the std
    gamma: float = 1.0  # gae
    lam: float = 0.95  # gae
    format_bonus: float = 0.0  # reward for a well-formed but wrong answer line (0: pure outcome)
    reward: str = "countdown"  # a name in apr.rl.rollout.REWARDS, or "package.module:function"
    # a root that did not end with <eos> (cut by the window, the budget or a timeout; malformed) scores
    # 0 and counts as wrong; false pays whatever answer line it wrote before it was cut
    require_eos: bool = True


    def __post_init__(self) -> None:
        check(self.advantage in ADVANTAGES, "algo.advantage", self.advantage, ", ".join(ADVANTAGES))
        check(self.credit in CREDIT, "algo.credit", self.credit, ", ".join(CREDIT))
        check(self.norm_std or "norm_std" in ADVANTAGES[self.advantage].params, "algo.norm_std", self.norm_std,
              f"true with algo.advantage={self.advantage} (only grpo divides by the group's std; rloo's leave-one-out "
              "baseline and gae's critic do not)")
        check(self.group_size >= 1, "algo.group_size", self.group_size, "a positive integer")
        check(not ADVANTAGES[self.advantage].needs_groups or self.group_size >= 2, "algo.group_size", self.group_size,
              f">= 2 for {self.advantage} (a group baseline needs two samples)")
        from apr.rl.rollout import resolve_reward

        resolve_reward(self.reward)
        check(not CREDIT[self.credit].needs_outcomes or self.reward == "countdown", "algo.credit", self.credit,
              "root with a reward of your own (child_outcome checks children's Countdown paths: reward=countdown)")
        check(0 <= self.lam <= 1 and 0 <= self.gamma <= 1, "algo.lam/gamma", (self.lam, self.gamma),
              "numbers in [0, 1]")


@dataclass
class LossConfig:
    """The policy loss (and the critic's, for PPO)."""

    policy: str = "ppo_clip"
    clip: float = 0.2
    clip_ratio_c: float | None = 3.0  # dual clip (verl): loss <= -A * this where A < 0; None: off
    kl_coef: float = 0.001  # k3 KL to the reference policy (0: no reference model at all)
    entropy_coef: float = 0.0
    aggregation: str = "token_mean"  # or seq_mean_per_rollout (the paper's 1/threads weighting)
    value_coef: float = 0.5  # PPO: weight of the critic's loss
    value_clip: float = 0.2  # PPO: clip of the value change (0: off)
    # train.old_logprobs=recompute: weight the policy loss by pi_learner / pi_sampler of each sampled token
    # (token), or of the whole thread (sequence), truncated at rollout_is_cap (TRL / verl); off: no correction
    rollout_is: Literal["off", "token", "sequence"] = "off"
    rollout_is_cap: float = 2.0

    def __post_init__(self) -> None:
        check(self.policy in POLICY_LOSSES, "loss.policy", self.policy, ", ".join(POLICY_LOSSES))
        check(self.aggregation in AGGREGATIONS, "loss.aggregation", self.aggregation, ", ".join(AGGREGATIONS))
        check(self.clip > 0, "loss.clip", self.clip, "a positive number")
        check(self.rollout_is in ("off", "token", "sequence"), "loss.rollout_is", self.rollout_is,
              "off, token or sequence")
        check(self.rollout_is_cap >= 1, "loss.rollout_is_cap", self.rollout_is_cap, "a number >= 1")
        check(self.clip_ratio_c is None or self.clip_ratio_c > 1 + self.clip, "loss.clip_ratio_c",
              self.clip_ratio_c, f"null (off) or a number > 1 + loss.clip ({1 + self.clip:g})")
        check(self.kl_coef >= 0, "loss.kl_coef", self.kl_coef, ">= 0")
        check(self.entropy_coef >= 0, "loss.entropy_coef", self.entropy_coef, ">= 0")
        check(self.value_coef >= 0 and self.value_clip >= 0, "loss.value_coef/value_clip",
              (self.value_coef, self.value_clip), "numbers >= 0")


@dataclass
class RLOptimConfig:
    """AdamW for the policy (and the critic), built by `apr.train.optim` as SFT's is; by default a
    constant learning rate after warmup (`min_lr_ratio` < 1: cosine decay to it over `train.steps`).
    Warmup and decay count RL steps; the `train.inner_steps` optimizer steps of one RL step share its rate."""

    lr: float = 1e-5
    critic_lr: float = 1e-5
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0: off

    def __post_init__(self) -> None:
        check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", self.lr, "a positive finite number")
        check(self.critic_lr > 0 and math.isfinite(self.critic_lr), "optim.critic_lr", self.critic_lr,
              "a positive finite number")
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1]")
        check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0 (0 = off)")


@dataclass
class RLTrainConfig:
    """Steps, batch and the learner's placement and precision."""

    steps: int = 150
    # minutes of training (apr.train.budget): the run ends, finished (final eval and checkpoint), after the
    # step that crosses it, or at `steps`, whichever comes first; resumed runs continue the count. None: off
    max_minutes: float | None = None
    batch_problems: int = 64  # problems per step (x group_size rollouts)
    inner_steps: int = 2  # optimizer steps over each batch of rollouts
    micro_batch_tokens: int = 16384  # packed-row tokens per forward/backward (gradients accumulate)
    old_logprobs: Literal["rollout", "recompute"] = "rollout"  # PPO ratio denominator
    # 0: on-policy (each step samples from the weights its update starts from); 1: the next step's rollouts
    # are generated while this step's update runs, from weights one update older (rl/policy_lag <= 1); the
    # PPO ratio is then against the behaviour policy's sampled log-probs (needs old_logprobs=rollout)
    off_policy_steps: int = 0
    strategy: Literal["torch", "deepspeed"] = "torch"
    zero_stage: int = 2  # deepspeed
    # auto: bf16 autocast where the device has native bf16 (CUDA, or a CPU with AMX / AVX512-BF16), else fp32
    # (apr.train.device.resolve_precision; the learner and every reference decide for their own device)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # torch intra-op threads of the learner (0: torch's default)
    max_nonfinite_steps: int = 3  # optimizer steps in a row skipped for a non-finite gradient that stop the run (0: never)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "train.steps", self.steps, "a positive integer")
        check(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes", self.max_minutes,
              "null or a positive number of minutes")
        check(self.batch_problems >= 1, "train.batch_problems", self.batch_problems, "a positive integer")
        check(self.inner_steps >= 1, "train.inner_steps", self.inner_steps, "a positive integer")
        check(self.micro_batch_tokens >= 16, "train.micro_batch_tokens", self.micro_batch_tokens, "an integer >= 16")
        check(self.zero_stage in (0, 1, 2, 3), "train.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        check(self.device in ("auto", "cpu", "cuda"), "train.device", self.device, "auto, cpu or cuda")
        check(self.off_policy_steps in (0, 1), "train.off_policy_steps", self.off_policy_steps,
              "0 (on-policy) or 1 (the next step's rollouts overlap this step's update)")
        check(self.off_policy_steps == 0 or self.old_logprobs == "rollout", "train.old_logprobs", self.old_logprobs,
              "rollout with train.off_policy_steps=1 (the PPO ratio must be against the behaviour policy's "
              "sampled log-probs; recompute would score them with the learner's newer weights)")
        check(self.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", self.max_nonfinite_steps,
              "an integer >= 0 (0: never stop)")


@dataclass
class RolloutConfig:
    """Sampling and limits of training rollouts (the engine that runs them is `RLConfig.engine`)."""

    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(temperature=1.0))
    eval_every_steps: int = 0  # greedy accuracy on held-out problems every N steps (0: at start and end only)
    eval_problems: int = 100  # first N problems of eval_split
    eval_split: str = "val"

    def __post_init__(self) -> None:
        # the learner scores tokens under logits / temperature; a truncated (top-k / top-p) distribution
        # would make every PPO ratio off-policy with no correction, so RL refuses it
        rt = self.runtime
        check(rt.top_p == 1.0, "rollout.runtime.top_p", rt.top_p,
              "1.0 (RL trains on the log-probs of the distribution sampled from; top-p is not supported)")
        check(rt.top_k == -1, "rollout.runtime.top_k", rt.top_k,
              "-1 (RL trains on the log-probs of the distribution sampled from; top-k is not supported)")
        check(self.eval_every_steps >= 0, "rollout.eval_every_steps", self.eval_every_steps, ">= 0")
        check(self.eval_problems >= 0, "rollout.eval_problems", self.eval_problems, ">= 0 (0: off)")


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class PlacementConfig:
    """An optional Ray placement group: every actor's resources reserved up front, all or nothing.

    Bundle 0 holds the learner (and the reference, which shares it); bundle 1+i rollout worker i;
    with `dist.num_learners` > 1, learner r > 0 gets bundle `num_rollout_workers + r` (after the workers),
    each sized by the `dist.*_cpus` / `*_gpus` fields, so the workers' GPUs and the learner's are
    disjoint. A replaced worker restarts in its own bundle."""

    strategy: str | None = None  # None: no group (Ray places each actor where it fits); see PLACEMENT_STRATEGIES
    timeout_s: float = 600.0  # wait this long for the cluster to grant the group, then fail with an error

    def __post_init__(self) -> None:
        check(self.strategy is None or self.strategy in PLACEMENT_STRATEGIES, "dist.placement.strategy",
              self.strategy, "null, " + ", ".join(PLACEMENT_STRATEGIES))
        check(self.timeout_s > 0, "dist.placement.timeout_s", self.timeout_s, "a positive number of seconds")


@dataclass
class DistConfig:
    """Where the pieces run: one process, a local Ray cluster, or an existing one."""

    mode: Literal["none", "ray_local", "ray_cluster"] = "ray_local"
    num_rollout_workers: int = 2
    address: str = "auto"  # ray_cluster: the cluster to join
    worker_cpus: float = 1.0  # Ray logical CPUs per rollout worker
    worker_gpus: float = 0.0
    worker_threads: int = 1  # torch threads per rollout worker
    num_learners: int = 1  # data-parallel learner processes (one torch.distributed world; Ray only)
    learner_cpus: float = 1.0  # per learner
    learner_gpus: float = 0.0  # per learner
    ref_cpus: float = 0.0
    ref_gpus: float = 0.0  # >0: the reference runs on CUDA (e.g. 0.5 + learner_gpus 0.5: one GPU shared)
    # where the frozen reference (for the KL) scores tokens: learner (one model beside the learner, the whole
    # batch between rollout and update) or rollout (a copy in every rollout worker, scoring its own rollouts
    # right after generating them: in parallel, off the learner's critical path; on the worker's local engine's
    # device, CPU beside an SGLang engine). Default learner: one model copy, and SGLang workers hold no model
    ref_placement: Literal["learner", "rollout"] = "learner"
    bucket_mb: float = 32.0  # weight sync: parameters per object-store bucket
    max_worker_restarts: int = 3  # per step: a dead rollout worker is replaced and its share re-run
    call_timeout_s: float = 3600.0  # any remote call longer than this fails the run (never hangs)
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        check(self.num_rollout_workers >= 1, "dist.num_rollout_workers", self.num_rollout_workers,
              "a positive integer")
        check(self.num_learners >= 1, "dist.num_learners", self.num_learners, "a positive integer")
        check(self.mode != "none" or self.num_learners == 1, "dist.num_learners", self.num_learners,
              "1 with dist.mode=none (several learners are Ray actors)")
        check(self.bucket_mb > 0, "dist.bucket_mb", self.bucket_mb, "a positive number of MB")
        check(self.max_worker_restarts >= 0, "dist.max_worker_restarts", self.max_worker_restarts, ">= 0")
        check(self.call_timeout_s > 0, "dist.call_timeout_s", self.call_timeout_s, "a positive number of seconds")
        if self.placement.strategy is not None:  # a bundle must reserve something
            check(self.learner_cpus + self.learner_gpus + self.ref_cpus + self.ref_gpus > 0, "dist.learner_cpus/learner_gpus",
                  (self.learner_cpus, self.learner_gpus), "some CPU or GPU when dist.placement.strategy is set")
            check(self.num_learners == 1 or self.learner_cpus + self.learner_gpus > 0, "dist.learner_cpus/learner_gpus",
                  (self.learner_cpus, self.learner_gpus), "some CPU or GPU per learner when dist.num_learners > 1 "
                  "and dist.placement.strategy is set (each further learner has its own bundle)")
            check(self.worker_cpus + self.worker_gpus > 0, "dist.worker_cpus/worker_gpus",
                  (self.worker_cpus, self.worker_gpus), "some CPU or GPU when dist.placement.strategy is set")


@dataclass
class RLConfig:
    init: str = ""  # the SFT checkpoint to start from (HF directory with the tokenizer)
    name: str = "rl"
    run_dir: str = "runs/rl/rl"
    seed: int = 0
    resume: bool = False
    resume_changed: bool = False  # resume even though data, init, lr, steps or seed changed (else refused)
    overwrite: bool = False
    data: RLDataConfig = field(default_factory=RLDataConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    train: RLTrainConfig = field(default_factory=RLTrainConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # the rollout engine (the `engine` group: conf/engine/): LocalEngineConfig | SGLangEngineConfig
    engine: EngineConfig = field(default_factory=lambda: engine_config({"max_seq_len": None}))
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every_steps=50))
    log_every_steps: int = 1
    progress: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        if not self.init or self.init == "???":  # "???": Hydra's mark of a value the command line must give
            raise ConfigError("init: not given; accepted: the directory of an SFT checkpoint, e.g. "
                              "init=runs/sft/n3_tiny_apr/final")
        self.engine = with_window(engine_config(self.engine), self.rollout.runtime.max_thread_tokens)
        check(self.loss.rollout_is == "off" or self.train.old_logprobs == "recompute", "loss.rollout_is",
              self.loss.rollout_is, "off with train.old_logprobs=rollout (the ratio's denominator is then the "
              "sampler's own log-prob: nothing to correct); token or sequence with train.old_logprobs=recompute")
        if engine_name(self.engine) == "sglang":
            urls = self.engine.urls
            check(len(urls) >= self.dist.num_rollout_workers, "engine.urls", urls,
                  f"at least one server URL per rollout worker (dist.num_rollout_workers="
                  f"{self.dist.num_rollout_workers}): each worker drives, and updates the weights of, its own servers")

    @property
    def logprob_temperature(self) -> float:
        """The temperature of the distribution rollouts sample from, which every log-prob is of
        (greedy rollouts, temperature 0, score the raw distribution)."""
        return self.rollout.runtime.temperature or 1.0

    @property
    def uses_critic(self) -> bool:
        return ADVANTAGES[self.algo.advantage].uses_critic

    @property
    def uses_ref(self) -> bool:
        return self.loss.kl_coef > 0
