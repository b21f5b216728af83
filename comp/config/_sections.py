"""The config's sections: one dataclass per YAML block (data, folds, train, augment, loss, predict, tune) and
the model entry. Field types and metadata are the schema (see ``_validate``)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from comp.config._validate import _f, build_section
from comp.errors import ConfigError


@dataclass
class DataConfig:
    """Where the competition's tables and images are, and how rows map to image files."""

    train_csv: str = "train.csv"
    image_dir: str = "train"
    id_column: str = "id"
    label_column: str = "label"
    # wide targets: one column per label (multilabel 0/1), per target (regression) or one-hot classes
    label_columns: list[str] | None = None
    group_column: str | None = None
    weight_column: str | None = None  # a per-row weight on the loss (vote counts, source quality)
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
    # tabular metadata beside the images: columns of train_csv and of the test table (data.test_csv); numeric
    # unless listed in ``categorical``. Used by a model's ``metadata`` tower and the gbdt blend method.
    features: list[str] | None = None
    categorical: list[str] | None = None

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
    seed: int = _f(42, ge=0, le=2**32 - 1)  # scikit-learn's random_state range


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
    # -- the fine-tuning toolbox ---------------------------------------------------------------
    accum_steps: int = _f(1, ge=1)  # micro-batches per optimizer step (gradient accumulation)
    layer_decay: float | None = _f(None, gt=0, le=1)  # layer-wise LR decay: block i of n gets lr * decay^(n - i)
    head_lr_scale: float = _f(1.0, gt=0)  # the classifier's LR = lr * head_lr_scale
    swa_start: int | None = _f(None, ge=0)  # SWA: average the weights of every epoch from this one (0-based)
    swa_lr: float | None = _f(None, gt=0)  # SWA: the LR from swa_start on (null: the schedule goes on)
    swa_anneal_epochs: float = _f(1.0, ge=0)  # SWA: epochs of linear ramp from the scheduled LR to swa_lr
    size_schedule: list[list[Any]] | None = None  # progressive resizing: [[epoch, size or [h, w]], ...]
    sampler: str | list[float] = "shuffle"  # shuffle, balanced, or one sampling weight per class

    def check(self, where: str) -> None:
        """Rules between keys (the per-key bounds are checked while reading)."""
        if self.swa_start is not None and self.swa_start >= self.epochs:
            raise ConfigError(
                f"config key '{where}.swa_start' ({self.swa_start}) must be below epochs ({self.epochs}); "
                "SWA averages the epochs from swa_start to the last"
            )
        if self.swa_start is not None and self.ema:
            raise ConfigError(
                f"config keys '{where}.swa_start' and '{where}.ema' both average the weights; set one of them"
            )
        if self.swa_start is not None and self.early_stopping:
            raise ConfigError(
                f"config keys '{where}.swa_start' and '{where}.early_stopping' conflict: SWA averages the last "
                "epochs, which early stopping may never reach; set one of them"
            )
        if isinstance(self.sampler, str) and self.sampler not in ("shuffle", "balanced"):
            raise ConfigError(
                f"config key '{where}.sampler' must be shuffle, balanced or a list of weights per class, "
                f"got {self.sampler!r}"
            )
        if isinstance(self.sampler, list) and (not self.sampler or any(w < 0 for w in self.sampler)):
            raise ConfigError(f"config key '{where}.sampler' must list non-negative weights, got {self.sampler!r}")
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
    name: str | None = None  # null: the task's default (ce, bce, mse)
    label_smoothing: float = _f(0.0, ge=0, lt=1)
    focal_gamma: float = _f(2.0, ge=0)
    class_weights: str | list[float] = "none"  # classification: none, balanced or one weight per class
    pos_weight: str | list[float] = "none"  # multilabel BCE losses: none, balanced or one weight per label
    asl_gamma_neg: float = _f(4.0, ge=0)  # multilabel asymmetric loss
    asl_gamma_pos: float = _f(0.0, ge=0)
    asl_clip: float = _f(0.05, ge=0, lt=1)
    huber_delta: float = _f(1.0, gt=0)  # regression huber loss, in standardised target units
    distill: DistillConfig = field(default_factory=DistillConfig)
    # per attribute of data.labels, for models with ``heads: attributes``: {age: {name: focal, weight: 2}}
    attributes: dict[str, Any] | None = None

    def head(self, attribute: str) -> HeadLoss:
        """The loss of one attribute's head: its ``loss.attributes`` entry over the block's own defaults."""
        raw = (self.attributes or {}).get(attribute) or {}
        head = build_section(HeadLossConfig, raw, f"loss.attributes.{attribute}")
        return HeadLoss(
            name=head.name if head.name is not None else self.name or "ce",
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
    tta_merge: Literal["mean", "geometric", "median"] = "mean"
    engine: Literal["onnx", "int8", "torch"] = "onnx"
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


@dataclass
class TrackConfig:
    """Experiment trackers, each optional: an MLflow tracking URI, a TensorBoard log folder, a W&B project."""

    mlflow: str | None = None  # http://host:5000, sqlite:///mlflow.db, ...
    tensorboard: str | None = None  # a folder; each run logs under <folder>/<run folder name>
    wandb: str | None = None  # a project name (WANDB_MODE=offline keeps it local)


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
    # a metadata tower over data.features: {hidden: 64, dropout: 0.1} (comp/config/_features.py checks it)
    metadata: dict[str, Any] | None = None
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
        if self.metadata is not None:
            out["metadata"] = copy.deepcopy(self.metadata)
        out.update(copy.deepcopy(self.train))
        return out
