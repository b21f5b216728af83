"""Loss registry. Every loss takes logits (N, C) and soft targets (N, C), so label smoothing and
CutMix/MixUp need nothing special; class weights scale each class's share of the target.

Every loss also takes optional sample weights (N,) (``data.weight_column``, scaled to mean 1 over the fold's
training part by ``comp.data._sample_weights.training_weights``) and then reduces ``mean(w * row loss)``
instead of ``mean(row loss)``: linear in the rows, so a weight of 0 equals dropping the row, 2 equals
duplicating it, and gradient accumulation and DDP need nothing special. With class weights the reduction is
the one it always was (normalised by the batch's weighted target mass), each row's share times its weight."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comp._registry import Registry
from comp.config._labels import parse_labels
from comp.errors import ConfigError

if TYPE_CHECKING:
    from comp.config import Config, LossConfig

LOSSES: Registry[type[_Weighted]] = Registry("loss")


class _Weighted(nn.Module):
    def __init__(self, class_weights: torch.Tensor | None = None, gamma: float = 2.0):
        super().__init__()
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)
        self.gamma = gamma

    def _reduce(
        self, per_class: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.class_weights is None:
            return row_mean(per_class.sum(1), weight)
        w = torch.as_tensor(self.class_weights).to(per_class.dtype)
        # normalise by the batch's effective weight so the loss scale does not depend on the weights' scale
        num, den = (per_class * w).sum(1), (target * w).sum(1)
        if weight is not None:
            num, den = num * weight, den * weight
        return num.sum() / den.sum().clamp_min(1e-12)


def row_mean(per_row: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``mean(per_row)``, or ``mean(weight * per_row)`` with sample weights."""
    if weight is None:
        return per_row.mean()
    return (per_row * weight.to(per_row.dtype)).mean()


@LOSSES.register("ce")
class SoftCrossEntropy(_Weighted):
    """Cross-entropy against soft targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        return self._reduce(-target * logp, target, weight)


@LOSSES.register("focal")
class SoftFocal(_Weighted):
    """Focal loss (Lin et al. 2017) against soft targets: down-weights easy, confident examples."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        p = logp.exp()
        return self._reduce(-target * (1 - p).pow(self.gamma) * logp, target, weight)


def class_weights(spec, targets: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """'none' -> None; 'balanced' -> n / (C * count) as in sklearn; a list -> those weights."""
    if isinstance(spec, str):
        if spec == "none":
            return None
        counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
        w = len(targets) / (num_classes * np.maximum(counts, 1))
        return torch.tensor(w, dtype=torch.float32)
    if len(spec) != num_classes or not all(isinstance(v, int | float) and v >= 0 for v in spec):
        raise ConfigError(
            f"config key 'loss.class_weights' must list {num_classes} non-negative numbers (one per class), got {spec!r}"
        )
    return torch.tensor(spec, dtype=torch.float32)


# ---------------------------------------------------------------- multi-label: targets (N, L) in [0, 1]


def _pos_weight(spec, targets: np.ndarray, n_labels: int) -> torch.Tensor | None:
    """'none' -> None; 'balanced' -> negatives / positives per label on the training part (capped at 100);
    a list -> those weights (one per label)."""
    if isinstance(spec, str):
        if spec == "none":
            return None
        Y = np.asarray(targets, np.float64)
        pos = Y.sum(0)
        w = np.clip((len(Y) - pos) / np.maximum(pos, 1.0), 1e-3, 100.0)
        return torch.tensor(w, dtype=torch.float32)
    if len(spec) != n_labels:
        raise ConfigError(
            f"config key 'loss.pos_weight' must list {n_labels} positive numbers (one per label), got {spec!r}"
        )
    return torch.tensor(spec, dtype=torch.float32)


class _LabelLoss(nn.Module):
    def __init__(self, pos_weight: torch.Tensor | None, cfg: LossConfig):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.gamma = cfg.focal_gamma
        self.gamma_neg, self.gamma_pos, self.clip = cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip

    def _weight(self, target: torch.Tensor) -> torch.Tensor | float:
        """Per-cell weight of the positive part: 1 + (pos_weight - 1) * target (1 without pos_weight)."""
        pw = self.get_buffer("pos_weight")
        if pw is None:
            return 1.0
        return 1.0 + (pw.to(target.dtype) - 1.0) * target


ML_LOSSES: Registry[type[_LabelLoss]] = Registry("multilabel loss")


@ML_LOSSES.register("bce")
class LabelBCE(_LabelLoss):
    """Binary cross-entropy per label (mean over labels and rows); ``loss.pos_weight`` weighs positives."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        pw = self.get_buffer("pos_weight")
        cells = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=pw, reduction="none")
        return row_mean(cells.mean(1), weight)


@ML_LOSSES.register("focal_bce")
class LabelFocal(_LabelLoss):
    """Sigmoid focal loss (Lin et al. 2017): each label's BCE times (1 - p_t)^gamma (``loss.focal_gamma``)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        z = logits.float()
        ce = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        p = torch.sigmoid(z)
        p_t = p * target + (1 - p) * (1 - target)
        return row_mean((ce * (1 - p_t).pow(self.gamma) * self._weight(target)).mean(1), weight)


@ML_LOSSES.register("asl")
class AsymmetricLoss(_LabelLoss):
    """Asymmetric loss (Ben-Baruch et al. 2021): negatives focused by ``loss.asl_gamma_neg`` and shifted by
    ``loss.asl_clip`` (easy negatives count for nothing), positives by ``loss.asl_gamma_pos``."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        p = torch.sigmoid(logits.float())
        p_neg = (1 - p + self.clip).clamp(max=1.0) if self.clip > 0 else 1 - p
        eps = 1e-8
        loss = target * torch.log(p.clamp(min=eps)) * self._weight(target) + (1 - target) * torch.log(
            p_neg.clamp(min=eps)
        )
        if self.gamma_neg > 0 or self.gamma_pos > 0:
            p_t = p * target + p_neg * (1 - target)
            gamma = self.gamma_pos * target + self.gamma_neg * (1 - target)
            loss = loss * (1 - p_t).pow(gamma)
        return -row_mean(loss.mean(1), weight)


# ---------------------------------------------------------------- regression: targets (N, T), scaled


class _ValueLoss(nn.Module):
    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.delta = cfg.huber_delta


REG_LOSSES: Registry[type[_ValueLoss]] = Registry("regression loss")


@REG_LOSSES.register("mse")
class ValueMSE(_ValueLoss):
    """Mean squared error on the standardised target."""

    def forward(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return row_mean(F.mse_loss(out.float(), target, reduction="none").mean(1), weight)


@REG_LOSSES.register("huber")
class ValueHuber(_ValueLoss):
    """Huber (smooth L1) loss on the standardised target; ``loss.huber_delta`` in standard deviations."""

    def forward(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return row_mean(F.huber_loss(out.float(), target, delta=self.delta, reduction="none").mean(1), weight)


@REG_LOSSES.register("bce")
class ValueBCE(_ValueLoss):
    """Binary cross-entropy against the target min-max scaled into [0, 1] (the output then ends in a sigmoid)."""

    def forward(self, out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return row_mean(F.binary_cross_entropy_with_logits(out.float(), target, reduction="none").mean(1), weight)


TASK_LOSSES: dict[str, Registry] = {"classification": LOSSES, "multilabel": ML_LOSSES, "regression": REG_LOSSES}
_BUILD = {  # task -> (loss config, training part's targets, outputs) -> the loss module
    "classification": lambda c, t, k: LOSSES[c.name](class_weights(c.class_weights, t, k), gamma=c.focal_gamma),
    "multilabel": lambda c, t, k: ML_LOSSES[c.name](_pos_weight(c.pos_weight, t, k), c),
    "regression": lambda c, t, k: REG_LOSSES[c.name](c),
}


def build_loss(loss_cfg: LossConfig, targets: np.ndarray, num_classes: int, task: str = "classification") -> nn.Module:
    """The configured loss of ``task``: class weights (classification) or label weights (multilabel) come from
    the training part's ``targets``."""
    return _BUILD[task](loss_cfg, targets, num_classes)


def check_loss(name: str | None, task: str, where: str = "loss") -> None:
    """Refuse a loss that is not one of ``task``'s, naming the ones that are."""
    owner = TASK_LOSSES[task]
    if name in owner:
        return
    elsewhere = [t for t, reg in TASK_LOSSES.items() if name in reg]
    if elsewhere:
        raise ConfigError(
            f"{where} '{name}' does not fit task {task} (it is a {' and '.join(elsewhere)} loss); "
            f"losses that fit {task}: {', '.join(owner)}"
        )
    owner.check(name, where)


def check_config(cfg: Config) -> None:
    """Refuse loss names that do not fit the task: ``loss.name`` and, with labels made of attributes, each
    head's own."""
    check_loss(cfg.loss.name, cfg.task)
    if cfg.data.labels is None or (cfg.loss.attributes is None and all(m.heads == "single" for m in cfg.models)):
        return
    for attr in parse_labels(cfg.data.labels, key="data.labels").attributes:
        LOSSES.check(cfg.loss.head(attr.name).name, f"loss in 'loss.attributes.{attr.name}.name'")
