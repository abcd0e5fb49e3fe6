"""Helpers shared by the Hydra entry points: typed configs out of DictConfig, clean errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from apr.config import ConfigError


def to_container(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def run_clean(fn: Callable[[], Any]) -> Any:
    """Run `fn`; a ConfigError exits with status 2 and a one-line message, not a traceback."""
    try:
        return fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
