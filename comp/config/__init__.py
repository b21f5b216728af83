"""Typed config records, YAML loading, ``--set`` overrides and validation with fixable messages.

Shape only: types, bounds, unknown keys and rules between the config's own keys (the layout and label specs
included). Names in other stages' registries (metric, loss, TTA view) are checked by those stages.
"""

from comp.config._keys import set_key
from comp.config._labels import Attribute, Scheme, class_names, parse_labels
from comp.config._layout import LayoutSpec, parse_layout
from comp.config._load import (
    apply_overrides,
    dump,
    load_config,
    parse_value,
    read_yaml,
    resolve_paths,
    yaml_load,
)
from comp.config._records import (
    TRAIN_KEYS,
    AugmentConfig,
    Config,
    DataConfig,
    DistillConfig,
    FoldsConfig,
    HeadLoss,
    HeadLossConfig,
    LossConfig,
    MixupConfig,
    ModelConfig,
    PredictConfig,
    TrackConfig,
    TrainConfig,
    TuneConfig,
    build_config,
    build_model,
    size_schedule,
)

__all__ = [
    "TRAIN_KEYS",
    "Attribute",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "FoldsConfig",
    "HeadLoss",
    "HeadLossConfig",
    "LayoutSpec",
    "LossConfig",
    "MixupConfig",
    "ModelConfig",
    "PredictConfig",
    "Scheme",
    "TrackConfig",
    "TrainConfig",
    "TuneConfig",
    "apply_overrides",
    "build_config",
    "build_model",
    "class_names",
    "dump",
    "load_config",
    "parse_labels",
    "parse_layout",
    "parse_value",
    "read_yaml",
    "resolve_paths",
    "set_key",
    "size_schedule",
    "yaml_load",
]
