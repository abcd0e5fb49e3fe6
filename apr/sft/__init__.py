"""Supervised training from scratch on solver threads (SoS+ or APR traces): what is SFT's own.

One training sequence per thread, loss only on generated tokens, sequences packed into fixed-length
rows with block-diagonal attention. The strategy, optimizer, checkpoints and metrics are `apr.train`'s.
Entry point: `python -m apr.cli.sft`.

config    typed `sft.yaml` (model, data, optim, train, eval, checkpoint, log)
data      traces -> `Sequences` (one per thread, views of the token cache), fitted to the window
packing   sequences -> packed rows, a resumable loader over them
validate  the validation loss
trainer   the loop (data -> forward_backward -> optimizer; eval and checkpoints when due)

    >>> # from apr.sft import SFTConfig, Trainer
    >>> # summary = Trainer(cfg, tokenizer, evaluate=None).fit()
"""

from apr.sft.config import LogConfig, OptimConfig, SFTConfig, SFTDataConfig, TrainConfig, ValidationConfig
from apr.sft.trainer import EvalHook, TrainData, Trainer, prepare_data
from apr.train.config import CheckpointConfig, WandbConfig

__all__ = ["CheckpointConfig", "ValidationConfig", "EvalHook", "LogConfig", "OptimConfig", "SFTConfig", "SFTDataConfig",
           "TrainConfig", "TrainData", "Trainer", "WandbConfig", "prepare_data"]
