"""The engine choice as one typed config: `name` picks the backend, the other keys are its fields.

Every command reads it from the `engine` Hydra group (conf/engine/{local,sglang}.yaml), and it is
parsed when the config loads, before any model, server or Ray actor starts:

    python -m apr.cli.eval ... engine=sglang 'engine.urls=[http://h1:30000,http://h2:30000]'
    python -m apr.cli.rl ... engine.device=cuda engine.dtype=bfloat16

The accepted fields are the dataclasses' own (`LocalEngineConfig`, `SGLangEngineConfig`), so a field
added to either is accepted here at once, and a typo fails with the field's name:

    >>> cfg = engine_config({"name": "local", "max_batch_size": 8})
    >>> engine_name(cfg), cfg.max_batch_size
    ('local', 8)
    >>> engine_config({"name": "local", "max_batch_sise": 8})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    apr.config.ConfigError: engine.max_batch_sise: unknown field; accepted: attention_chunk_rows, ...
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Annotated, Any

from apr.config import ConfigError, Parser, check, from_dict, register_name, to_dict

# engine name -> "module:class" of its config (imported on first use: `local` loads torch)
ENGINES = {"local": "apr.engine.local:LocalEngineConfig", "sglang": "apr.engine.sglang:SGLangEngineConfig"}


def engine_class(name: str) -> type:
    """The config dataclass of engine `name` (a key of `ENGINES`)."""
    module, _, cls = ENGINES[name].partition(":")
    cls = getattr(importlib.import_module(module), cls)
    register_name(cls, name)  # to_dict writes {"name": name, ...}: a run's recorded config parses again
    return cls


def _name_of(cfg: Any) -> str | None:
    # by class name first: telling an SGLang config apart must not import torch (the local engine's module)
    return next((n for n, path in ENGINES.items()
                 if type(cfg).__name__ == path.partition(":")[2] and type(cfg) is engine_class(n)), None)


def engine_name(cfg: Any) -> str:
    """`local` or `sglang`: the name of a parsed engine config."""
    name = _name_of(cfg)
    if name is not None:
        return name
    raise ConfigError(f"engine: got a {type(cfg).__name__}; accepted: a config of one of {', '.join(ENGINES)}")


def engine_config(data: Any, field: str = "engine"):
    """Parse `{name: local|sglang, **fields}` into `LocalEngineConfig | SGLangEngineConfig`.

    `name` defaults to `local`; an already parsed config is returned as it is. Errors name
    `<field>.<key>` and list the chosen engine's fields."""
    if dataclasses.is_dataclass(data) and _name_of(data) is not None:
        return data
    check(isinstance(data, Mapping), field, data, "a mapping with name: " + " | ".join(ENGINES) + " and its fields")
    data = dict(data)
    name = data.pop("name", "local")
    check(name in ENGINES, f"{field}.name", name, ", ".join(ENGINES) + f" (pick one with {field}=<name>)")
    return from_dict(engine_class(name), data, field)


def engine_options(cfg: Any) -> dict:
    """The fields of a parsed engine config as keyword arguments (`Reasoner.from_pretrained(d, engine=..., **o)`)."""
    return {k: v for k, v in to_dict(cfg).items() if k != "name"}


def with_window(cfg: Any, max_seq_len: int):
    """Fill a local engine's `max_seq_len: null` ("the command's thread window") with `max_seq_len`."""
    if getattr(cfg, "max_seq_len", 0) is None:
        return dataclasses.replace(cfg, max_seq_len=max_seq_len)
    return cfg


# A dataclass field holding the engine choice: parsed at load by `engine_config` (typed as
# `LocalEngineConfig | SGLangEngineConfig`; `Any` here so that importing this module loads no torch).
EngineConfig = Annotated[Any, Parser(engine_config)]
