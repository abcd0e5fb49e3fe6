"""Helpers shared by the Hydra entry points: typed configs out of DictConfig, clean errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    finally:
        if log is not None:
            sys.stdout = console
            log.close()
