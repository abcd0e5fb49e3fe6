"""AdamW over decayed / non-decayed parameter groups, and linear warmup + cosine decay, over steps or,
under `train.max_minutes`, over wall-clock time (`apr.train.budget`). SFT and RL (policy and critic)
build their optimizers here; RL's default `optim.min_lr_ratio=1.0` makes its schedule a warmup then constant.

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, min_ratio=0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
    >>> [lr_factor(s, warmup_steps=2, total_steps=None, min_ratio=0.1) for s in range(4)]  # no length: constant
    [0.5, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import math

from apr.train.budget import TimeBudget


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float,
              budget: TimeBudget | None = None) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based). With a `budget`
    the cosine follows its clock over the whole budget, capped by the warmup (`apr.train.budget`),
    and `total_steps` is not used; with neither, the rate stays at its peak after the warmup."""
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0  # the first step already moves
    if budget is not None:
        return min(warm, _cosine(budget.fraction, min_ratio))
    if step < warmup_steps or total_steps is None:
        return warm
    decay_steps = max(total_steps - warmup_steps, 1)
    return _cosine(min((step - warmup_steps) / decay_steps, 1.0), min_ratio)


def _cosine(progress: float, min_ratio: float) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model, optim, lr: float | None = None):
    """`torch.optim.AdamW` from `optim` (`lr`, `weight_decay`, `betas`, `eps`; `lr` overrides, e.g. the
    critic's); matrices (dim >= 2) get weight decay, norms and biases do not."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr if lr is None else lr, betas=tuple(optim.betas), eps=optim.eps)


def build_scheduler(optimizer, optim, total_steps: int | None, budget: TimeBudget | None = None):
    """`LambdaLR` applying `lr_factor` with `optim.warmup_steps` and `optim.min_lr_ratio`; step it once per
    optimizer step (after `budget.sync`)."""
    import torch

    warmup = optim.warmup_steps if total_steps is None else min(optim.warmup_steps, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, optim.min_lr_ratio, budget))
