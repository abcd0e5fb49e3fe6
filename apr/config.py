"""Typed configuration helpers shared by every module.

Hydra lives in `apr/cli/` only; everything below it receives plain dataclasses built by
`from_dict`, which rejects unknown keys and wrong types with an error naming the field.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Beam:
    ...     size: int = 5
    >>> from_dict(Beam, {"size": 3}, "search.beam").size
    3
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; the message names the field."""


def fail(field: str, value: Any, accepted: str) -> typing.NoReturn:
    """Raise a `ConfigError` that names the field, the bad value and what is accepted."""
    raise ConfigError(f"{field}: got {value!r}; accepted: {accepted}")


def check(condition: bool, field: str, value: Any, accepted: str) -> None:
    """`fail` unless `condition` holds."""
    if not condition:
        fail(field, value, accepted)


class Parser:
    """`Annotated[T, Parser(fn)]`: the field's value is built by `fn(value, field)`, e.g. a union of
    dataclasses chosen by a `name` key (`apr.engine.config.EngineConfig`)."""

    def __init__(self, fn: typing.Callable[[Any, str], Any]) -> None:
        self.fn = fn
def _describe(tp: Any) -> str:
    """A type as a user reads it: `int | None` -> "an integer or null"."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Annotated:
        parser = next((m for m in args[1:] if isinstance(m, Parser)), None)
        return parser.fn(value, field) if parser else _convert(args[0], value, field)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, field)
            except ConfigError:
                continue  # the next member may take it; the refusal below names them all
        fail(field, value, " or ".join(_describe(a) for a in args))
    if origin is typing.Literal:
        check(value in args, field, value, "one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        check(isinstance(value, Mapping), field, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, field)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        check(isinstance(value, Sequence) and not isinstance(value, str), field, value, "a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            check(len(value) == len(args), field, value, f"a list of {len(args)} items")
            return tuple(_convert(a, v, f"{field}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{field}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        check(isinstance(value, Mapping), field, value, "a mapping")
        return dict(value)
    if tp is bool:
        check(isinstance(value, bool), field, value, "true or false")
        return value
    if tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), field, value, "an integer")
        return value
    if tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), field, value, "a number")
        return float(value)
    if tp is str:
        check(isinstance(value, str), field, value, "a string")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping (e.g. an OmegaConf container), field by field.

    Unknown keys and wrongly typed values raise `ConfigError` naming `prefix.field`; the
    dataclass's own `__post_init__` then checks ranges.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown field; accepted: {', '.join(sorted(names))}")
    kwargs = {}
    for name in names:
        if name in data:
            field = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(hints[name], data[name], field)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        # `__post_init__` names fields by their usual section ("search.heuristics"); say where
        # this instance actually sits ("solvers.apr.heuristics").
        section, dot, rest = str(e).partition(".")
        if prefix and dot and rest.split(":")[0].split("[")[0] in names and section.isidentifier():
            raise ConfigError(f"{prefix}.{rest}") from None
        raise


# dataclasses that a `name` key chooses (see `Parser`): `to_dict` writes the name back, so that the
# dict parses into the same class again
_NAMES: dict[type, str] = {}


def register_name(cls: type, name: str) -> None:
    """Record that `{"name": name, ...}` parses into `cls`; `to_dict` then writes `name` back."""
    _NAMES[cls] = name


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts and lists, for JSON and run directories."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"name": _NAMES[type(obj)], **out} if type(obj) in _NAMES else out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
