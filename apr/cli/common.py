"""Helpers shared by the Hydra entry points: typed configs out of DictConfig, clean errors, and the
preflight check that refuses a bad run before Hydra writes anything into its run directory."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from apr.config import ConfigError


def to_container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def exit_with(e: ConfigError) -> None:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run_clean(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a ConfigError exits with status 2 and a one-line message, not a traceback."""
    try:
        return fn()
    except ConfigError as e:
        exit_with(e)


def check_writable_dir(path: str | Path, field: str) -> None:
    """`path` is, or can be created as, a directory this process can write into."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{field}: {str(path)!r} cannot be created ({str(existing)!r} is a file, not a directory); "
                          "accepted: a directory you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{field}: {str(path)!r} is not writable ({str(existing)!r} is read-only for this user); "
                          "accepted: a directory you can write to")


class Preflight(Callback):
    """Hydra callback (`hydra.callbacks.preflight` in each conf): before Hydra creates the run directory,
    writes `.hydra/` or opens its log, run `check(config_dict)` (a dotted name); a ConfigError exits 2
    with one line. So a refused run (bad value, a run_dir that holds another run, missing files) leaves
    the earlier run's record untouched."""

    def __init__(self, check: str) -> None:
        self.check = check

    def on_run_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf, open_dict

        task = config.copy()
        with open_dict(task):
            del task["hydra"]
        module, _, name = self.check.rpartition(".")
        try:
            getattr(importlib.import_module(module), name)(OmegaConf.to_container(task, resolve=True))
        except ConfigError as e:
            exit_with(e)
