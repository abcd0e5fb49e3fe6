"""How the learner steps one model (the policy, or PPO's critic), registered by `train.strategy`:
`torch` (plain AdamW) or `deepspeed` (ZeRO stage `train.zero_stage` around the same client AdamW;
deepspeed is imported only when chosen).

The learner sees one small interface: `model` (what to run forward: the module, or DeepSpeed's
engine), `module` (the model itself), `zero_grad()`, `backward(loss, is_last)` per micro-batch,
`step() -> grad norm` once per inner step (after summing the gradients over the learners' process
group, `apr.rl.group`, when `dist.num_learners` > 1), `state_dict()` (full weights, for weight sync),
`hf_state_dict()` (what the HF export writes; None: the module's own), `save_state`/`load_state`.

Gradient accumulation is the same in both: each micro-batch's loss is already divided by the
whole batch's denominator, so gradients are summed (never divided by the number of micro-batches)
and the optimizer steps once per inner step, however many micro-batches the batch needed.

    >>> sorted(STRATEGIES)
    ['deepspeed', 'torch']
    >>> # policy = STRATEGIES[cfg.train.strategy](model, cfg, cfg.optim.lr, "policy", device)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from apr.rl import group
from apr.rl.config import RLConfig, RLOptimConfig

DEEPSPEED_DIR = "deepspeed"  # DeepSpeed's own checkpoint, beside the HF files of a learner checkpoint


def adamw(params, optim: RLOptimConfig, lr: float):
    """AdamW with a linear warmup to `lr` over `optim.warmup_steps` (then constant)."""
    opt = torch.optim.AdamW(list(params), lr=lr, betas=tuple(optim.betas), eps=optim.eps,
                            weight_decay=optim.weight_decay)
    warm = max(optim.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched


class TorchTrainable:
    """A model, its AdamW and schedule; autograd accumulates gradients; state goes into learner.pt."""

    saves_weights = False  # the learner restores the weights (from the HF files) itself
    needs_matched_micro_batches = False  # backward() runs no collective: ranks may differ in micro-batches

    def __init__(self, model, cfg: RLConfig, lr: float, name: str, device: torch.device) -> None:
        self.model = self.module = model
        self.name = name
        self.grad_clip = cfg.optim.grad_clip
        self.opt, self.sched = adamw(model.parameters(), cfg.optim, lr)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        loss.backward()

    def step(self) -> float:
        if group.world_size() > 1:  # each rank's losses carry the global denominator: the sum is the batch's
            group.all_reduce_grads([p for p in self.module.parameters() if p.requires_grad])
        params = [p for p in self.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        if not torch.isfinite(norm):  # never applied: the learner counts it (same norm on every rank)
            self.opt.zero_grad(set_to_none=True)
            return float(norm)
        self.opt.step()
        self.sched.step()
        return float(norm)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def hf_state_dict(self) -> dict | None:
        return None

    def save_state(self, path: Path) -> dict:
        """Entries for learner.pt."""
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state(self, path: Path, state: dict, weights: dict | None) -> None:
        if weights is not None:
            self.module.load_state_dict(weights)
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])


class DeepSpeedTrainable:
    """DeepSpeed ZeRO (`train.zero_stage`) around our AdamW (DeepSpeed's own optimizers JIT-compile C++
    for ~80 s). bf16 weights on CUDA when `train.precision=bf16` (fp32 master weights in the
    optimizer); on CPU fp32 weights under our autocast, the `cpu` accelerator and gloo. One learner is
    a world of one (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT are set to it); several join the
    group `apr.rl.group.join` made, and DeepSpeed averages their gradients (see `backward`)."""

    saves_weights = True  # DeepSpeed's checkpoint holds the module (and, under ZeRO-3, its shards)
    # ZeRO-2/3 reduce gradients inside every backward: all ranks must run as many micro-batches
    needs_matched_micro_batches = True

    def __init__(self, model, cfg: RLConfig, lr: float, name: str, device: torch.device) -> None:
        from apr.sft.strategy import init_deepspeed

        init_deepspeed(device.type, "nccl" if device.type == "cuda" else "gloo", single_process=True)
        import deepspeed

        self.name = name
        self.stage = cfg.train.zero_stage
        self.is_bf16 = cfg.train.precision == "bf16" and device.type == "cuda"
        opt, sched = adamw(model.parameters(), cfg.optim, lr)
        world = self.world = int(os.environ["WORLD_SIZE"])
        config = {
            # one accumulation step as far as DeepSpeed knows: `backward` marks the real boundary
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "train_batch_size": world,
            "gradient_clipping": cfg.optim.grad_clip,
            "zero_optimization": {"stage": self.stage},
            "bf16": {"enabled": self.is_bf16},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.model, self.opt, _, self.sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                                   config=config)
        self.module = self.model.module

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def zero_grad(self) -> None:
        pass  # DeepSpeed clears the gradients in step()

    def backward(self, loss: torch.Tensor, is_last: bool) -> None:
        # Gradients of every micro-batch accumulate; only the last one is the boundary at which
        # ZeRO reduces them and step() updates. The loss already carries the batch's denominator.
        # Over several learners DeepSpeed averages the gradients; the losses carry the global denominator,
        # so scaling by the world size turns that mean into the batch's sum.
        self.model.set_gradient_accumulation_boundary(is_last)
        self.model.backward(loss * self.world if self.world > 1 else loss, scale_wrt_gas=False)

    def step(self) -> float:
        # ZeRO 1-3 (and bf16) record the norm they clip with; plain stage 0 leaves it to us
        before = _grad_norm(self.module) if self.stage == 0 else float("nan")
        if self.stage == 0 and not math.isfinite(before):  # never applied: the learner counts it
            self.module.zero_grad(set_to_none=True)
            return before
        self.model.step()
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else before

    def state_dict(self) -> dict:
        """Full weights (gathered from the shards under ZeRO-3: a collective)."""
        if self.stage == 3:
            return self.model._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    def hf_state_dict(self) -> dict | None:
        if self.stage < 3 and not self.is_bf16:
            return None
        return {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict().items()}

    def save_state(self, path: Path) -> dict:
        self.model.save_checkpoint(str(Path(path) / DEEPSPEED_DIR), tag=self.name, save_latest=False)
        return {}

    def load_state(self, path: Path, state: dict, weights: dict | None) -> None:
        loaded, _ = self.model.load_checkpoint(str(Path(path) / DEEPSPEED_DIR), tag=self.name)
        if loaded is None:
            raise RuntimeError(f"deepspeed found no {self.name!r} state in {Path(path) / DEEPSPEED_DIR}")


def _grad_norm(module) -> float:
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


STRATEGIES = {"torch": TorchTrainable, "deepspeed": DeepSpeedTrainable}
