"""The validation walk behind the config records: a field's type hint is its schema, its metadata its bounds.

``Literal`` lists the choices, ``X | None`` allows null, and a field's metadata holds numeric bounds (``ge``,
``gt``, ``le``, ``lt``). Hand-written rather than pydantic: the messages are the product here (one line, the
dotted path, the fix), and this walk is all the machinery they need. It knows no section: it checks any
dataclass, in the spirit of scikit-learn's ``_param_validation``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from comp.errors import ConfigError, closest

T = TypeVar("T")


def _f(default: Any, **bounds: float) -> Any:
    """A field with a default (copied for mutables) and numeric bounds in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=bounds)
    return field(default=default, metadata=bounds)


_NAMES = {
    int: "int",
    float: "float",
    str: "string",
    bool: "bool",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin in (list, dict):
        return _NAMES[origin]
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the hinted type (shallow for containers; bool is never an int or float)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in get_args(tp))
    if origin is Literal:
        return value in get_args(tp) and not isinstance(value, bool)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return isinstance(value, tp)


def check_value(path: str, value: Any, tp: Any, bounds: dict[str, float] | None = None) -> Any:
    """Raise ConfigError unless ``value`` fits ``tp`` and ``bounds``; return it (ints widened for float fields)."""
    if not _matches(value, tp):
        origin = get_origin(tp)
        literal = next((a for a in ([tp] if origin is Literal else get_args(tp)) if get_origin(a) is Literal), None)
        if literal is not None and isinstance(value, str):
            choices = get_args(literal)
            raise ConfigError(
                f"config key '{path}' must be one of {', '.join(map(str, choices))}, got {value!r}"
                f"{closest(value, [str(c) for c in choices])}"
            )
        raise ConfigError(f"config key '{path}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{path}' must be a finite number, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and bounds:
        for op, limit in bounds.items():
            ok = {"ge": value >= limit, "gt": value > limit, "le": value <= limit, "lt": value < limit}[op]
            if not ok:
                sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op]
                name = path.rsplit(".", 1)[-1]
                bound = f"{limit:d}" if isinstance(limit, int) else f"{limit:g}"
                raise ConfigError(f"config key '{path}' must be {sign} {bound}, got {name}={value}")
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_section(cls: type[T], raw: Any, path: str) -> T:
    """A dataclass instance from a dict: unknown keys, types and bounds checked, defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{path}' must be a mapping, got {raw!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"unknown config key '{where}'{closest(str(key), fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        tp, sub = hints[name], f"{path}.{name}" if path else name
        value = raw[name]
        nested = next((a for a in (get_args(tp) or (tp,)) if isinstance(a, type) and dataclasses.is_dataclass(a)), None)
        if nested is not None and isinstance(value, dict):
            kwargs[name] = build_section(nested, value, sub)
        else:
            kwargs[name] = check_value(sub, copy.deepcopy(value), tp, dict(f.metadata))
    return cls(**kwargs)
