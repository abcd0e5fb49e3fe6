"""The training core that SFT and RL share: device and precision, the torch / DDP / DeepSpeed strategy,
AdamW and its schedule, collectives, atomic checkpoints, metrics and progress, the time budget.

`sft/` and `rl/` keep only what is theirs (data and packing; rollouts, advantages, losses).

    >>> # from apr.train.strategy import STRATEGIES; from apr.train.optim import build_optimizer
"""
