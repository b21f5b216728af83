"""The shape of ``data.features`` and ``data.categorical``: distinct, non-empty names, categorical ones among
the features, none of them the id, label, group or weight column. Whether the columns exist and hold what they
should is the data stage's check (``comp/data/_features.py``), which reads the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comp.errors import ConfigError, closest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from comp.config._sections import DataConfig, ModelConfig


def check_features(data: DataConfig) -> None:
    """Rules between ``data.features``, ``data.categorical`` and the columns the data block already uses."""
    feats, cats = data.features, data.categorical
    if cats is not None and feats is None:
        raise ConfigError(
            "config key 'data.categorical' names feature columns but data.features is not set; "
            "list every metadata column in data.features"
        )
    if feats is None:
        return
    for key, names in (("data.features", feats), ("data.categorical", cats or [])):
        if not all(isinstance(n, str) and n.strip() for n in names) or len(set(names)) != len(names):
            raise ConfigError(f"config key '{key}' must list distinct, non-empty column names, got {names!r}")
    if not feats:
        raise ConfigError("config key 'data.features' is an empty list; name the metadata columns or set it to null")
    for name in cats or []:
        if name not in feats:
            raise ConfigError(
                f"config key 'data.categorical' names {name!r}, which is not in data.features"
                f"{closest(name, feats)}; list it in data.features too"
            )
    used = {
        "data.id_column": [data.id_column],
        "data.label_column": [data.label_column] if data.label_columns is None else [],
        "data.label_columns": data.label_columns or [],
        "data.group_column": [data.group_column] if data.group_column else [],
        "data.weight_column": [data.weight_column] if data.weight_column else [],
    }
    for key, cols in used.items():
        for name in feats:
            if name in cols:
                raise ConfigError(
                    f"config key 'data.features' lists {name!r}, which is {key}; a feature must be a column "
                    "the test table also holds and that is neither the id, a target, the group nor a weight"
                )


TOWER_KEYS = {"hidden": 64, "dropout": 0.1}


def tower_options(raw: dict[str, Any]) -> dict[str, Any]:
    """A ``models[i].metadata`` mapping with its defaults filled in (already checked by :func:`check_towers`)."""
    return {**TOWER_KEYS, **raw}


def check_towers(models: Sequence[ModelConfig], data: DataConfig) -> None:
    """``models[i].metadata``: known keys, a positive width, a dropout in [0, 1), and data.features to read."""
    for i, m in enumerate(models):
        raw = m.metadata
        if raw is None:
            continue
        key = f"models[{i}].metadata"
        if not isinstance(raw, dict):
            raise ConfigError(f"config key '{key}' must be a mapping like {{hidden: 64, dropout: 0.1}}, got {raw!r}")
        for name in raw:
            if name not in TOWER_KEYS:
                raise ConfigError(
                    f"unknown config key '{key}.{name}'{closest(str(name), list(TOWER_KEYS))}; "
                    f"the tower takes {', '.join(TOWER_KEYS)}"
                )
        hidden, dropout = raw.get("hidden", TOWER_KEYS["hidden"]), raw.get("dropout", TOWER_KEYS["dropout"])
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"config key '{key}.hidden' must be an integer >= 1, got {hidden!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            raise ConfigError(f"config key '{key}.dropout' must be a number in [0, 1), got {dropout!r}")
        if not data.features:
            raise ConfigError(
                f"config key '{key}' adds a metadata tower but data.features is not set; list the metadata "
                f"columns in data.features or drop {key}"
            )
        if m.heads == "attributes":
            raise ConfigError(
                f"config key '{key}' cannot be combined with models[{i}].heads: attributes; use heads: single "
                "for the tower model (or a second model entry without metadata)"
            )
