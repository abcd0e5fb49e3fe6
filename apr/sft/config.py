"""Typed SFT configuration (`conf/sft.yaml`), validated field by field; errors name the field.

    >>> from apr.config import from_dict
    >>> cfg = from_dict(SFTConfig, {"model": {"name": "tiny"}, "data": {"dir": "data/countdown_n3"},
    ...                             "train": {"max_steps": 10}}, "")
    >>> cfg.train.precision, cfg.data.solver, cfg.model.hidden_size
    ('auto', 'sosp', 128)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from apr.config import check
from apr.model import ModelConfig
from apr.train.config import CheckpointConfig, WandbConfig


@dataclass
class SFTDataConfig:
    """Which traces to train on and how they become packed rows."""

    dir: str = "data/countdown_n3"  # a data directory written by `python -m apr.cli.data`
    solver: Literal["sosp", "apr"] = "sosp"  # which <split>/<solver>.jsonl to read
    max_seq_len: int = 1024  # packed row length = the longest thread trained on
    overlong: Literal["drop", "truncate", "error"] = "drop"  # threads longer than max_seq_len
    max_dropped_frac: float = 0.5  # fail before training if more threads than this are too long
    solved_only: bool = False  # keep only traces whose search found the answer
    # arithmetic drills (apr.sft.drills): the traces' own `a op b = c` facts as extra sequences trained on
    # the results, their tokens this fraction of the training traces' tokens (0: none)
    drills: float = 0.0
    max_train_records: int | None = None  # first N training traces (None: all)
    max_val_records: int | None = 200  # first N validation traces for the validation loss
    # read threads from the token cache beside the traces (apr.datagen.token_cache; built on first use)
    token_cache: bool = True
    num_workers: int = 0  # processes that render a trace file into the cache (0: every CPU)

    def __post_init__(self) -> None:
        check(self.max_seq_len >= 8, "data.max_seq_len", self.max_seq_len, "an integer >= 8")
        check(self.num_workers >= 0, "data.num_workers", self.num_workers, "an integer >= 0 (0: every CPU)")
        check(0.0 <= self.drills <= 1.0, "data.drills", self.drills, "a fraction in [0, 1] (0: no drills)")
        check(0.0 <= self.max_dropped_frac <= 1.0, "data.max_dropped_frac", self.max_dropped_frac,
              "a fraction in [0, 1]")
        for name in ("max_train_records", "max_val_records"):
            v = getattr(self, name)
            check(v is None or v >= 1, f"data.{name}", v, "null or a positive integer")


@dataclass
class OptimConfig:
    """AdamW (or Muon on the hidden matrices) with linear warmup then cosine decay to `min_lr_ratio * lr`
    (or, `schedule: wsd`, the peak rate until the last `cooldown_fraction` of the run, then linear decay)."""

    name: Literal["adamw", "muon"] = "adamw"  # muon: apr.train.optim.muon_adamw
    muon_momentum: float = 0.95
    embed_lr_scale: float = 1.0  # muon: the embeddings' and output head's (AdamW) rate is lr x this
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, stable, linear decay (cooldown_fraction)
    cooldown_fraction: float = 0.4  # wsd: the last fraction of the run (steps or time budget) that decays
    weight_decay: float = 0.1  # on matrices (dim >= 2) only; norms are not decayed
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping

    def __post_init__(self) -> None:
        check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", self.lr, "a positive finite number")
        check(self.embed_lr_scale > 0 and math.isfinite(self.embed_lr_scale), "optim.embed_lr_scale",
              self.embed_lr_scale, "a positive finite number")
        check(0 <= self.muon_momentum < 1, "optim.muon_momentum", self.muon_momentum, "a number in [0, 1)")
        check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "a fraction in [0, 1]")
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        check(self.schedule in ("cosine", "wsd"), "optim.schedule", self.schedule, "cosine or wsd")
        check(0 < self.cooldown_fraction <= 1, "optim.cooldown_fraction", self.cooldown_fraction,
              "a fraction in (0, 1]")
        check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a number >= 0")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", list(self.betas), "two numbers in [0, 1)")
        check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")


@dataclass
class TrainConfig:
    """Batch shape, length of training, strategy and precision."""

    strategy: Literal["torch", "deepspeed"] = "torch"
    zero_stage: int = 2  # deepspeed only: ZeRO stage 0-3
    # bf16 = autocast over fp32 master weights; auto = bf16 where the device has it natively, else fp32
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_rows: int = 8  # packed rows per micro-batch per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int | None = None  # optimizer steps; None: num_epochs over the training rows
    num_epochs: int = 1
    # minutes of training (apr.train.budget): the schedule follows the clock and the run ends, finished,
    # at the deadline; max_steps (if set) still caps the steps, num_epochs is not used. None: by steps
    max_minutes: float | None = None
    # training tokens (non-padding, all processes): the steps that hold about this many (epoch 0's mean
    # tokens per step); the same amount of learning on any machine. max_steps (if set) still caps the steps
    max_tokens: float | None = None
    num_threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    # torch.compile the training forward (strategy torch): ~1.3x for the tiny model on this CPU after
    # ~40 s of compiling; falls back to eager, with a warning, where compiling fails (no C++ compiler).
    # Fused bf16 kernels round differently: a run is not digit-identical to eager (docs/RESULTS.md)
    compile: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.compile, bool), "train.compile", self.compile, "true or false")
        check(0 <= self.zero_stage <= 3, "train.zero_stage", self.zero_stage, "0, 1, 2 or 3")
        check(self.batch_rows >= 1, "train.batch_rows", self.batch_rows, "a positive integer")
        check(self.grad_accum_steps >= 1, "train.grad_accum_steps", self.grad_accum_steps, "a positive integer")
        check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", self.max_steps,
              "null or a positive integer")
        check(self.num_epochs >= 1, "train.num_epochs", self.num_epochs, "a positive integer")
        check(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes", self.max_minutes,
              "null or a positive number of minutes")
        check(self.max_tokens is None or self.max_tokens > 0, "train.max_tokens", self.max_tokens,
              "null or a positive number of tokens")
        check(self.num_threads >= 0, "train.num_threads", self.num_threads, "an integer >= 0")


@dataclass
class ValidationConfig:
    """Validation loss every `every_steps`; the CLI's solve-rate hook reads the rest (and its engine, the
    `engine` group, which the CLI parses: this layer sits above the engines)."""

    every_steps: int = 200  # 0: only at the end
    num_problems: int = 50  # validation problems solved greedily by the solve-rate hook (0: off)
    condition: str | None = None  # first prompt line for conditioned models, e.g. "threads 6"
    limits: dict = field(default_factory=dict)  # runtime limits passed to Reasoner.solve_batch

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "eval.every_steps", self.every_steps, "an integer >= 0")
        check(self.num_problems >= 0, "eval.num_problems", self.num_problems, "an integer >= 0")


@dataclass
class LogConfig:
    every_steps: int = 10  # metrics.jsonl / wandb cadence
    progress: bool = True  # tqdm bar with loss, tokens/s, ETA

    def __post_init__(self) -> None:
        check(self.every_steps >= 1, "log.every_steps", self.every_steps, "a positive integer")


@dataclass
class SFTConfig:
    """Everything one supervised run needs; the run directory receives its resolved copy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    name: str = "sft"
    run_dir: str = "runs/sft/sft"
    seed: int = 0
    resume: bool = False  # continue from the newest checkpoint in run_dir (exactly)
    resume_changed: bool = False  # resume even though data, solver, lr, steps or seed changed (else refused)
    overwrite: bool = False  # a fresh run in a run_dir that holds one (its files move to <run_dir>/replaced/)

    def __post_init__(self) -> None:
        check(self.data.max_seq_len <= self.model.max_position_embeddings, "data.max_seq_len",
              self.data.max_seq_len, f"at most model.max_position_embeddings ({self.model.max_position_embeddings})")
        check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name without '/'")
        check(self.seed >= 0, "seed", self.seed, "a non-negative integer")
        # DeepSpeed's ZeRO and bf16 optimizers hand the client optimizer flat 1-D shards: Muon needs whole matrices
        check(not (self.optim.name == "muon" and self.train.strategy == "deepspeed"), "optim.name", self.optim.name,
              "adamw with train.strategy=deepspeed (it flattens the parameters Muon orthogonalises); muon with "
              "train.strategy=torch (one process or DDP)")
