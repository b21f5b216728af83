"""The whole config (:class:`Config`) and how a plain dict becomes one: every section validated with fixable
messages, then the rules that span keys (model ids, devices, class weights, the layout and label specs).

Shape only: names in other stages' registries (metric, loss, TTA view) are checked by those stages.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from comp.config._features import check_features, check_towers
from comp.config._keys import set_key
from comp.config._labels import parse_labels
from comp.config._layout import parse_layout
from comp.config._sections import (
    TRAIN_KEYS,
    AugmentConfig,
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
)
from comp.config._validate import _hints, build_section, check_value
from comp.errors import ConfigError, closest

__all__ = [
    "TRAIN_KEYS",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "DistillConfig",
    "FoldsConfig",
    "HeadLoss",
    "HeadLossConfig",
    "LossConfig",
    "MixupConfig",
    "ModelConfig",
    "PredictConfig",
    "TrackConfig",
    "TrainConfig",
    "TuneConfig",
    "build_config",
    "build_model",
]


@dataclass(repr=False)
class Config:
    """A whole experiment. Build it with :func:`comp.load_config` (YAML path, dict or keyword sections)."""

    seed: int = 42
    task: Literal["classification", "multilabel", "regression"] = "classification"
    metric: str | None = None  # null: the task's default (macro_f1, mean_auc, rmse)
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig("resnet18")])
    tune: TuneConfig | None = None
    predict: PredictConfig = field(default_factory=PredictConfig)
    track: TrackConfig | None = None  # experiment trackers; not part of what a run is (a resumed run may add one)

    # -- derived views ------------------------------------------------------------
    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The ``train`` block for one model: the defaults overridden by the entry's own keys."""
        return dataclasses.replace(self.train, **model.train)

    def model(self, model_id: str) -> ModelConfig:
        """The entry whose folder is ``model_id``."""
        for m in self.models:
            if m.model_id == model_id:
                return m
        raise ConfigError(f"no model '{model_id}' in the config{closest(model_id, [m.model_id for m in self.models])}")

    # -- plain forms ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/``weights_only``-safe), keys in schema order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "models":
                out["models"] = [m.to_dict() for m in value]
            elif dataclasses.is_dataclass(value):
                out[f.name] = _plain(value)
            else:
                out[f.name] = copy.deepcopy(value)
        return out

    def to_yaml(self) -> str:
        """The config as YAML, keys in schema order (what ``config.yaml`` of a run holds)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def _headline(self) -> str:
        models = ", ".join(f"{m.model_id} ({m.name}, {m.image_size}px)" for m in self.models)
        return f"Config: {self.task}, metric {self.metric}, {self.folds.n_splits} folds, models {models}"

    def __repr__(self) -> str:
        return f"{self._headline()}\n{self.to_yaml()}"

    def _repr_html_(self) -> str:
        import html

        return (
            f"<div><b>{html.escape(self._headline())}</b><details><summary>YAML</summary>"
            f"<pre>{html.escape(self.to_yaml())}</pre></details></div>"
        )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Validate a (partial) nested dict and fill in every default."""
        return build_config(raw)

    def replace(self, **changes: Any) -> Config:
        """A validated copy with top-level fields or dotted keys changed: ``cfg.replace(**{"train.epochs": 3})``."""
        raw = self.to_dict()
        for key, value in changes.items():
            set_key(raw, key, _plain(value) if dataclasses.is_dataclass(value) else value)
        return build_config(raw)


def _plain(obj: Any) -> Any:
    if isinstance(obj, ModelConfig):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return copy.deepcopy(obj)


_MODEL_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig) if f.name != "train"}
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def build_model(raw: Any, i: int) -> ModelConfig:
    """One ``models[i]`` entry; a bare string is shorthand for ``{name: <string>}``."""
    path = f"models[{i}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ConfigError(f"config key '{path}' must be a mapping with a timm 'name', got {raw!r}")
    hints, train_hints = _hints(ModelConfig), _hints(TrainConfig)
    kwargs: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _MODEL_FIELDS:
            kwargs[key] = check_value(
                f"{path}.{key}", copy.deepcopy(value), hints[key], dict(_MODEL_FIELDS[key].metadata)
            )
        elif key in _TRAIN_FIELDS:
            train[key] = check_value(
                f"{path}.{key}", copy.deepcopy(value), train_hints[key], dict(_TRAIN_FIELDS[key].metadata)
            )
        else:
            raise ConfigError(f"unknown config key '{path}.{key}'{closest(str(key), [*_MODEL_FIELDS, *_TRAIN_FIELDS])}")
    entry = ModelConfig(train=train, **kwargs)
    mid = entry.model_id
    if "/" in mid or "\\" in mid or mid in (".", "..") or not re.fullmatch(r"[^\x00-\x1f]+", mid):
        raise ConfigError(f"config key '{path}.id' must be a plain folder name, got {mid!r}")
    size = entry.image_size
    if (
        isinstance(size, int)
        and size < 1
        or isinstance(size, list)
        and (len(size) != 2 or not all(s >= 1 for s in size))
    ):
        raise ConfigError(f"config key '{path}.image_size' must be a positive int or [height, width], got {size!r}")
    if entry.in_chans not in (1, 3):
        raise ConfigError(
            f"config key '{path}.in_chans' must be 1 (grayscale) or 3 (RGB), got {entry.in_chans}; "
            "images are read as RGB"
        )
    if isinstance(entry.pretrained, str) and not entry.pretrained.strip():
        raise ConfigError(f"config key '{path}.pretrained' is an empty string; give a weights file, true or false")
    return entry


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(
            f"config key 'device' must be one of auto, cpu, cuda, cuda:N, got {device!r}"
            f"{closest(device, ['auto', 'cpu', 'cuda'])}"
        )


def size_schedule(
    tcfg: TrainConfig, hw: tuple[int, int], key: str = "train.size_schedule"
) -> list[tuple[int, tuple[int, int]]]:
    """Progressive resizing as [(first epoch, (height, width)), ...]: ``train.size_schedule`` checked (epochs from 0,
    increasing, below ``train.epochs``; sizes positive; the last one the model's ``image_size``, the size every
    later command uses), or the model's one size from epoch 0."""
    raw = tcfg.size_schedule
    if raw is None:
        return [(0, hw)]
    plan: list[tuple[int, tuple[int, int]]] = []
    for j, item in enumerate(raw):
        ok = isinstance(item, list) and len(item) == 2 and isinstance(item[0], int) and not isinstance(item[0], bool)
        size = item[1] if ok else None
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if not ok or not (
            isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 8 for v in size)
        ):
            raise ConfigError(
                f"config key '{key}[{j}]' must be [epoch, size] or [epoch, [height, width]] (sizes >= 8), got {item!r}"
            )
        plan.append((int(item[0]), (int(size[0]), int(size[1]))))
    epochs = [e for e, _ in plan]
    if not plan or epochs[0] != 0 or any(b <= a for a, b in zip(epochs, epochs[1:])) or epochs[-1] >= tcfg.epochs:
        raise ConfigError(
            f"config key '{key}' must start at epoch 0 with increasing epochs below train.epochs ({tcfg.epochs}), "
            f"got epochs {epochs}"
        )
    if plan[-1][1] != tuple(hw):
        raise ConfigError(
            f"config key '{key}' ends at {list(plan[-1][1])}, not the model's image_size {list(hw)}; the last size is "
            "the one every later command (predict, export, bundle) uses: end the schedule at image_size"
        )
    return plan


# The default metric and loss of each task (the tasks' registries are a stage above config: a test keeps the
# two in step).
TASK_DEFAULTS = {
    "classification": ("macro_f1", "ce"),
    "multilabel": ("mean_auc", "bce"),
    "regression": ("rmse", "mse"),
}


def build_config(raw: Any, *, fill_task_defaults: bool = True) -> Config:
    """Validate a nested dict (partial: missing keys take defaults) into a :class:`Config`.

    ``metric`` and ``loss.name`` left null take the task's defaults, unless ``fill_task_defaults`` is false
    (``load_config`` applies ``--set`` overrides first, so ``--set task=regression`` gets regression's)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(raw).__name__}")
    raw = dict(raw)
    models_raw = raw.pop("models", None)
    tune_raw = raw.pop("tune", None)
    cfg = build_section(Config, raw, "")
    if models_raw is not None:
        if not isinstance(models_raw, list):
            raise ConfigError(f"config key 'models' must be a list of model entries, got {models_raw!r}")
        if not models_raw:
            raise ConfigError("config key 'models' must list at least one model, e.g. models: [{name: resnet18}]")
        cfg.models = [build_model(m, i) for i, m in enumerate(models_raw)]
    if tune_raw is not None:
        cfg.tune = build_section(TuneConfig, tune_raw, "tune")
    if fill_task_defaults:
        metric, loss = TASK_DEFAULTS[cfg.task]
        cfg.metric = cfg.metric if cfg.metric is not None else metric
        cfg.loss.name = cfg.loss.name if cfg.loss.name is not None else loss
    _check_config(cfg)
    return cfg


def _check_config(cfg: Config) -> None:
    """Rules that span keys. Names in other stages' registries (metric, loss, TTA view) are checked by those
    stages' own ``check_config``, in their preflight, before anything is written."""
    _check_device(cfg.device)
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if m.model_id in seen:
            raise ConfigError(
                f"config key 'models[{i}]': model id '{m.model_id}' is used twice; give one entry a distinct 'id'"
            )
        seen.add(m.model_id)
        where = f"models[{i}]" if m.train else "train"
        tcfg = cfg.train_for(m)
        tcfg.check(where)
        size_schedule(tcfg, m.hw, f"{where}.size_schedule")
    cw = cfg.loss.class_weights
    if isinstance(cw, str) and cw not in ("none", "balanced"):
        raise ConfigError(
            f"config key 'loss.class_weights' must be 'none', 'balanced' or a list of numbers, got {cw!r}"
        )
    if isinstance(cw, list) and any(w < 0 for w in cw):
        raise ConfigError(f"config key 'loss.class_weights' must hold non-negative numbers, got {cw!r}")
    for key, value in (("data.extra_train", cfg.data.extra_train), ("loss.distill.teacher", cfg.loss.distill.teacher)):
        if value is not None and not value.strip():
            raise ConfigError(f"config key '{key}' is an empty string; give a path or null")
    if cfg.data.classes is not None and len(set(cfg.data.classes)) != len(cfg.data.classes):
        raise ConfigError("config key 'data.classes' lists a class twice; each class once")
    _check_task(cfg)
    _check_labels(cfg)
    check_features(cfg.data)
    check_towers(cfg.models, cfg.data)


def _check_task(cfg: Config) -> None:
    """What each task reads: wide label columns, class order, class or label weights, attribute labels."""
    data, task = cfg.data, cfg.task
    cols = data.label_columns
    if cols is not None:
        if not cols or len(set(cols)) != len(cols) or not all(c.strip() for c in cols):
            raise ConfigError(
                f"config key 'data.label_columns' must list distinct, non-empty column names, got {cols!r}"
            )
        if data.labels is not None or data.layout is not None and data.layout.get("csv") is None:
            raise ConfigError(
                "config key 'data.label_columns' reads labels from train.csv columns; it cannot be combined with "
                "data.labels or a folder-only data.layout"
            )
    if task == "regression" and data.classes is not None:
        raise ConfigError(
            "config key 'data.classes' orders classes or labels; a regression's targets are "
            "data.label_column or data.label_columns (in that order); drop data.classes"
        )
    if cols is not None and data.classes is not None and set(data.classes) != set(cols):
        raise ConfigError(
            "config keys 'data.classes' and 'data.label_columns' name different labels; data.label_columns "
            "alone sets them (in its order), so drop data.classes"
        )
    if task != "classification":
        if data.labels is not None:
            raise ConfigError(
                f"config key 'data.labels' (labels made of attributes) needs task: classification, not {task}"
            )
        if cfg.loss.class_weights != "none":
            hint = "use loss.pos_weight for multilabel" if task == "multilabel" else "drop it"
            raise ConfigError(f"config key 'loss.class_weights' weighs the classes of task classification; {hint}")
    if task == "regression" and cfg.loss.label_smoothing:
        raise ConfigError(
            "config key 'loss.label_smoothing' smooths classes or labels; regression targets are numbers; set it to 0"
        )
    if task != "multilabel" and cfg.loss.pos_weight != "none":
        raise ConfigError(
            f"config key 'loss.pos_weight' weighs the positives of each label of task multilabel, not {task}; "
            "for classes use loss.class_weights"
        )
    pw = cfg.loss.pos_weight
    if isinstance(pw, str) and pw not in ("none", "balanced"):
        raise ConfigError(f"config key 'loss.pos_weight' must be 'none', 'balanced' or a list of numbers, got {pw!r}")
    if isinstance(pw, list) and any(w <= 0 for w in pw):
        raise ConfigError(f"config key 'loss.pos_weight' must hold positive numbers, got {pw!r}")


def _check_labels(cfg: Config) -> None:
    """The layout and label specs, and what leans on them: attribute heads and their losses' keys."""
    data = cfg.data
    if data.layout is not None:
        parse_layout(data.layout, key="data.layout")
    scheme = parse_labels(data.labels, key="data.labels") if data.labels is not None else None
    if scheme is not None and data.classes is not None:
        raise ConfigError(
            "config keys 'data.classes' and 'data.labels' are both set; data.labels defines the classes "
            "(in code order), so drop data.classes"
        )
    for i, m in enumerate(cfg.models):
        if m.heads == "attributes" and scheme is None:
            raise ConfigError(
                f"config key 'models[{i}].heads' is 'attributes' but data.labels is not set; declare the "
                "attributes there or use heads: single"
            )
    own_losses = cfg.loss.attributes
    if own_losses is not None and scheme is None:
        raise ConfigError(
            "config key 'loss.attributes' needs data.labels (its keys are attribute names); set data.labels "
            "or drop loss.attributes"
        )
    if scheme is None or (own_losses is None and all(m.heads == "single" for m in cfg.models)):
        return
    for name, raw in (own_losses or {}).items():
        if name not in scheme.names:
            raise ConfigError(
                f"config key 'loss.attributes.{name}': no attribute '{name}' in data.labels"
                f"{closest(str(name), scheme.names)}; attributes are {', '.join(scheme.names)}"
            )
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(
                f"config key 'loss.attributes.{name}' must be a mapping (name, weight, label_smoothing, "
                f"focal_gamma, class_weights), got {raw!r}"
            )
    for attr in scheme.attributes:
        head = cfg.loss.head(attr.name)
        key = f"loss.attributes.{attr.name}"
        cw, k = head.class_weights, len(attr.values)
        own = ((own_losses or {}).get(attr.name) or {}).get("class_weights") is not None
        where = f"'{key}.class_weights'" if own else f"'loss.class_weights' (inherited by {key})"
        if isinstance(cw, str) and cw not in ("none", "balanced"):
            raise ConfigError(f"config key {where} must be 'none', 'balanced' or a list of numbers, got {cw!r}")
        if isinstance(cw, list) and (len(cw) != k or any(w < 0 for w in cw)):
            raise ConfigError(
                f"config key {where} must list {k} non-negative weights for {attr.name} "
                f"({', '.join(attr.values)}), got {cw!r}; set {key}.class_weights"
            )
