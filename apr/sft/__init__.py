"""Supervised training from scratch on solver threads (SoS+ or APR traces).

One training sequence per thread, loss only on generated tokens, sequences packed into
fixed-length rows with block-diagonal attention; AdamW + warmup/cosine; torch (DDP) or DeepSpeed
ZeRO strategies; atomic HF-format checkpoints with exact resume. Entry point: `python -m apr.cli.sft`.

    >>> # from apr.sft import SFTConfig, Trainer
    >>> # summary = Trainer(cfg, tokenizer, evaluate=None).fit()
"""

from apr.sft.config import LogConfig, OptimConfig, SFTConfig, SFTDataConfig, TrainConfig, ValidationConfig
from apr.sft.trainer import EvalHook, TrainData, Trainer, prepare_data
from apr.train.config import CheckpointConfig, WandbConfig

__all__ = ["CheckpointConfig", "ValidationConfig", "EvalHook", "LogConfig", "OptimConfig", "SFTConfig", "SFTDataConfig",
           "TrainConfig", "TrainData", "Trainer", "WandbConfig", "prepare_data"]
