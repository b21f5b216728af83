"""Training on soft targets looked up by row: pseudo-labelled rows (``data.extra_train``) and distillation
(``loss.distill``), plugged into the fold trainer as its training dataset, batch mixer and loss.

The training dataset yields each row's position instead of its class; ``SoftMixer`` looks up the row's
targets and the teacher's, smooths the labels and mixes both with the same CutMix/MixUp draw as the images.
``DistillLoss`` splits them again. Per task:

- classification: a label distribution per row (one-hot for a labelled row or a hard pseudo-label,
  probabilities for a soft one); the teacher's probabilities softened as softmax(log p / T); KL divergence;
- multilabel: 0/1 labels or pseudo-label probabilities per label; the teacher's probabilities softened per
  label as sigmoid(logit p / T); per-label binary cross-entropy (as a KL divergence: less the teacher's
  entropy, so a student that matches scores 0);
- regression: target values in the model's scaled space (the fold's ``OutputSpec.to_model``, fitted on the
  labelled training part only); the teacher's predictions in the same space; mean squared error (no
  temperature: values have none).

The validation part is untouched: the trainer's own ``valid_idx`` over the labelled rows.
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
from comp.data._augment import BatchMixer, mix_weights
from comp.data._sample_weights import by_position
from comp.data._table import ImageDataset
from comp.training._losses import row_mean
from comp.training._outputs import OutputSpec

if TYPE_CHECKING:
    from comp.training._targets import TrainingTargets


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the distribution the teacher's logits give at temperature T (rows sum to 1)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-12, None)) / temperature
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)


def soften_labels(probs: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit p / T) per label: what the teacher's logits give at temperature T."""
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p)) / temperature))


_TEACHER: dict[str, Callable[[np.ndarray, float, OutputSpec], np.ndarray]] = {
    "classification": lambda p, t, spec: soften(p, t),
    "multilabel": lambda p, t, spec: soften_labels(p, t),
    "regression": lambda p, t, spec: spec.to_model(p),  # into the space the fold's network predicts; no temperature
}


def teacher_targets(task: str, probs: np.ndarray, temperature: float, output: OutputSpec) -> np.ndarray:
    """The teacher's rows as the distillation term of ``task`` compares them with the student's outputs."""
    return _TEACHER[task](probs, temperature, output)


class SoftMixer(BatchMixer):
    """``BatchMixer`` for targets looked up by row: labels (and teacher probabilities) of shape (rows, C).

    Returns the (mixed) images and the targets ``[labels | teacher]`` as one (B, C) or (B, 2C) tensor.
    For one-hot labels it gives exactly what ``BatchMixer`` gives for the integer classes; with ``per_label``
    (multi-label and value rows) labels are smoothed per column towards 1/2, as ``BatchMixer`` smooths float
    targets.
    """

    def __init__(
        self,
        mix_cfg: MixupConfig,
        num_classes: int,
        smoothing: float,
        labels: torch.Tensor,
        teacher: torch.Tensor | None = None,
        *,
        per_label: bool = False,
    ):
        super().__init__(mix_cfg, num_classes, smoothing)
        self.labels, self.teacher = labels, teacher
        self.smooth_to = 2 if per_label else num_classes

    def to(self, device: torch.device) -> SoftMixer:
        self.labels = self.labels.to(device)
        self.teacher = None if self.teacher is None else self.teacher.to(device)
        return self

    def mix(
        self, x: torch.Tensor, rows: torch.Tensor, epoch: int, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        rows = rows.to(self.labels.device)
        y = self.labels[rows] * (1.0 - self.smoothing) + self.smoothing / self.smooth_to
        t = None if self.teacher is None else self.teacher[rows]
        if self.mixes(x, epoch):
            lam: Any = self.draw(x)
            y = y * lam + y.flip(0) * (1.0 - lam)
            t = None if t is None else t * lam + t.flip(0) * (1.0 - lam)
            weight = mix_weights(weight, lam)
        return x, y if t is None else torch.cat([y, t], 1), weight


def _class_kl(logits: torch.Tensor, teacher: torch.Tensor, t: float, squash: bool) -> torch.Tensor:
    logq = F.log_softmax(logits.float() / t, dim=1)
    return (teacher * (teacher.clamp_min(1e-12).log() - logq)).sum(1)


def _label_kl(logits: torch.Tensor, teacher: torch.Tensor, t: float, squash: bool) -> torch.Tensor:
    # per-label binary cross-entropy against teacher_T, less the teacher's entropy (the same gradient)
    bce = F.binary_cross_entropy_with_logits(logits.float() / t, teacher, reduction="none")
    p = teacher.clamp(1e-12, 1 - 1e-12)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return (bce - entropy).mean(1)


def _value_mse(out: torch.Tensor, teacher: torch.Tensor, t: float, squash: bool) -> torch.Tensor:
    z = torch.sigmoid(out.float()) if squash else out.float()
    return F.mse_loss(z, teacher, reduction="none").mean(1)


_TERMS = {  # task -> (soft term per row, whether it is scaled by T^2)
    "classification": (_class_kl, True),
    "multilabel": (_label_kl, True),
    "regression": (_value_mse, False),
}


class DistillLoss(nn.Module):
    """``(1 - alpha) * base(logits, labels) + alpha * soft`` with targets ``[labels | teacher]``.

    - classification: ``soft = T^2 * KL(teacher_T || softmax(logits / T))`` (Hinton et al. 2015; T^2 keeps the
      soft term's gradient scale independent of T);
    - multilabel: ``soft = T^2 * mean over labels of KL(teacher_T || sigmoid(logits / T))`` (binary);
    - regression: ``soft = MSE(output, teacher)`` in the model's scaled space (``squash``: the output ends in
      a sigmoid, as with the bce loss on min-max scaled targets)."""

    def __init__(
        self,
        base: nn.Module,
        num_classes: int,
        alpha: float,
        temperature: float,
        *,
        task: str = "classification",
        squash: bool = False,
    ):
        super().__init__()
        self.base, self.num_classes, self.alpha, self.temperature = base, num_classes, alpha, temperature
        self.task, self.squash = task, squash

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        c = self.num_classes
        labels, teacher = target[:, :c], target[:, c:]
        hard = self.base(logits, labels) if weight is None else self.base(logits, labels, weight)
        term, scaled = _TERMS[self.task]
        soft = row_mean(term(logits, teacher, self.temperature, self.squash), weight)
        if not scaled:
            return (1.0 - self.alpha) * hard + self.alpha * soft
        return (1.0 - self.alpha) * hard + self.alpha * self.temperature**2 * soft


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
    output: OutputSpec | None = None,
    weights: np.ndarray | None = None,
) -> TrainingPart:
    """The fold's labelled training rows ``train_idx`` (of ``paths``, with integer ``labels`` or a target
        matrix in the target's units) plus every pseudo-labelled row, targets looked up by row; ``loss`` (the base
        loss) is wrapped for distillation when there is a teacher. ``output`` is the fold's output head: matrix
        targets (labelled, pseudo and teacher rows alike) go through its ``to_model``, the regression scaling
        fitted on the labelled training part. The validation rows stay the trainer's own. ``weights``: the sample
    weights of the training part (``training_weights``: the labelled rows ``train_idx`` in order, then the
    pseudo rows)."""
    n, k = len(paths), len(targets.classes)
    spec = output if output is not None else OutputSpec()
    extra = targets.extra
    all_paths = list(paths) + ([] if extra is None else list(extra.paths))
    matrix = np.asarray(labels).ndim == 2
    if matrix:
        rows = np.asarray(labels, np.float32)
    else:
        rows = np.zeros((n, k), np.float32)
        rows[np.arange(n), labels] = 1.0
    if extra is not None:
        rows = np.concatenate([rows, extra.labels])
    if matrix:
        rows = spec.to_model(rows)  # regression: scaled as the network is trained; identity for labels
        if spec.activation == "sigmoid":  # a pseudo value beyond the training part's range: the sigmoid's end
            rows = np.clip(rows, 0.0, 1.0)
    row_w = None if weights is None else by_position(weights, train_idx, len(all_paths))
    ds = ImageDataset(all_paths, np.arange(len(all_paths)), transform, reader=reader, weights=row_w)
    idx = np.concatenate([train_idx, n + np.arange(targets.n_extra)]).astype(np.int64)
    teacher = None
    if targets.teacher is not None:
        soft = teacher_targets(targets.task, targets.teacher.probs, targets.teacher.temperature, spec)
        teacher = torch.from_numpy(np.asarray(soft, np.float32))
    mixer = SoftMixer(mix_cfg, k, smoothing, torch.from_numpy(rows), teacher, per_label=matrix).to(device)
    if targets.teacher is not None:
        squash = spec.activation == "sigmoid"
        loss = DistillLoss(
            loss, k, targets.teacher.alpha, targets.teacher.temperature, task=targets.task, squash=squash
        ).to(device)
    return TrainingPart(ds, idx, mixer, loss)
