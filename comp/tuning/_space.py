"""The search space: ``tune.space`` validated against the config, a trial's sample of it, and the config it makes."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from comp.config import TRAIN_KEYS, Config, build_config, set_key
from comp.config._records import _MODEL_FIELDS as MODEL_KEYS
from comp.errors import ConfigError, closest
from comp.metrics import check_config as check_metric
from comp.training._losses import check_config as check_losses

SPACE_TYPES = ("float", "int", "categorical")


def _key_exists(cfg: Config, dotted: str) -> None:
    parts = dotted.split(".")
    if parts[0] == "models":
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(cfg.models):
            raise ConfigError(
                f"tune.space key '{dotted}': model entries are searched as models.<index>.<key>, "
                f"index below {len(cfg.models)}"
            )
        allowed = [*MODEL_KEYS, *TRAIN_KEYS]
        if parts[2] not in allowed:
            raise ConfigError(f"tune.space key '{dotted}': unknown model key '{parts[2]}'{closest(parts[2], allowed)}")
        return
    node: Any = cfg
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, list):  # inside a mapping-valued key, e.g. data.labels.attributes.age.train_bins.1
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"tune.space key '{dotted}': '{part}' is not an index of the {len(node)}-entry list {where}"
                )
            node = node[int(part)]
            continue
        options = (
            [f.name for f in dataclasses.fields(node)]
            if dataclasses.is_dataclass(node)
            else [str(k) for k in node]
            if isinstance(node, dict)
            else []
        )
        if part not in options or part in ("models", "tune") and i == 0:
            raise ConfigError(f"tune.space key '{dotted}': '{part}' is not a key of {where}{closest(part, options)}")
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"tune.space key '{dotted}' is a section; search one of its keys")


def parse_space(cfg: Config) -> dict[str, dict]:
    """Validate ``tune.space`` before the first trial; return {dotted key: spec}."""
    space = cfg.tune.space if cfg.tune is not None else {}
    if not space:
        raise ConfigError(
            "config key 'tune.space' must map config keys to ranges, e.g. "
            "tune: {space: {train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}}"
        )
    for key, spec in space.items():
        _key_exists(cfg, key)
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise ConfigError(f"tune.space.{key}: type must be one of {', '.join(SPACE_TYPES)}, got {got!r}")
        allowed = {"categorical": {"type", "choices"}}.get(spec["type"], {"type", "low", "high", "log", "step"})
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(
                f"tune.space.{key}: unknown key '{extra[0]}' for a {spec['type']} range"
                f"{closest(extra[0], allowed)}; allowed: {', '.join(sorted(allowed))}"
            )
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"tune.space.{key}: categorical needs a non-empty 'choices' list")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(
                f"tune.space.{key}: {spec['type']} needs numeric 'low' and 'high', got low={low!r} high={high!r}"
            )
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low > high:
            raise ConfigError(f"tune.space.{key}: low ({low}) is above high ({high}); swap them")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"tune.space.{key}: log scale needs low > 0, got {low}")
        if spec["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"tune.space.{key}: int needs whole-number low and high, got {low} and {high}")
        step = spec.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
                raise ConfigError(f"tune.space.{key}: step must be a number > 0, got {step!r}")
            if spec["type"] == "int" and not float(step).is_integer():
                raise ConfigError(f"tune.space.{key}: an int range needs a whole-number step, got {step}")
            if spec.get("log"):
                raise ConfigError(f"tune.space.{key}: log and step cannot be combined (optuna forbids it); drop one")
    for corner in ("low", "high"):  # a config at each corner of the space must pass validation
        corner_cfg = apply_params(cfg, {k: _corner(s, corner) for k, s in space.items()})
        check_metric(corner_cfg)  # and the registry names train_folds' preflight checks, before any write
        check_losses(corner_cfg)
    return space


def _corner(spec: dict, which: str):
    if spec["type"] == "categorical":
        return spec["choices"][0 if which == "low" else -1]
    return int(spec[which]) if spec["type"] == "int" else float(spec[which])


def apply_params(cfg: Config, params: dict) -> Config:
    """A validated copy of ``cfg`` with each dotted key set to its value (model entries as models.<i>.<key>)."""
    raw = cfg.to_dict()
    for key, value in params.items():
        set_key(raw, key, value)
    return build_config(raw)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Sample one value per searched key."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=bool(spec.get("log"))
            )
        else:
            params[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=bool(spec.get("log"))
            )
    return params
