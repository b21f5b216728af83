"""The shape of ``data.features`` and ``data.categorical``: distinct, non-empty names, categorical ones among
the features, none of them the id, label, group or weight column. Whether the columns exist and hold what they
should is the data stage's check (``comp/data/_features.py``), which reads the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from comp.errors import ConfigError, closest

if TYPE_CHECKING:
    from comp.config._sections import DataConfig


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
