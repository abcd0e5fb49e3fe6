"""A small SFTConfig for tests: tiny model, one thread, no wandb, no progress bar."""

from __future__ import annotations

from apr.config import from_dict
from apr.sft import SFTConfig


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def small_cfg(data_dir, run_dir, **over) -> SFTConfig:
    base = {
        "model": {"name": "tiny"},
        "data": {"dir": str(data_dir), "max_seq_len": 512},
        "optim": {"warmup_steps": 2},
        "train": {"batch_rows": 2, "max_steps": 3, "num_threads": 1},
        "eval": {"every_steps": 0, "num_problems": 0},
        "checkpoint": {"every_steps": 0},
        "log": {"every_steps": 1, "progress": False},
        "wandb": {"mode": "disabled"},
        "run_dir": str(run_dir),
    }
    return from_dict(SFTConfig, merge(base, over), "")
