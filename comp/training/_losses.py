"""Loss registry. Every loss takes logits (N, C) and soft targets (N, C), so label smoothing and
CutMix/MixUp need nothing special; class weights scale each class's share of the target."""

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

    def _reduce(self, per_class: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.class_weights is None:
            return per_class.sum(1).mean()
        w = torch.as_tensor(self.class_weights).to(per_class.dtype)
        # normalise by the batch's effective weight so the loss scale does not depend on the weights' scale
        return (per_class * w).sum() / (target * w).sum().clamp_min(1e-12)


@LOSSES.register("ce")
class SoftCrossEntropy(_Weighted):
    """Cross-entropy against soft targets."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        return self._reduce(-target * logp, target)


@LOSSES.register("focal")
class SoftFocal(_Weighted):
    """Focal loss (Lin et al. 2017) against soft targets: down-weights easy, confident examples."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        p = logp.exp()
        return self._reduce(-target * (1 - p).pow(self.gamma) * logp, target)


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


def build_loss(loss_cfg: LossConfig, targets: np.ndarray, num_classes: int) -> nn.Module:
    """The configured loss with its class weights."""
    cls = LOSSES[loss_cfg.name]
    return cls(class_weights(loss_cfg.class_weights, targets, num_classes), gamma=loss_cfg.focal_gamma)


def check_config(cfg: Config) -> None:
    """Refuse unknown loss names: ``loss.name`` and, with labels made of attributes, each head's own."""
    LOSSES.check(cfg.loss.name, "loss")
    if cfg.data.labels is None or (cfg.loss.attributes is None and all(m.heads == "single" for m in cfg.models)):
        return
    for attr in parse_labels(cfg.data.labels, key="data.labels").attributes:
        LOSSES.check(cfg.loss.head(attr.name).name, f"loss in 'loss.attributes.{attr.name}.name'")
