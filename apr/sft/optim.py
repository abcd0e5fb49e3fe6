"""AdamW over decayed / non-decayed parameter groups, and linear warmup + cosine decay, over steps
or, under `train.max_minutes`, over wall-clock time (`apr.sft.budget`).

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, min_ratio=0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
"""

from __future__ import annotations

import math

from apr.sft.budget import TimeBudget
from apr.sft.config import OptimConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float,
              budget: TimeBudget | None = None) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based). With a `budget`
    the cosine follows its clock over the whole budget, capped by the warmup (`apr.sft.budget`),
    and `total_steps` is not used."""
    if budget is not None:
        warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
        return min(warm, _cosine(budget.fraction, min_ratio))
    if step < warmup_steps:  # the first step already moves: (step + 1) / warmup
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    return _cosine(min((step - warmup_steps) / decay_steps, 1.0), min_ratio)


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model, cfg: OptimConfig):
    """`torch.optim.AdamW`; matrices (dim >= 2) get weight decay, norms and biases do not."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def build_scheduler(optimizer, cfg: OptimConfig, total_steps: int | None, budget: TimeBudget | None = None):
    """`LambdaLR` applying `lr_factor`; step it once per optimizer step (after `budget.sync`)."""
    import torch

    warmup = cfg.warmup_steps if total_steps is None else min(cfg.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.min_lr_ratio, budget))
