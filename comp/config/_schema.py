"""The config schema, YAML loading, ``--set`` overrides and validation with fixable messages.

A config is a plain nested dict. ``SCHEMA`` lists every accepted key with its default and type, so an
unknown key names the closest valid one and a wrong type names its path and the expected type.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import yaml

from comp.errors import CompError, closest


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``; people write ``1e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """Parse YAML with the float fix above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


# Types: a python type, a tuple of types, or "any" (checked by a dedicated validator).
NUM = (int, float)
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))
OPT_NUM = (int, float, type(None))

# key -> (default, accepted types). Nested dicts are sections.
SCHEMA: dict[str, Any] = {
    "seed": (42, int),
    "metric": ("macro_f1", str),
    "device": ("auto", str),
    "data": {
        "train_csv": ("train.csv", str),
        "image_dir": ("train", str),
        "id_column": ("id", str),
        "label_column": ("label", str),
        "group_column": (None, OPT_STR),
        "image_ext": (".png", str),
        "path_template": (None, OPT_STR),
        "test_csv": (None, OPT_STR),
        "test_image_dir": ("test", str),
        "sample_submission": ("sample_submission.csv", OPT_STR),
        "classes": (None, (list, type(None))),
        "num_workers": (0, int),
        "cache": ("none", str),
        "cache_dir": (None, OPT_STR),
    },
    "folds": {
        "n_splits": (5, int),
        "seed": (42, int),
    },
    "train": {
        "epochs": (10, int),
        "batch_size": (32, int),
        "eval_batch_size": (None, OPT_INT),
        "optimizer": ("adamw", str),
        "lr": (1e-3, NUM),
        "weight_decay": (0.05, NUM),
        "momentum": (0.9, NUM),
        "scheduler": ("cosine", str),
        "warmup_epochs": (0.0, NUM),
        "min_lr_ratio": (0.01, NUM),
        "amp": ("auto", str),
        "ema": (False, bool),
        "ema_decay": (0.999, NUM),
        "grad_clip": (None, OPT_NUM),
        "channels_last": (False, bool),
        "early_stopping": (0, int),
        "freeze_epochs": (0, int),
        "freeze_lr": (None, OPT_NUM),
        "drop_rate": (0.0, NUM),
        "drop_path_rate": (None, OPT_NUM),
        "deterministic": (True, bool),
        "max_steps_per_epoch": (None, OPT_INT),
    },
    "augment": {
        "train": ([{"name": "HorizontalFlip", "p": 0.5}], list),
        "valid": ([], list),
        "mixup": {
            "mixup_alpha": (0.0, NUM),
            "cutmix_alpha": (0.0, NUM),
            "prob": (1.0, NUM),
            "switch_prob": (0.5, NUM),
            "mode": ("batch", str),
            "off_epoch": (None, OPT_INT),
        },
    },
    "loss": {
        "name": ("ce", str),
        "label_smoothing": (0.0, NUM),
        "focal_gamma": (2.0, NUM),
        "class_weights": ("none", (str, list)),
    },
    "models": ([{"name": "resnet18"}], list),
    "tune": (None, (dict, type(None))),
    "predict": {
        "tta": ([], list),
        "tta_merge": ("mean", str),
        "engine": ("onnx", str),
        "batch_size": (64, int),
    },
}

# Keys a model entry may set besides any ``train.*`` key.
MODEL_KEYS: dict[str, Any] = {
    "name": (None, str),
    "id": (None, OPT_STR),
    "pretrained": (False, (bool, str)),
    "image_size": (224, (int, list)),
    "in_chans": (3, int),
}

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.cache": ("none", "memory", "disk"),
    "train.optimizer": ("adamw", "sgd"),
    "train.scheduler": ("cosine", "none"),
    "train.amp": ("auto", "none", "bf16", "fp16"),
    "augment.mixup.mode": ("batch", "pair", "elem"),
    "predict.tta_merge": ("mean", "geometric"),
    "predict.engine": ("onnx", "torch"),
}


def defaults() -> dict:
    """Return a fresh config filled with every default."""

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return copy.deepcopy(node[0])

    return walk(SCHEMA)


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``; dict values merge recursively, others replace."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _type_name(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "int", float: "float", str: "string", bool: "bool", list: "list", dict: "mapping"}
    return " or ".join("null" if t is type(None) else names.get(t, t.__name__) for t in types)


def _check_type(path: str, value, types) -> None:
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(value, types)
    if isinstance(value, bool) and bool not in types:
        ok = False  # bool is an int subclass; `epochs: true` is a mistake
    if not ok:
        raise CompError(f"config key '{path}' must be {_type_name(types)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise CompError(f"config key '{path}' must be a finite number, got {value!r}")


def _validate_section(cfg: dict, schema: dict, prefix: str) -> None:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise CompError(f"unknown config key '{path}'{closest(key, schema)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise CompError(f"config key '{path}' must be a mapping, got {value!r}")
            _validate_section(value, spec, path + ".")
        else:
            _check_type(path, value, spec[1])
            if path in CHOICES and value not in CHOICES[path]:
                raise CompError(
                    f"config key '{path}' must be one of {', '.join(CHOICES[path])}, got {value!r}{closest(value, CHOICES[path])}"
                )


def _validate_models(models: list) -> None:
    if not models:
        raise CompError("config key 'models' must list at least one model, e.g. models: [{name: resnet18}]")
    allowed = {**MODEL_KEYS, **SCHEMA["train"]}
    seen: set[str] = set()
    for i, entry in enumerate(models):
        if isinstance(entry, str):
            entry = {"name": entry}
            models[i] = entry
        if not isinstance(entry, dict) or "name" not in entry:
            raise CompError(f"config key 'models[{i}]' must be a mapping with a timm 'name', got {entry!r}")
        for key, value in entry.items():
            if key not in allowed:
                raise CompError(f"unknown config key 'models[{i}].{key}'{closest(key, allowed)}")
            _check_type(f"models[{i}].{key}", value, allowed[key][1])
            choice_key = f"train.{key}"
            if choice_key in CHOICES and value not in CHOICES[choice_key]:
                raise CompError(f"config key 'models[{i}].{key}' must be one of {', '.join(CHOICES[choice_key])}, got {value!r}")
        mid = model_id(entry)
        if mid in seen:
            raise CompError(f"config key 'models[{i}]': model id '{mid}' is used twice; give one entry a distinct 'id'")
        if "/" in mid or "\\" in mid or mid in (".", ".."):
            raise CompError(f"config key 'models[{i}].id' must be a plain folder name, got {mid!r}")
        seen.add(mid)
        size = entry.get("image_size", MODEL_KEYS["image_size"][0])
        if isinstance(size, list) and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
            raise CompError(f"config key 'models[{i}].image_size' must be an int or [height, width], got {size!r}")


def _validate_ranges(cfg: dict) -> None:
    if cfg["folds"]["n_splits"] < 2:
        raise CompError(f"config key 'folds.n_splits' must be >= 2, got n_splits={cfg['folds']['n_splits']}")
    for scope, block in [("train", cfg["train"])] + [(f"models[{i}]", m) for i, m in enumerate(cfg["models"])]:
        for key in ("epochs", "batch_size"):
            if key in block and block[key] < 1:
                raise CompError(f"config key '{scope}.{key}' must be >= 1, got {block[key]}")
        if "lr" in block and block["lr"] <= 0:
            raise CompError(f"config key '{scope}.lr' must be > 0, got {block['lr']}")
    mix = cfg["augment"]["mixup"]
    for key in ("prob", "switch_prob"):
        if not 0.0 <= mix[key] <= 1.0:
            raise CompError(f"config key 'augment.mixup.{key}' must be within [0, 1], got {mix[key]}")
    if not 0.0 <= cfg["loss"]["label_smoothing"] < 1.0:
        raise CompError(f"config key 'loss.label_smoothing' must be within [0, 1), got {cfg['loss']['label_smoothing']}")
    cw = cfg["loss"]["class_weights"]
    if isinstance(cw, str) and cw not in ("none", "balanced"):
        raise CompError(f"config key 'loss.class_weights' must be 'none', 'balanced' or a list of numbers, got {cw!r}")
    if cfg["data"]["num_workers"] < 0:
        raise CompError("config key 'data.num_workers' must be >= 0")


def validate(cfg: dict) -> dict:
    """Check every key, type and range of a config (already merged over defaults); return it."""
    _validate_section(cfg, SCHEMA, "")
    _validate_models(cfg["models"])
    _validate_ranges(cfg)
    from comp.training._losses import LOSSES  # late: registries import torch
    from comp.metrics import METRICS

    if cfg["metric"] not in METRICS:
        raise CompError(f"unknown metric '{cfg['metric']}'; choose from {', '.join(sorted(METRICS))}{closest(cfg['metric'], METRICS)}")
    if cfg["loss"]["name"] not in LOSSES:
        raise CompError(f"unknown loss '{cfg['loss']['name']}'; choose from {', '.join(sorted(LOSSES))}")
    return cfg


def parse_value(text: str):
    """Parse the right side of ``--set key=value`` as YAML (numbers, bools, lists, null)."""
    try:
        return yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def set_key(cfg: dict, dotted: str, value) -> None:
    """Set ``a.b.c`` (or ``models.0.lr``) in a nested config, creating nothing outside the schema."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise CompError(f"--set {dotted}: '{part}' is not an index of the {len(node)}-entry list '{'.'.join(parts[:i])}'")
            node = node[int(part)]
        else:
            if part not in node or not isinstance(node[part], (dict, list)):
                schema_keys = node.keys() if isinstance(node, dict) else []
                raise CompError(f"--set {dotted}: unknown section '{'.'.join(parts[: i + 1])}'{closest(part, schema_keys)}")
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise CompError(f"--set {dotted}: '{last}' is not an index of the list")
        node[int(last)] = value
    else:
        node[last] = value


def apply_overrides(cfg: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply ``key=value`` strings to ``cfg`` in place and return it."""
    for item in overrides or ():
        if "=" not in item:
            raise CompError(f"--set expects key=value, got {item!r} (e.g. --set train.epochs=3)")
        key, value = item.split("=", 1)
        set_key(cfg, key.strip(), parse_value(value))
    return cfg


def resolve_paths(cfg: dict, base: Path) -> dict:
    """Make the data block's relative paths absolute against ``base`` (the config file's folder)."""
    data = cfg["data"]
    for key in ("train_csv", "image_dir", "test_csv", "test_image_dir", "sample_submission", "cache_dir"):
        if data.get(key):
            p = Path(data[key]).expanduser()
            data[key] = str(p if p.is_absolute() else (base / p).resolve())
    for entry in cfg["models"]:
        pre = entry.get("pretrained")
        if isinstance(pre, str) and pre:
            p = Path(pre).expanduser()
            entry["pretrained"] = str(p if p.is_absolute() else (base / p).resolve())
    return cfg


def load_config(path: str | Path | None, overrides=(), base_dir: Path | None = None) -> dict:
    """Load a YAML config, merge it over the defaults, apply overrides, resolve paths and validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise CompError(f"config file {path} not found; pass an existing YAML file with --config")
        try:
            raw = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise CompError(f"config file {path}{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise CompError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
        base_dir = base_dir or path.resolve().parent
    cfg = deep_merge(defaults(), raw)
    if "models" in raw:
        cfg["models"] = copy.deepcopy(raw["models"])
        if isinstance(cfg["models"], list):  # `- resnet18` is shorthand for `- {name: resnet18}`
            cfg["models"] = [{"name": m} if isinstance(m, str) else m for m in cfg["models"]]
    apply_overrides(cfg, overrides)
    validate(cfg)
    return resolve_paths(cfg, base_dir or Path.cwd())


def model_id(entry: dict) -> str:
    """The folder name of a model entry: its ``id`` if given, else its timm name."""
    return entry.get("id") or entry["name"]


def model_train_cfg(cfg: dict, entry: dict) -> dict:
    """The ``train`` block for one model: the defaults overridden by the entry's own keys."""
    out = copy.deepcopy(cfg["train"])
    for key, value in entry.items():
        if key in out:
            out[key] = value
    return out


def image_hw(entry: dict) -> tuple[int, int]:
    """Return (height, width) from a model entry's ``image_size``."""
    size = entry.get("image_size", MODEL_KEYS["image_size"][0])
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def dump(cfg: dict) -> str:
    """Serialise a config to YAML, keys in schema order."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
