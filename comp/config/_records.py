"""Typed config records: one dataclass per YAML section, validated from plain dicts with fixable messages.

Each field's type hint is the schema: ``Literal`` lists the choices, ``X | None`` allows null, and the
field's metadata holds numeric bounds (``ge``, ``gt``, ``le``, ``lt``). ``from_dict`` rejects unknown keys
(naming the closest valid one), wrong types (naming the path and the expected type) and values out of
range, before anything is written. Hand-written rather than pydantic: the messages are the product here
(one line, the dotted path, the fix), and the walk below is all the machinery they need.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from comp.config._keys import set_key
from comp.config._labels import parse_labels
from comp.config._layout import parse_layout
from comp.errors import ConfigError, closest

T = TypeVar("T")


def _f(default: Any, **bounds: float) -> Any:
    """A field with a default (copied for mutables) and numeric bounds in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=bounds)
    return field(default=default, metadata=bounds)


@dataclass
class DataConfig:
    """Where the competition's tables and images are, and how rows map to image files."""

    train_csv: str = "train.csv"
    image_dir: str = "train"
    id_column: str = "id"
    label_column: str = "label"
    group_column: str | None = None
    image_ext: str = ".png"
    path_template: str | None = None
    test_csv: str | None = None
    test_image_dir: str = "test"
    sample_submission: str | None = "sample_submission.csv"
    classes: list[str] | None = None
    num_workers: int = _f(0, ge=0)
    cache: Literal["none", "memory", "disk"] = "none"
    cache_dir: str | None = None
    # rows from a layout spec (comp/config/_layout.py) instead of train_csv + image_dir; its paths are under ``root``
    layout: dict[str, Any] | None = None
    # labels made of attributes (comp/config/_labels.py) instead of label_column
    labels: dict[str, Any] | None = None
    root: str | None = None  # base folder of layout paths; default: the config file's folder

    extra_train: str | None = None  # pseudo-labelled test rows (comp pseudo): training part of every fold only

    PATH_KEYS: typing.ClassVar = (
        "train_csv",
        "image_dir",
        "test_csv",
        "test_image_dir",
        "sample_submission",
        "cache_dir",
        "root",
        "extra_train",
    )


@dataclass
class FoldsConfig:
    n_splits: int = _f(5, ge=2)
    seed: int = 42


@dataclass
class TrainConfig:
    """Optimisation settings; every key may also be set per model entry."""

    epochs: int = _f(10, ge=1)
    batch_size: int = _f(32, ge=1)
    eval_batch_size: int | None = _f(None, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = _f(1e-3, gt=0)
    weight_decay: float = _f(0.05, ge=0)
    momentum: float = _f(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: float = _f(0.0, ge=0)
    min_lr_ratio: float = _f(0.01, ge=0, le=1)
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    ema: bool = False
    ema_decay: float = _f(0.999, gt=0, lt=1)
    grad_clip: float | None = _f(None, gt=0)
    channels_last: bool = False
    early_stopping: int = _f(0, ge=0)
    freeze_epochs: int = _f(0, ge=0)
    freeze_lr: float | None = _f(None, gt=0)
    drop_rate: float = _f(0.0, ge=0, lt=1)
    drop_path_rate: float | None = _f(None, ge=0, lt=1)
    deterministic: bool = True
    max_steps_per_epoch: int | None = _f(None, ge=1)
    sync_bn: bool = False  # DDP (torchrun / --ddp) on GPUs: BatchNorm statistics over all ranks' batches

    def check(self, where: str) -> None:
        """Rules between keys (the per-key bounds are checked while reading)."""
        if self.freeze_epochs > self.epochs:
            raise ConfigError(
                f"config key '{where}.freeze_epochs' ({self.freeze_epochs}) exceeds epochs ({self.epochs}); "
                "lower it or raise epochs"
            )
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"config key '{where}.warmup_epochs' ({self.warmup_epochs}) exceeds epochs ({self.epochs}); lower it"
            )


@dataclass
class MixupConfig:
    mixup_alpha: float = _f(0.0, ge=0)
    cutmix_alpha: float = _f(0.0, ge=0)
    prob: float = _f(1.0, ge=0, le=1)
    switch_prob: float = _f(0.5, ge=0, le=1)
    mode: Literal["batch", "pair", "elem"] = "batch"
    off_epoch: int | None = _f(None, ge=0)

    @property
    def enabled(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


@dataclass
class AugmentConfig:
    """albumentations transforms by class name and arguments, e.g. ``{name: HorizontalFlip, p: 0.5}``."""

    train: list[dict[str, Any]] = _f([{"name": "HorizontalFlip", "p": 0.5}])
    valid: list[dict[str, Any]] = _f([])
    mixup: MixupConfig = field(default_factory=MixupConfig)


@dataclass
class DistillConfig:
    """Knowledge distillation from ``teacher`` (a run, model or blend folder with oof.csv); off while it is null.

    The student's loss is ``(1 - alpha) * loss(true label) + alpha * T^2 * KL(teacher_T || student_T)``, both
    softened by ``temperature`` T."""

    teacher: str | None = None
    alpha: float = _f(0.5, ge=0, le=1)
    temperature: float = _f(2.0, gt=0)

    @property
    def enabled(self) -> bool:
        return self.teacher is not None


@dataclass
class LossConfig:
    name: str = "ce"
    label_smoothing: float = _f(0.0, ge=0, lt=1)
    focal_gamma: float = _f(2.0, ge=0)
    class_weights: str | list[float] = "none"
    distill: DistillConfig = field(default_factory=DistillConfig)
    # per attribute of data.labels, for models with ``heads: attributes``: {age: {name: focal, weight: 2}}
    attributes: dict[str, Any] | None = None

    def head(self, attribute: str) -> HeadLoss:
        """The loss of one attribute's head: its ``loss.attributes`` entry over the block's own defaults."""
        raw = (self.attributes or {}).get(attribute) or {}
        head = build_section(HeadLossConfig, raw, f"loss.attributes.{attribute}")
        return HeadLoss(
            name=head.name if head.name is not None else self.name,
            weight=head.weight,
            label_smoothing=head.label_smoothing if head.label_smoothing is not None else self.label_smoothing,
            focal_gamma=head.focal_gamma if head.focal_gamma is not None else self.focal_gamma,
            class_weights=head.class_weights if head.class_weights is not None else self.class_weights,
        )


@dataclass
class HeadLossConfig:
    """One attribute head's loss; a key left out (None) takes the ``loss`` block's value."""

    name: str | None = None
    weight: float = _f(1.0, ge=0)
    label_smoothing: float | None = _f(None, ge=0, lt=1)
    focal_gamma: float | None = _f(None, ge=0)
    class_weights: str | list[float] | None = None


@dataclass(frozen=True)
class HeadLoss:
    """One attribute head's loss with every key resolved (:meth:`LossConfig.head`)."""

    name: str
    weight: float
    label_smoothing: float
    focal_gamma: float
    class_weights: str | list[float]


@dataclass
class PredictConfig:
    tta: list[str] = _f([])
    tta_merge: Literal["mean", "geometric"] = "mean"
    engine: Literal["onnx", "torch"] = "onnx"
    batch_size: int = _f(64, ge=1)
    compile: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"  # torch engine: torch.compile
    tensorrt: bool = True  # onnx engine on a GPU: try TensorRT first (engine/timing caches under RUN/.trt_cache)
    trt_fp16: bool = True
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic"] = "exhaustive"
    cuda_graph: bool = False  # CUDA provider: replay one captured graph per fixed-size (padded) batch


@dataclass
class TuneConfig:
    """``comp tune``: the search space (dotted config keys -> ranges) and the study's defaults."""

    space: dict[str, Any] = _f({})
    n_trials: int | None = _f(None, ge=1)
    direction: Literal["maximize", "minimize"] | None = None
    timeout: float | None = _f(None, gt=0)
    pruner: Literal["median", "hyperband", "wilcoxon", "none"] | None = None
    epochs: int | None = _f(None, ge=1)
    folds: list[int] | None = None


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class ModelConfig:
    """One backbone: a timm ``name``, its folder ``id``, input size, and any ``train.*`` key overridden for it."""

    name: str
    id: str | None = None
    pretrained: bool | str = False
    image_size: int | list[int] = 224
    in_chans: int = _f(3, ge=1)
    heads: Literal["single", "attributes"] = "single"  # attributes: one head per attribute of data.labels
    train: dict[str, Any] = field(default_factory=dict)  # train.* keys set on this entry (flat in YAML)

    @property
    def model_id(self) -> str:
        """The folder name under RUN/models/: ``id`` if given, else the timm name."""
        return self.id or self.name

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.id is not None:
            out["id"] = self.id
        out.update(pretrained=self.pretrained, image_size=copy.deepcopy(self.image_size), in_chans=self.in_chans)
        if self.heads != "single":  # only when set, so configs saved before the key existed still match
            out["heads"] = self.heads
        out.update(copy.deepcopy(self.train))
        return out


@dataclass
class Config:
    """A whole experiment. Build it with :func:`comp.load_config` (YAML path, dict or keyword sections)."""

    seed: int = 42
    metric: str = "macro_f1"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    folds: FoldsConfig = field(default_factory=FoldsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig("resnet18")])
    tune: TuneConfig | None = None
    predict: PredictConfig = field(default_factory=PredictConfig)

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


# ---------------------------------------------------------------- validation


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
                raise ConfigError(f"config key '{path}' must be {sign} {limit:g}, got {name}={value}")
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


def build_config(raw: Any) -> Config:
    """Validate a nested dict (partial: missing keys take defaults) into a :class:`Config`."""
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
        cfg.train_for(m).check(f"models[{i}]" if m.train else "train")
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
    _check_labels(cfg)


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
