"""YAML reading, ``--set`` overrides, relative paths and :func:`load_config`, the one way to make a Config."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from comp._files import file_problem
from comp.config._keys import set_key
from comp.config._records import Config, DataConfig, build_config
from comp.errors import ConfigError

_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``), refuses duplicate keys, and takes
    merge keys (``- {<<: *base, id: eff2}``): a key written twice is a mistake, a key that overrides a merged
    one is what merging is for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # the merge key itself: flattened below, where its keys go under ours
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        self.flatten_mapping(node)  # merged keys first, explicit ones after them (and so over them)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str | Path = "<text>") -> Any:
    """Parse YAML with the fixes above; a syntax error is a ConfigError naming the file and line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {source}{where} is not valid YAML: {problem}") from None


def read_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file, with one-line errors for a missing, unreadable or malformed file."""
    path = Path(path)
    problem = file_problem(path)
    if problem and problem not in ("not found", "is a folder"):
        raise ConfigError(f"config file {path} {problem}; pass a YAML file")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file with --config") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; pass a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({type(exc).__name__}); check the file") from None
    return yaml_load(text, path)


def parse_value(text: str) -> Any:
    """Parse the right side of ``--set key=value`` as YAML (numbers, bools, lists, null)."""
    try:
        return yaml.load(text, Loader=_Loader) if text != "" else ""  # noqa: S506
    except yaml.YAMLError:
        return text


def _record(dotted: str) -> Any:
    """The config record (dataclass) a dotted key names ("train", "augment.mixup"), or None for a value, a list
    or a free-form mapping (data.layout, tune.space), which a mapping given to --set replaces whole."""
    tp: Any = Config
    for part in dotted.split("."):
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        hint = hints[part]
        tp = next(
            (a for a in (*typing.get_args(hint), hint) if isinstance(a, type) and dataclasses.is_dataclass(a)), None
        )
        if tp is None:
            return None
    return tp


def _merged(old: dict[str, Any], new: dict[str, Any], record: Any) -> dict[str, Any]:
    """``new``'s keys over ``old``'s, record by record: the sections nested in a section merge too."""
    out = dict(old)
    for key, value in new.items():
        inner = _record_field(record, key)
        if inner is not None and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value, inner)
        else:
            out[key] = value
    return out


def _record_field(record: Any, key: str) -> Any:
    hint = typing.get_type_hints(record).get(key)
    if hint is None:
        return None
    return next(
        (a for a in (*typing.get_args(hint), hint) if isinstance(a, type) and dataclasses.is_dataclass(a)), None
    )


def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set one override; a mapping given for a section (``train={epochs: 1}``) is merged into it, so the
    section's other keys keep the values the file set instead of silently going back to the defaults."""
    record = _record(key) if isinstance(value, dict) else None
    if record is not None:
        node: Any = cfg
        for part in key.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        last = key.rsplit(".", 1)[-1]
        if isinstance(node, dict) and isinstance(node.get(last), dict):
            value = _merged(node[last], value, record)
    set_key(cfg, key, value)


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply ``key=value`` strings (or a {dotted key: value} mapping) to a config dict in place; a mapping given
    for a section is merged into it (see ``_set``)."""
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            _set(cfg, key, value)
        return cfg
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set train.epochs=3)")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), parse_value(value))
    return cfg


def _resolve(value: str, base: Path) -> str:
    p = Path(os.path.expandvars(value)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_paths(cfg: Config, base: str | Path) -> Config:
    """Make the data block's relative paths, local weights files and the distillation teacher absolute against
    ``base`` (in place)."""
    base = Path(base)
    data = cfg.data
    if data.layout is not None and data.root is None:
        data.root = "."  # a layout's paths are relative to the config file's folder unless data.root says otherwise
    for key in DataConfig.PATH_KEYS:
        value = getattr(data, key)
        if value:
            setattr(data, key, _resolve(value, base))
    for entry in cfg.models:
        if isinstance(entry.pretrained, str):
            entry.pretrained = _resolve(entry.pretrained, base)
    if cfg.loss.distill.teacher:
        cfg.loss.distill.teacher = _resolve(cfg.loss.distill.teacher, base)
    return cfg


def _normalise_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """Forgiving spellings that the YAML format has always accepted."""
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        data["classes"] = [
            str(c) if isinstance(c, (int, float, str)) and not isinstance(c, bool) else c for c in data["classes"]
        ]
    return raw


def _read_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict; ``base: OTHER.yaml`` (relative to this file) is read first and this file's keys
    are merged over it, section by section (lists such as ``models`` are replaced whole)."""
    loaded = read_yaml(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: 'base' must be the path of another config file, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else Path(os.path.abspath(path)).parent / base
    if base_path.resolve() in seen:
        raise ConfigError(f"config file {path}: 'base' chain loops back to {base_path}")
    return _merge(_read_with_base(base_path, (*seen, path.resolve())), loaded)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(
    source: str | Path | Mapping[str, Any] | Config | None = None,
    *,
    overrides: Iterable[str] | Mapping[str, Any] | None = (),
    base_dir: str | Path | None = None,
    **sections: Any,
) -> Config:
    """Build a validated :class:`Config` from a YAML path, a dict, a Config or keyword sections.

    ``overrides`` are ``"key=value"`` strings as on the command line (or a {dotted key: value} mapping);
    keyword ``sections`` replace whole top-level keys (``train={"epochs": 3}``, ``models=["resnet18"]``).
    Relative data paths resolve against ``base_dir``: by default the YAML file's folder, else the current one.

    Example::

        cfg = comp.load_config(data={"train_csv": "train.csv", "group_column": "person"},
                               models=[{"name": "resnet18", "image_size": 224}], train={"epochs": 3})
    """
    raw: dict[str, Any]
    if source is None:
        raw = {}
    elif isinstance(source, Config):
        raw = source.to_dict()
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        raw = _read_with_base(path)
        # the folder the user named, not a symlink's target: relative paths are read from where the file was found
        base_dir = base_dir if base_dir is not None else Path(os.path.abspath(path)).parent
    for key, value in sections.items():
        raw[key] = copy.deepcopy(value.to_dict() if isinstance(value, Config) else value)
    # defaults filled in, so overrides find every section (the task's own defaults once overrides are applied)
    full = build_config(_normalise_raw(raw), fill_task_defaults=False).to_dict()
    apply_overrides(full, overrides)
    cfg = build_config(_normalise_raw(full))
    return resolve_paths(cfg, base_dir if base_dir is not None else Path.cwd())


def dump(cfg: Config) -> str:
    """Serialise a config to YAML, keys in schema order."""
    return cfg.to_yaml()
