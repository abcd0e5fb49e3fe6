"""Atomic checkpoints with one layout for SFT and RL: HF model + tokenizer + trainer state; newest-K
retention, exact resume, run-directory safety (refuse to clobber, set aside, same recipe).

Layout of one checkpoint (`<run_dir>/checkpoints/step_00000500/`, or `<run_dir>/final/`):

    config.json, model.safetensors, generation_config.json, tokenizer*.json   # plain HF
    trainer_state.json   # step, data position, time budget, the run's recipe
    trainer/             # per strategy <name>_optim.pt (or DeepSpeed's deepspeed/<name>/),
                         # rng_rank<r>.pt per process, and what a trainer adds (RL: learner.pt)

It is written into `.tmp-<name>` beside its final name and renamed when complete, so a crash
never leaves a half-written checkpoint under a name that `latest` would pick.

    >>> # save(run_dir / "checkpoints" / "step_00000500", lambda d: save_model(d, strategy, tok), state)
    >>> # state = load(latest(run_dir), strategy)   # after strategy.setup
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from apr.config import ConfigError
from apr.model import save_checkpoint
from apr.model.integrity import find_damage, write_manifest

STATE_FILE = "trainer_state.json"
TRAINER_DIR = "trainer"


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


class NonFiniteWeights(FloatingPointError):
    """The weights to be saved hold NaN or inf: nothing was written (see `save`)."""


def save(path: Path, write: Callable[[Path], None], state: dict, is_main: bool = True,
         barrier: Callable[[], None] = lambda: None) -> Path:
    """Write a complete checkpoint at `path`: `write(tmp)` fills the staging directory (every process
    calls this when several do: pass `is_main` and the group's `barrier`), then `state` goes to
    trainer_state.json and the directory is sealed and renamed. Weights holding NaN or inf are never
    saved: `NonFiniteWeights` names the tensor, the step and the last good checkpoint."""
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / TRAINER_DIR).mkdir(parents=True)
    barrier()
    try:
        write(tmp)
    except NonFiniteWeights as e:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        run_dir = path.parent if path.name == "final" else path.parent.parent
        good = candidates(run_dir)
        raise NonFiniteWeights(
            f"{e} at step {state.get('step', '?')}: {path} was not written; the last good checkpoint is "
            + (str(good[0]) if good else "none (none was written before)")
            + " (lower optim.lr or check the data, then resume=true from it)") from None
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        publish(tmp, path)
    barrier()
    return path


def save_model(path: Path, strategy, tokenizer) -> None:
    """The HF model and tokenizer (main process) and this process's part of `trainer/`: the strategy's
    state and RNG. Collective under ZeRO-3 (the full weights are gathered)."""
    import torch

    from apr.train import collectives

    full = strategy.hf_state_dict()
    weights = full if full is not None else dict(strategy.module.named_parameters())
    bad = next((k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if collectives.all_reduce_max(int(bad is not None)):  # every process refuses together
        raise NonFiniteWeights(f"the weights hold NaN or inf ({bad or 'on another process'})")
    trainer = Path(path) / TRAINER_DIR
    trainer.mkdir(parents=True, exist_ok=True)
    if strategy.is_main:
        save_checkpoint(strategy.module, tokenizer, path, state_dict=full)
    strategy.save_state(trainer)
    torch.save(rng_state(), trainer / f"rng_rank{strategy.rank}.pt")


def load_model_state(path: Path, strategy, rank: int) -> None:
    """Restore the strategy's state (optimizer, scheduler; DeepSpeed: also the weights) and this
    process's RNG (rank 0's where the checkpoint has none for `rank`) from `path/trainer/`."""
    import torch

    trainer = Path(path) / TRAINER_DIR
    if not trainer.is_dir():
        raise ConfigError(f"resume: {str(path)!r} has no {TRAINER_DIR}/ (a checkpoint of an older layout, or only "
                          "HF weights); accepted: a checkpoint written by this version, or overwrite=true / "
                          "init=<that directory> to start a new run from its weights")
    strategy.load_state(trainer)
    rng = trainer / f"rng_rank{rank}.pt"
    set_rng_state(torch.load(rng if rng.is_file() else trainer / "rng_rank0.pt", weights_only=False))


def publish(tmp: Path, path: Path) -> None:
    """Seal a complete checkpoint written in `tmp` (manifest of sizes and hashes) and rename it to `path`."""
    write_manifest(tmp)
    if path.exists():  # the same step written again (e.g. a rerun): replace it whole
        shutil.rmtree(path)
    os.replace(tmp, path)


def load(path: Path, strategy) -> dict:
    """Restore the strategy and this process's RNG from `path`; returns the trainer state.

    The model weights come from the same directory, loaded before `strategy.setup`."""
    load_model_state(path, strategy, strategy.rank)
    return json.loads((Path(path) / STATE_FILE).read_text())


def periodic(run_dir: Path) -> list[Path]:
    """Complete periodic checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


def _step(path: Path) -> int:
    try:
        return int(json.loads((path / STATE_FILE).read_text())["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return int(path.name.split("_")[1]) if path.name.startswith("step_") else -1


def candidates(run_dir: Path) -> list[Path]:
    """Complete checkpoints (periodic and `final`), newest first."""
    found = periodic(run_dir)
    final = Path(run_dir) / "final"
    if (final / STATE_FILE).is_file():
        found.append(final)
    return sorted(found, key=_step, reverse=True)


def latest(run_dir: Path, say=print, move_aside: bool = True) -> Path | None:
    """The checkpoint to resume from: the newest intact one of the periodic ones and `final`.

    Each candidate's files are verified against the sizes and hashes written at save time; a damaged
    one is moved aside to `<run_dir>/damaged/` (never deleted; by the main process only: `move_aside`)
    and the next older one is tried."""
    found = candidates(run_dir)
    damaged = []
    for path in found:
        problem = find_damage(path, verify_hashes=True)
        if problem is None:
            if damaged:
                say(f"resuming from {path}, the newest intact checkpoint")
            return path
        damaged.append(f"{path.name} ({problem})")
        if move_aside:
            aside = _move_aside(path, Path(run_dir) / "damaged")
            say(f"checkpoint {path} is damaged: {problem}; moved it to {aside} and trying the next older one")
    if damaged:
        raise ConfigError(f"resume: every checkpoint in {str(run_dir)!r} is damaged: {'; '.join(damaged)} (moved "
                          f"to {Path(run_dir) / 'damaged'}); accepted: overwrite=true to start afresh")
    return None


def _move_aside(path: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    dest, i = root / path.name, 1
    while dest.exists():
        dest, i = root / f"{path.name}.{i}", i + 1
    os.replace(path, dest)
    return dest


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` periodic checkpoints (and stale temp dirs)."""
    for old in periodic(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in (Path(run_dir) / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# what a run writes into its run_dir (besides Hydra's .hydra/, which the new run has already replaced)
RUN_FILES = ("checkpoints", "final", "damaged", "metrics.jsonl", "summary.json", "error.json", "run_info.json",
             "config.json", "wandb_id.txt", "wandb")


def set_aside_earlier_run(run_dir: Path, say=print) -> Path | None:
    """`overwrite=true`: move everything an earlier run wrote into `<run_dir>/replaced/<UTC time>/`.

    Nothing trained is deleted (delete that folder to free the space), and nothing of the earlier
    run (e.g. a newer-numbered checkpoint) can be mistaken for the new run's on a later resume."""
    import time

    run_dir = Path(run_dir)
    found = [run_dir / n for n in RUN_FILES if (run_dir / n).exists()]
    if not found:
        return None
    dest = run_dir / "replaced" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while dest.exists():
        dest = dest.with_name(dest.name + "_")
    dest.mkdir(parents=True)
    for p in found:
        os.replace(p, dest / p.name)
    say(f"overwrite=true: moved the earlier run's {', '.join(p.name for p in found)} to {dest} "
        "(delete it to free the space)")
    return dest


def check_same_recipe(resume_from: Path, recipe: dict, allow_changes: bool, say=print) -> None:
    """Resuming continues the same run: refuse (naming what changed) if the settings that define it differ
    from those saved with the checkpoint (`state["recipe"]`), unless `allow_changes` (resume_changed=true)."""
    saved = json.loads((Path(resume_from) / STATE_FILE).read_text()).get("recipe")
    if saved is None:  # a checkpoint from before recipes were saved
        return
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in recipe.items() if k in saved and saved[k] != v]
    if not changed:
        return
    if allow_changes:
        say(f"resume_changed=true: continuing {resume_from} although {'; '.join(changed)}")
        return
    raise ConfigError(f"resume: the checkpoint {str(resume_from)!r} was made with other settings: {'; '.join(changed)}; "
                      "accepted: the checkpoint's settings, resume_changed=true to continue with the new ones, "
                      "or overwrite=true to start afresh")


def check_resume_early(run_dir: Path, recipe: dict, allow_changes: bool) -> None:
    """`check_same_recipe` against the newest checkpoint that looks intact, before anything runs (the
    trainer checks again, with hashes, when it resumes)."""
    for path in candidates(run_dir):
        if find_damage(path) is None:
            check_same_recipe(path, recipe, allow_changes, say=lambda _: None)
            return


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
