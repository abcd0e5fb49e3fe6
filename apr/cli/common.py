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


def config_dir() -> str:
    """The Hydra configs: `apr/conf/` in an installed wheel (setup.py ships the checkout's top-level
    `conf/` there), else the checkout's `conf/` (a source tree or an editable install)."""
    package = Path(__file__).resolve().parents[1]
    for path in (package / "conf", package.parent / "conf"):
        if (path / "sft.yaml").is_file():
            return str(path)
    raise ConfigError(f"conf: neither {package / 'conf'} nor {package.parent / 'conf'} holds the configs; "
                      "accepted: a checkout of the repository or a wheel built from it (pip install .)")


def compose(config_name: str, overrides: list[str]) -> dict:
    """Compose `conf/<config_name>.yaml` with Hydra overrides (outside `@hydra.main`), as a plain dict;
    a bad override is a `ConfigError`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir(), version_base="1.3"):
            return to_container(hydra_compose(config_name, overrides=overrides))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(" ".join(str(e).split())) from None


def to_container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


class _Tee:
    """A console stream whose writes also go to the run's log file."""

    def __init__(self, stream, log) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        if not self.log.closed:  # a thread (e.g. Ray's log monitor) may still hold this after the run
            self.log.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if not self.log.closed:
            self.log.flush()
        self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _hydra_log_path() -> str | None:
    """The file Hydra's job logging writes (<run_dir>/<command>.log), if it set one up."""
    import logging

    return next((h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)), None)


def print_error(message: str) -> None:
    """`error: <message>` on stderr, and in the run's log when `run_clean` keeps one."""
    print(f"error: {message}", file=sys.stderr)
    if isinstance(sys.stdout, _Tee):
        sys.stdout.log.write(f"error: {message}\n")


def exit_with(e: ConfigError) -> None:
    print_error(str(e))
    sys.exit(2)


def run_clean(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a ConfigError exits with status 2 and a one-line message, not a traceback.

    Under `@hydra.main` the run's own console lines (stdout, and the error line) are also appended to
    Hydra's per-run log, <run_dir>/<command>.log; progress bars (stderr) stay on the console only."""
    path = _hydra_log_path()
    log = open(path, "a", encoding="utf-8") if path else None
    console = sys.stdout
    if log is not None:
        sys.stdout = _Tee(console, log)
    try:
        return fn()
    except ConfigError as e:
        print_error(str(e))
        sys.exit(2)
    except FloatingPointError as e:  # a run that diverged (non-finite weights or gradients): one line, exit 1
        print_error(str(e))
        sys.exit(1)
    finally:
        if log is not None:
            sys.stdout = console
            log.close()


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
