"""The supervised trainer: packed thread sequences, one loop that reads top to bottom.

    >>> # from apr.sft import SFTConfig, Trainer
    >>> # summary = Trainer(cfg, tokenizer).fit()   # -> {"step": ..., "losses": [...], "val/loss": ...}

Each optimizer step: `data` (this process's micro-batches), `forward_backward` (loss only on
generated tokens, normalised by the step's target count over all processes and micro-batches),
`optimizer` (clip, AdamW, schedule); then, when due, `eval` (validation loss and the optional
`evaluate(model, tokenizer, step) -> dict` hook, main process only) and `checkpoint`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apr.config import ConfigError, to_dict
from apr.model import build_for_tokenizer, count_parameters, load_checkpoint
from apr.model.integrity import files_fingerprint
from apr.sft.config import SFTConfig
from apr.sft.data import FitReport, Sequences, TrainSequence, fit_to_window, load_split
from apr.sft.drills import with_drills
from apr.sft.packing import PackedBatch, PackedLoader, eval_batches
from apr.sft.validate import loss_sums
from apr.train import checkpoint as ckpt
from apr.train.budget import TimeBudget
from apr.train.device import resolve_precision, select_device
from apr.train.metrics import MetricsLog, is_due, progress_bar, say, timer
from apr.train.optim import build_optimizer, build_scheduler
from apr.train.strategy import STRATEGIES, launch_rank

EvalHook = Callable[[object, object, int], dict]
SHOWN = ("val/loss", "eval/accuracy", "time/eval_hook_s")  # printed; everything goes to metrics.jsonl


@dataclass
class TrainData:
    train: Sequences | list[TrainSequence]
    val: Sequences | list[TrainSequence]
    reports: dict[str, FitReport]

    def __post_init__(self) -> None:
        self.train, self.val = Sequences.of(self.train), Sequences.of(self.val)


def prepare_data(cfg: SFTConfig, tokenizer) -> TrainData:
    """Train and validation sequences fitted to `data.max_seq_len` (fails before any training)."""
    train, train_report = fit_to_window(load_split(cfg.data, "train", tokenizer, cfg.data.max_train_records),
                                        cfg.data, "train")
    train, drills = with_drills(train, tokenizer, cfg.data.drills, cfg.seed)
    train_report.drills = drills
    val_path = Path(cfg.data.dir) / "val" / f"{cfg.data.solver}.jsonl"
    val, reports = Sequences.of([]), {"train": train_report}
    if val_path.is_file() and val_path.stat().st_size > 0:
        val, reports["val"] = fit_to_window(load_split(cfg.data, "val", tokenizer, cfg.data.max_val_records),
                                            cfg.data, "val")
    return TrainData(train, val, reports)


class Trainer:
    """Supervised training of a Llama model on solver threads (see the module docstring)."""

    def __init__(self, cfg: SFTConfig, tokenizer, evaluate: EvalHook | None = None,
                 data: TrainData | None = None, clock: Callable[[], float] | None = None) -> None:
        self.cfg, self.tokenizer, self.evaluate_hook = cfg, tokenizer, evaluate
        self.data = data
        self.clock = clock  # of the time budget (train.max_minutes); None: time.monotonic
        self.budget: TimeBudget | None = None
        self.run_dir = Path(cfg.run_dir)
        self.step = 0  # optimizer steps done
        self.position = (0, 0)  # data position of the next step: (epoch, step in epoch)
        self.tokens_seen, self.train_s = 0, 0.0  # training tokens (all processes) and seconds so far
        self.times: dict = {}

    # ---- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to `total_steps` or the time budget; returns the final metrics and this run's losses."""
        with timer("setup", self.times):
            self.setup()
        losses, last_eval = [], {}
        batches = self.loader.iterate(*self.position)
        bar = progress_bar(self.total_steps, self.step, self.cfg.log.progress and self.strategy.is_main, "sft")
        if self.budget is not None:
            self.budget.start()
        while not self.is_done():
            times: dict = {}
            t0 = time.perf_counter()
            with timer("data", times):
                epoch, step_in_epoch, micro = next(batches)
            with timer("forward_backward", times):
                loss, num_tokens = self.forward_backward(micro)
            if self.budget is not None:  # before the scheduler reads it; the same on every rank
                self.budget.sync(self.strategy)
            with timer("optimizer", times):
                grad_norm = self.strategy.step()
            self.step, self.position = self.step + 1, (epoch, step_in_epoch + 1)
            losses.append(loss)
            step_s = time.perf_counter() - t0  # tokens/s counts training work only
            self.tokens_seen, self.train_s = self.tokens_seen + num_tokens, self.train_s + step_s
            if is_due(self.step, self.cfg.eval.every_steps):
                with timer("eval", times):
                    last_eval = self.run_eval()
            if is_due(self.step, self.cfg.checkpoint.every_steps) and not self.is_done():
                with timer("checkpoint", times):
                    self.save(self.run_dir / "checkpoints" / f"step_{self.step:08d}")
            self.record_step(loss, grad_norm, num_tokens, step_s, times, epoch, bar)
        bar.close()
        return self.finish(losses, last_eval)

    def finish(self, losses: list[float], last_eval: dict) -> dict:
        if not last_eval or last_eval.get("step") != self.step:
            last_eval = self.run_eval()
        final = self.save(self.run_dir / "final")
        self.log.close()
        summary = {**last_eval, "step": self.step, "losses": losses, "final": str(final)}
        self.say(f"done: step {self.step}, " + ", ".join(f"{k} {last_eval[k]:.4f}" for k in SHOWN if k in last_eval)
                 + f"; checkpoint {final}")
        self.strategy.close()
        return summary

    # ---- phases -------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        ckpt.refuse_to_clobber(self.run_dir, cfg.resume, cfg.overwrite)
        self.strategy = make_strategy(cfg)
        if cfg.overwrite and not cfg.resume and self.strategy.is_main:
            ckpt.set_aside_earlier_run(self.run_dir, self.say)
        _seed_everything(cfg.seed, cfg.train.num_threads)
        self.data = self.data or prepare_data(cfg, self.tokenizer)
        pad = self.tokenizer.pad_token_id
        s = self.strategy
        self.loader = PackedLoader(self.data.train, cfg.data.max_seq_len, pad, cfg.train.batch_rows,
                                   cfg.train.grad_accum_steps, cfg.seed, s.rank, s.world_size)
        self.val_batches = eval_batches(self.data.val, cfg.data.max_seq_len, pad, cfg.train.batch_rows,
                                        s.rank, s.world_size)
        self.total_steps = total_steps(cfg.train, self.loader)
        self.recipe = run_recipe(cfg, self.total_steps)
        resume_from = ckpt.latest(self.run_dir, self.say, s.is_main) if cfg.resume else None
        if cfg.resume and resume_from is None:
            self.say(f"resume=true but no checkpoint in {self.run_dir}: starting from step 0")
        model = self.load_or_build_model(resume_from)
        self.budget = self.make_budget(resume_from)
        model = model.to(s.device)
        optimizer = build_optimizer(model, cfg.optim)
        s.setup(model, optimizer, build_scheduler(optimizer, cfg.optim, self.total_steps, self.budget))
        if resume_from is not None:
            state = ckpt.load(resume_from, s)
            self.step, self.position = state["step"], tuple(state["position"])
            self.tokens_seen, self.train_s = state.get("tokens_seen", 0), state.get("train_s", 0.0)
        self.write_run_files(model, resume_from)
        self.log = MetricsLog(self.run_dir, cfg.wandb, cfg.name, to_dict(cfg), s.is_main,
                              resume_step=self.step if resume_from is not None else None)

    def make_budget(self, resume_from: Path | None) -> TimeBudget | None:
        """`train.max_minutes`; a resumed run continues its checkpoint's count of training time."""
        if not self.cfg.train.max_minutes:
            return None
        state = json.loads((resume_from / ckpt.STATE_FILE).read_text()).get("budget", {}) if resume_from else {}
        return TimeBudget.resumed(self.cfg.train.max_minutes, state, self.clock)

    def is_done(self) -> bool:
        """`total_steps` reached, or the time budget spent (both, when both are set: whichever first)."""
        by_steps = self.total_steps is not None and self.step >= self.total_steps
        return by_steps or (self.budget is not None and self.budget.is_over)

    def load_or_build_model(self, resume_from: Path | None):
        cfg = self.cfg
        if resume_from is None:
            return build_for_tokenizer(cfg.model, self.tokenizer, seed=cfg.seed).train()
        saved = json.loads((resume_from / ckpt.STATE_FILE).read_text()).get("model")
        if saved is not None and saved != to_dict(cfg.model):
            raise ConfigError(f"model: got {to_dict(cfg.model)}; accepted: the model of the checkpoint being "
                              f"resumed ({resume_from}): {saved}")
        ckpt.check_same_recipe(resume_from, self.recipe, cfg.resume_changed, self.say)
        model, _ = load_checkpoint(resume_from, cfg.model.attn_implementation)
        return model.train()

    def forward_backward(self, micro) -> tuple[float, int]:
        """Gradients of one step; returns (mean token loss, non-padding tokens) over all processes."""
        s = self.strategy
        (num_targets,) = s.all_reduce_sum([sum(b.num_targets for b in micro)])
        loss = 0.0
        for j, batch in enumerate(micro):
            out = s.forward_backward(lambda model, b=batch: self.batch_loss(model, b, int(num_targets)),
                                     is_last=j == len(micro) - 1)
            loss = loss + out.detach()
        total_loss, num_tokens = s.all_reduce_sum([float(loss), sum(b.num_tokens for b in micro)])
        return total_loss, int(num_tokens)

    def batch_loss(self, model, batch: PackedBatch, num_targets: int):
        """Summed token loss of `batch` divided by the step's `num_targets` over all processes."""
        import torch

        batch = batch.to(self.strategy.device)
        with self.strategy.autocast():
            out = model(**batch.inputs_for(model), num_items_in_batch=torch.tensor(max(num_targets, 1)))
        return out.loss

    def run_eval(self) -> dict:
        """Validation loss over all processes; then the evaluate hook on the main process."""
        # what time-to-accuracy is read against (benchmarks/bench_learn.py): tokens and seconds of training
        s, metrics = self.strategy, {"step": self.step, "train/tokens_seen": self.tokens_seen,
                                     "train/seconds": self.train_s}
        if self.val_batches:
            model = s.model if s.name == "deepspeed" else s.module  # ZeRO-3 forwards are collective
            total, count = s.all_reduce_sum(list(loss_sums(model, self.val_batches, s.device,
                                                           s.precision)))
            metrics["val/loss"] = total / max(count, 1)
        if self.evaluate_hook is not None and s.is_main:
            metrics.update(self.run_hook())
        s.barrier()
        self.log.log({k: v for k, v in metrics.items() if k != "step"}, self.step)
        self.say(f"step {self.step}: " + ", ".join(f"{k} {metrics[k]:.4f}" for k in SHOWN if k in metrics))
        return metrics

    def run_hook(self) -> dict:
        """The evaluate hook on the full model in eval mode, without gradients (main process)."""
        import torch

        if self.cfg.train.strategy == "deepspeed" and self.cfg.train.zero_stage == 3:
            self.say("evaluate hook skipped: parameters are partitioned under ZeRO-3")
            return {}
        t = time.perf_counter()
        model = self.strategy.module
        model.eval()
        with torch.no_grad():
            out = self.evaluate_hook(model, self.tokenizer, self.step)
        model.train()
        return {**{f"eval/{k}": v for k, v in out.items()}, "time/eval_hook_s": time.perf_counter() - t}

    def save(self, path: Path) -> Path:
        state = {"step": self.step, "position": list(self.position), "total_steps": self.total_steps,
                 "model": to_dict(self.cfg.model), "seed": self.cfg.seed, "recipe": self.recipe,
                 "tokens_seen": self.tokens_seen, "train_s": self.train_s}
        if self.budget is not None:
            state["budget"] = self.budget.state()
        s = self.strategy
        out = ckpt.save(path, lambda d: ckpt.save_model(d, s, self.tokenizer), state, s.is_main, s.barrier)
        if self.strategy.is_main:
            ckpt.prune(self.run_dir, self.cfg.checkpoint.keep_last)
        return out

    # ---- bookkeeping --------------------------------------------------------------------------------
    def record_step(self, loss, grad_norm, num_tokens, step_s, times, epoch, bar) -> None:
        tokens_per_s = num_tokens / max(step_s, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        bar.update(1)
        if self.step % self.cfg.log.every_steps == 0 or self.is_done():
            slots = self.cfg.train.batch_rows * self.cfg.train.grad_accum_steps * self.strategy.world_size
            self.log.log({"train/loss": loss, "train/lr": self.strategy.lr, "train/grad_norm": grad_norm,
                          "train/tokens": num_tokens, "train/tokens_per_s": tokens_per_s,
                          "train/packing": num_tokens / (slots * self.cfg.data.max_seq_len),
                          "train/epoch": epoch, "time/step_s": step_s, **times}, self.step)

    def write_run_files(self, model, resume_from: Path | None) -> None:
        if not self.strategy.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(to_dict(self.cfg), indent=2))
        params = count_parameters(model)
        info = {"parameters": params, "total_steps": self.total_steps, "resumed_from": str(resume_from or ""),
                "world_size": self.strategy.world_size, "strategy": self.strategy.name,
                "precision": self.strategy.precision,
                "data": {k: r.to_dict() for k, r in self.data.reports.items()},
                "packing_efficiency_epoch0": _epoch_packing(self.loader, self.cfg.data.max_seq_len),
                "num_train_sequences": len(self.data.train), "num_val_sequences": len(self.data.val)}
        (self.run_dir / "run_info.json").write_text(json.dumps(info, indent=2))
        rep = self.data.reports["train"]
        self.say(f"model {self.cfg.model.name}: {params['non_embedding']:,} non-embedding parameters; "
                 f"{len(self.data.train):,} train threads ({rep.num_dropped} dropped, {rep.num_truncated} truncated "
                 f"as longer than data.max_seq_len={self.cfg.data.max_seq_len}); "
                 + (f"{self.cfg.train.max_minutes} minutes of training" if self.budget else f"{self.total_steps} steps")
                 + (f"; resuming at step {self.step} from {resume_from}" if resume_from else ""))

    def say(self, msg: str) -> None:
        if self.strategy.is_main:
            say("sft", msg)


def make_strategy(cfg: SFTConfig):
    """`train.strategy` on this process's device (torchrun's LOCAL_RANK), in `train.precision`."""
    t = cfg.train
    device = select_device(t.device, launch_rank()[2])
    return STRATEGIES[t.strategy](device, resolve_precision(t.precision, device, "sft"), zero_stage=t.zero_stage,
                                  compile=t.compile, reduce="ddp", grad_clip=cfg.optim.grad_clip)


def total_steps(t, loader: PackedLoader) -> int | None:
    """Optimizer steps of the run: `max_steps`; or those holding `max_tokens` (epoch 0's mean tokens per
    step; capped by `max_steps`); None under a time budget alone; else `num_epochs` epochs."""
    if t.max_tokens:
        per_step = int(loader.seqs.lengths.sum()) / loader.steps_in_epoch(0)
        by_tokens = max(1, math.ceil(t.max_tokens / per_step))
        return min(by_tokens, t.max_steps) if t.max_steps else by_tokens
    return t.max_steps or (None if t.max_minutes else t.num_epochs * loader.steps_in_epoch(0))


def run_recipe(cfg: SFTConfig, total_steps: int | None) -> dict:
    """What defines a run: `resume=true` with any of it changed is refused unless `resume_changed=true`."""
    d = Path(cfg.data.dir)
    files = [d / split / f"{cfg.data.solver}.jsonl" for split in ("train", "val")]
    tokenizer = d / "tokenizer" / "tokenizer.json"
    return {"data.dir contents": files_fingerprint(files),
            "data.dir tokenizer": files_fingerprint([tokenizer]) if tokenizer.is_file() else None,
            "data.solver": cfg.data.solver, "data.drills": cfg.data.drills, "optim.name": cfg.optim.name,
            "optim.embed_lr_scale": cfg.optim.embed_lr_scale, "optim.weight_decay": cfg.optim.weight_decay,
            "optim.schedule": cfg.optim.schedule, "train.max_tokens": cfg.train.max_tokens,
            "data.max_seq_len": cfg.data.max_seq_len, "data.solved_only": cfg.data.solved_only,
            "data.max_train_records": cfg.data.max_train_records, "optim.lr": cfg.optim.lr,
            "optim.min_lr_ratio": cfg.optim.min_lr_ratio, "optim.warmup_steps": cfg.optim.warmup_steps,
            "steps (train.max_steps, num_epochs)": total_steps, "train.max_minutes": cfg.train.max_minutes,
            "train.batch_rows": cfg.train.batch_rows,
            "train.grad_accum_steps": cfg.train.grad_accum_steps, "seed": cfg.seed}


def _epoch_packing(loader: PackedLoader, row_len: int) -> float:
    rows = loader.epoch_rows(0)
    return int(loader.seqs.lengths.sum()) / (len(rows) * row_len)  # every sequence is in a row


def _seed_everything(seed: int, num_threads: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if num_threads > 0:
        torch.set_num_threads(num_threads)


__all__ = ["EvalHook", "TrainData", "Trainer", "prepare_data", "run_recipe"]
