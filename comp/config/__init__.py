"""Typed config records, YAML loading, ``--set`` overrides and validation with fixable messages."""

from comp.config._load import (
    apply_overrides,
    dump,
    load_config,
    parse_value,
    read_yaml,
    resolve_paths,
    set_key,
    yaml_load,
)
from comp.config._records import (
    TRAIN_KEYS,
    AugmentConfig,
    Config,
    DataConfig,
    DistillConfig,
    FoldsConfig,
    HeadLossConfig,
    LossConfig,
    MixupConfig,
    ModelConfig,
    PredictConfig,
    TrainConfig,
    TuneConfig,
    build_config,
    build_model,
)

__all__ = [
    "TRAIN_KEYS", "AugmentConfig", "Config", "DataConfig", "DistillConfig", "FoldsConfig", "HeadLossConfig", "LossConfig",
    "MixupConfig", "ModelConfig", "PredictConfig", "TrainConfig", "TuneConfig", "apply_overrides", "build_config",
    "build_model", "dump", "load_config", "parse_value", "read_yaml", "resolve_paths", "set_key", "yaml_load",
]
