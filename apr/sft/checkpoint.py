"""Atomic checkpoints: HF model + tokenizer + trainer state, newest-K retention, exact resume.

Layout of one checkpoint (`<run_dir>/checkpoints/step_00000500/`, or `<run_dir>/final/`):

    config.json, model.safetensors, generation_config.json, tokenizer*.json   # plain HF
    trainer_state.json   # step, data position (epoch, step in epoch), metrics
    trainer/             # optimizer + scheduler (or DeepSpeed's shards), rng_rank<r>.pt per process

It is written into `.tmp-<name>` beside its final name and renamed when complete, so a crash
never leaves a half-written checkpoint under a name that `latest` would pick.

    >>> # path = save(run_dir / "checkpoints" / "step_00000500", strategy, tokenizer, state)
    >>> # state = load(latest(run_dir), strategy)   # after strategy.setup
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np

from apr.config import ConfigError
from apr.model import save_checkpoint

STATE_FILE = "trainer_state.json"


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, strategy, tokenizer, state: dict) -> Path:
    """Write a complete checkpoint at `path` (collective: every process calls it)."""
    import torch

    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "trainer").mkdir(parents=True)
    strategy.barrier()
    full = strategy.export_state_dict()  # collective under ZeRO-3
    if strategy.is_main:
        save_checkpoint(strategy.module, tokenizer, tmp, state_dict=full)
    strategy.save_state(tmp / "trainer")
    torch.save(rng_state(), tmp / "trainer" / f"rng_rank{strategy.rank}.pt")
    strategy.barrier()
    if strategy.is_main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if path.exists():  # the same step written again (e.g. a rerun): replace it whole
            shutil.rmtree(path)
        os.replace(tmp, path)
    strategy.barrier()
    return path


def load(path: Path, strategy) -> dict:
    """Restore optimizer/scheduler and this process's RNG from `path`; returns the trainer state.

    The model weights come from the same directory, loaded before `strategy.setup`."""
    import torch

    path = Path(path)
    strategy.load_state(path / "trainer")
    rng_file = path / "trainer" / f"rng_rank{strategy.rank}.pt"
    set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / STATE_FILE).read_text())


def periodic(run_dir: Path) -> list[Path]:
    """Complete periodic checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def latest(run_dir: Path) -> Path | None:
    """The checkpoint to resume from: the newest of the periodic ones and `final`."""
    candidates = periodic(run_dir)
    final = Path(run_dir) / "final"
    if (final / STATE_FILE).is_file():
        candidates.append(final)
    if not candidates:
        return None
    return max(candidates, key=lambda p: json.loads((p / STATE_FILE).read_text())["step"])


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` periodic checkpoints (and stale temp dirs)."""
    for old in periodic(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in (Path(run_dir) / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_to_clobber(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run must not silently replace the metrics and checkpoints of an earlier one."""
    if resume or overwrite:
        return
    metrics = run_dir / "metrics.jsonl"
    held = [p.name for p in (run_dir / "checkpoints", run_dir / "final") if p.exists() and any(p.iterdir())]
    if metrics.exists() and metrics.stat().st_size > 0:
        held.append(metrics.name)
    if held:
        raise ConfigError(f"run_dir: {str(run_dir)!r} already holds a run ({', '.join(held)}); accepted: resume=true "
                          "to continue it, another name=..., or overwrite=true to replace it")
