"""The training core that SFT and RL share, so each trainer keeps only what is its own (SFT: data and
packing; RL: rollouts, advantages, losses).

device       the device, whether bf16 is native there, autocast
strategy     torch (DDP or a summed all-reduce) / DeepSpeed ZeRO behind one interface
optim        AdamW (decay on matrices) and warmup + cosine over steps or wall-clock time
budget       `train.max_minutes`: the time budget the schedule and the loop follow
collectives  the process group's sums, maxima, gradient all-reduce, barrier
checkpoint   atomic checkpoints with one layout (HF + trainer/), resume, run-directory safety
metrics      timed phases, metrics.jsonl + wandb, progress bar, when an action is due
config       the config pieces both trainers use (wandb, checkpoint cadence)

    >>> # from apr.train.strategy import STRATEGIES; from apr.train.optim import build_optimizer
"""
