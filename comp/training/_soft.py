"""Training on soft targets looked up by row: pseudo-labelled rows (``data.extra_train``) and distillation
(``loss.distill``), plugged into the fold trainer as its training dataset, batch mixer and loss.

The training dataset yields each row's position instead of its class; ``SoftMixer`` looks up the row's
label distribution (one-hot for a labelled row or a hard pseudo-label, probabilities for a soft one) and the
teacher's temperature-softened probabilities, smooths the labels and mixes both with the same CutMix/MixUp
draw as the images. ``DistillLoss`` splits them again. The validation part is untouched: the trainer's own
``valid_idx`` over the labelled rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comp.config import MixupConfig
from comp.data._augment import BatchMixer
from comp.data._table import ImageDataset

if TYPE_CHECKING:
    from comp.training._targets import TrainingTargets


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the distribution the teacher's logits give at temperature T (rows sum to 1)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None)) / temperature
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)


class SoftMixer(BatchMixer):
    """``BatchMixer`` for targets looked up by row: labels (and teacher probabilities) of shape (rows, C).

    Returns the (mixed) images and the targets ``[labels | teacher]`` as one (B, C) or (B, 2C) tensor.
    For one-hot labels it gives exactly what ``BatchMixer`` gives for the integer classes.
    """

    def __init__(
        self,
        mix_cfg: MixupConfig,
        num_classes: int,
        smoothing: float,
        labels: torch.Tensor,
        teacher: torch.Tensor | None = None,
    ):
        super().__init__(mix_cfg, num_classes, smoothing)
        self.labels, self.teacher = labels, teacher

    def to(self, device: torch.device) -> SoftMixer:
        self.labels = self.labels.to(device)
        self.teacher = None if self.teacher is None else self.teacher.to(device)
        return self

    def __call__(self, x: torch.Tensor, rows: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = rows.to(self.labels.device)
        y = self.labels[rows] * (1.0 - self.smoothing) + self.smoothing / self.num_classes
        t = None if self.teacher is None else self.teacher[rows]
        if self.mixes(x, epoch):
            lam: Any = self.draw(x)
            y = y * lam + y.flip(0) * (1.0 - lam)
            t = None if t is None else t * lam + t.flip(0) * (1.0 - lam)
        return x, y if t is None else torch.cat([y, t], 1)


class DistillLoss(nn.Module):
    """``(1 - alpha) * base(logits, labels) + alpha * T^2 * KL(teacher_T || softmax(logits / T))`` (Hinton et al.
    2015; T^2 keeps the soft term's gradient scale independent of T). Targets are ``[labels | teacher_T]``."""

    def __init__(self, base: nn.Module, num_classes: int, alpha: float, temperature: float):
        super().__init__()
        self.base, self.num_classes, self.alpha, self.temperature = base, num_classes, alpha, temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        labels, teacher = target[:, :c], target[:, c:]
        hard = self.base(logits, labels)
        logq = F.log_softmax(logits.float() / self.temperature, dim=1)
        kl = (teacher * (teacher.clamp_min(1e-12).log() - logq)).sum(1).mean()
        return (1.0 - self.alpha) * hard + self.alpha * self.temperature**2 * kl


@dataclass
class TrainingPart:
    """What one fold trains on: the dataset, its rows (positions in the dataset), the batch mixer and the loss."""

    dataset: ImageDataset
    indices: np.ndarray
    mixer: BatchMixer
    loss: nn.Module


def training_part(
    targets: TrainingTargets,
    *,
    paths: Sequence[Path],
    labels: np.ndarray,
    train_idx: np.ndarray,
    reader: Callable[[Path], np.ndarray],
    transform: Any,
    mix_cfg: MixupConfig,
    smoothing: float,
    loss: nn.Module,
    device: torch.device,
) -> TrainingPart:
    """The fold's labelled training rows ``train_idx`` (of ``paths``, with integer ``labels``) plus every
    pseudo-labelled row, targets looked up by row; ``loss`` (the base loss) is wrapped for distillation when
    there is a teacher. The validation rows stay the trainer's own."""
    n, k = len(paths), len(targets.classes)
    extra = targets.extra
    all_paths = list(paths) + ([] if extra is None else list(extra.paths))
    rows = np.zeros((n, k), np.float32)
    rows[np.arange(n), labels] = 1.0
    if extra is not None:
        rows = np.concatenate([rows, extra.labels])
    ds = ImageDataset(all_paths, np.arange(len(all_paths)), transform, reader=reader)
    idx = np.concatenate([train_idx, n + np.arange(targets.n_extra)]).astype(np.int64)
    teacher = (
        None
        if targets.teacher is None
        else torch.from_numpy(soften(targets.teacher.probs, targets.teacher.temperature).astype(np.float32))
    )
    mixer = SoftMixer(mix_cfg, k, smoothing, torch.from_numpy(rows), teacher).to(device)
    if targets.teacher is not None:
        loss = DistillLoss(loss, k, targets.teacher.alpha, targets.teacher.temperature).to(device)
    return TrainingPart(ds, idx, mixer, loss)
