"""AdamW over decayed / non-decayed parameter groups, and linear warmup + cosine decay, over steps or,
under `train.max_minutes`, over wall-clock time (`apr.train.budget`). SFT and RL (policy and critic)
build their optimizers here; RL's default `optim.min_lr_ratio=1.0` makes its schedule a warmup then constant.

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, min_ratio=0.1), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.868, 0.55, 0.232, 0.1]
    >>> [lr_factor(s, warmup_steps=2, total_steps=None, min_ratio=0.1) for s in range(4)]  # no length: constant
    [0.5, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import functools
import math

from apr.train.budget import TimeBudget


def lr_factor(step: int, warmup_steps: int, total_steps: int | None, min_ratio: float,
              budget: TimeBudget | None = None, schedule: str = "cosine", cooldown: float = 0.4) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based). With a `budget`
    the decay follows its clock over the whole budget, capped by the warmup (`apr.train.budget`),
    and `total_steps` is not used; with neither, the rate stays at its peak after the warmup.
    `schedule`: `cosine` from the peak to `min_ratio` after the warmup, or `wsd` (warmup, stable,
    decay): the peak until the last `cooldown` fraction of the run, then linear down to `min_ratio`.

        >>> [round(lr_factor(s, 2, 12, 0.0, schedule="wsd", cooldown=0.5), 3) for s in range(0, 13, 2)]
        [0.5, 1.0, 1.0, 1.0, 0.667, 0.333, 0.0]
    """
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0  # the first step already moves
    decay = _wsd if schedule == "wsd" else _cosine
    if budget is not None:
        return min(warm, decay(budget.fraction, min_ratio, cooldown))
    if step < warmup_steps or total_steps is None:
        return warm
    if schedule == "wsd":  # the cooldown is a fraction of the whole run, the warmup included
        return _wsd(min(step / max(total_steps, 1), 1.0), min_ratio, cooldown)
    decay_steps = max(total_steps - warmup_steps, 1)
    return _cosine(min((step - warmup_steps) / decay_steps, 1.0), min_ratio)


def _cosine(progress: float, min_ratio: float, cooldown: float = 0.0) -> float:
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _wsd(progress: float, min_ratio: float, cooldown: float) -> float:
    left = (1 - progress) / cooldown if cooldown > 0 else float(progress < 1)  # 1 until the cooldown, then to 0
    return min_ratio + (1 - min_ratio) * min(max(left, 0.0), 1.0)


def build_optimizer(model, optim, lr: float | None = None):
    """The optimizer `optim.name` names (`adamw` if the config has none), with `optim.lr` (`lr` overrides,
    e.g. the critic's), `weight_decay`, `betas`, `eps`:
    - `adamw`: `torch.optim.AdamW`; matrices (dim >= 2) get weight decay, norms and biases do not;
    - `muon`: `muon_adamw()`: Muon on the hidden matrices of the blocks, AdamW on embeddings, the output
      head, norms and biases (the nanoGPT speedrun's split), one learning rate for both."""
    import torch

    name = getattr(optim, "name", "adamw")
    lr = optim.lr if lr is None else lr
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    if name == "adamw":
        groups = [{"params": decay, "weight_decay": optim.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), eps=optim.eps)
    heads = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    is_hidden = [p.dim() == 2 and id(p) not in heads for p in decay]  # embeddings and heads stay on AdamW
    embed_lr = lr * getattr(optim, "embed_lr_scale", 1.0)
    groups = [{"params": [p for p, h in zip(decay, is_hidden) if h], "use_muon": True,
               "weight_decay": optim.weight_decay},
              {"params": [p for p, h in zip(decay, is_hidden) if not h], "use_muon": False,
               "weight_decay": optim.weight_decay, "lr": embed_lr},
              {"params": no_decay, "use_muon": False, "weight_decay": 0.0}]
    return muon_adamw()([g for g in groups if g["params"]], lr=lr, betas=tuple(optim.betas), eps=optim.eps,
                        momentum=getattr(optim, "muon_momentum", 0.95))


def orthogonalize(grad, steps: int = 5, eps: float = 1e-7):
    """The Newton-Schulz iteration of Muon (Keller Jordan's quintic coefficients): a matrix close to
    U V^T of `grad`'s SVD, in fp32.

        >>> import torch
        >>> s = torch.linalg.svdvals(orthogonalize(torch.randn(64, 32)))
        >>> bool(((s > 0.6) & (s < 1.2)).all())
        True
    """
    return orthogonalize_batch(grad[None], steps, eps)[0]


def orthogonalize_batch(grads, steps: int = 5, eps: float = 1e-7):
    """`orthogonalize` of each matrix of a (k, m, n) stack at once (one batched product per iteration: the
    optimizer step of a small model is otherwise mostly Python overhead, one matrix at a time)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = grads.float()  # (k, m, n)
    wide = x.size(1) <= x.size(2)
    x = x if wide else x.transpose(1, 2)  # (k, rows, cols), rows <= cols
    x = x / (x.flatten(1).norm(dim=1)[:, None, None] + eps)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)  # (k, rows, rows)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.transpose(1, 2)


@functools.cache
def muon_adamw():
    """The `MuonAdamW` class (built on first use: importing this module does not import torch)."""
    import torch

    class MuonAdamW(torch.optim.Optimizer):
        """Muon (momentum, Nesterov, orthogonalised update scaled to AdamW's RMS: 0.2 * sqrt(max(m, n)),
        as Moonshot's "Muon is Scalable", so one `lr` serves both) for groups with `use_muon`; AdamW
        for the others. Decoupled weight decay on both."""

        def __init__(self, groups, lr: float, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95):
            defaults = {"lr": lr, "betas": betas, "eps": eps, "momentum": momentum, "weight_decay": 0.0,
                        "use_muon": False}
            super().__init__(groups, defaults)

        @torch.no_grad()
        def step(self, closure=None):
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if group["use_muon"]:
                    self._muon(params, group)
                else:
                    for p in params:
                        self._adamw(p, group)
            return loss

        def _muon(self, params, group) -> None:
            by_shape: dict = {}  # matrices of one shape are orthogonalised together
            for p in params:
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                by_shape.setdefault(tuple(p.shape), []).append((p, p.grad.lerp(buf, group["momentum"])))  # Nesterov
            for shape, items in by_shape.items():
                updates = orthogonalize_batch(torch.stack([u for _, u in items]))  # (k, m, n)
                scale = 0.2 * max(shape) ** 0.5
                for (p, _), update in zip(items, updates):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)

        def _adamw(self, p, group) -> None:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            state["step"] += 1
            t = float(state["step"])
            (b1, b2), m, v = group["betas"], state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(m, denom, value=-group["lr"] / (1 - b1 ** t))

    return MuonAdamW


def build_scheduler(optimizer, optim, total_steps: int | None, budget: TimeBudget | None = None,
                    optimizer_steps_per_step: int = 1):
    """`LambdaLR` applying `lr_factor` with `optim.warmup_steps`, `optim.min_lr_ratio` and (where the config
    has them) `optim.schedule` and `optim.cooldown_fraction`; step it once per optimizer step (after
    `budget.sync`). `total_steps` and the warmup count steps of the caller's loop, each of which takes
    `optimizer_steps_per_step` optimizer steps (RL: `train.inner_steps`), all at the same rate."""
    import torch

    warmup = optim.warmup_steps if total_steps is None else min(optim.warmup_steps, total_steps)
    schedule, cooldown = getattr(optim, "schedule", "cosine"), getattr(optim, "cooldown_fraction", 0.4)
    per = optimizer_steps_per_step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s // per, warmup, total_steps, optim.min_lr_ratio, budget, schedule, cooldown))
