"""What turns a network's outputs into a task's predictions, and the target scaling regression trains in.

- classification: softmax rows;
- multilabel: a sigmoid per label;
- regression: the network predicts the target scaled with statistics of the fold's *training part* only:
  standardised (``(y - mean) / std``) for the MSE and Huber losses, or min-max scaled into [0, 1] behind a
  sigmoid for the BCE loss; predictions are mapped back to the target's units.

``OutputSpec`` is plain data stored in the checkpoint (``CheckpointMeta.output``); ``OutputHead`` is the torch
module that applies it, inside validation, prediction and every exported ONNX graph, so what leaves a model is
always in the competition's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

ACTIVATIONS = ("softmax", "sigmoid", "identity")


@dataclass(frozen=True)
class OutputSpec:
    """``prediction = activation(logits) * scale + shift`` (no affine part when ``shift`` is None)."""

    activation: str = "softmax"
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "activation": self.activation,
            "shift": None if self.shift is None else list(self.shift),
            "scale": None if self.scale is None else list(self.scale),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> OutputSpec:
        """A checkpoint's ``output`` entry; checkpoints written before it existed are softmax classifiers."""
        if not raw:
            return cls()
        if raw.get("activation") not in ACTIVATIONS:
            raise ValueError(f"unknown output activation {raw.get('activation')!r}")
        shift, scale = raw.get("shift"), raw.get("scale")
        return cls(
            str(raw["activation"]),
            None if shift is None else tuple(float(v) for v in shift),
            None if scale is None else tuple(float(v) for v in scale),
        )

    def to_model(self, y: np.ndarray) -> np.ndarray:
        """Targets in the space the network is trained in (the inverse of the affine part)."""
        if self.shift is None or self.scale is None:
            return np.asarray(y, dtype=np.float32)
        return ((np.asarray(y, np.float64) - np.asarray(self.shift)) / np.asarray(self.scale)).astype(np.float32)

    def to_units(self, z: np.ndarray) -> np.ndarray:
        """The affine part alone (for values already past the activation)."""
        if self.shift is None or self.scale is None:
            return np.asarray(z, dtype=np.float64)
        return np.asarray(z, np.float64) * np.asarray(self.scale) + np.asarray(self.shift)


def output_spec(task: str, loss: str, train_targets: np.ndarray) -> OutputSpec:
    """The output of a model of ``task`` trained with ``loss`` on ``train_targets`` (the fold's training part)."""
    if task == "classification":
        return OutputSpec("softmax")
    if task == "multilabel":
        return OutputSpec("sigmoid")
    y = np.asarray(train_targets, dtype=np.float64).reshape(len(train_targets), -1)
    if loss == "bce":  # min-max into [0, 1]: the sigmoid's range covers the training part's targets
        lo, hi = y.min(0), y.max(0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return OutputSpec("sigmoid", tuple(map(float, lo)), tuple(map(float, span)))
    mean, std = y.mean(0), y.std(0)
    return OutputSpec("identity", tuple(map(float, mean)), tuple(map(float, np.where(std > 0, std, 1.0))))


class OutputHead(nn.Module):
    """``logits -> predictions`` of an :class:`OutputSpec`, in float32."""

    def __init__(self, spec: OutputSpec):
        super().__init__()
        self.activation = spec.activation
        self.affine = spec.shift is not None and spec.scale is not None
        self.register_buffer("shift", torch.tensor(spec.shift or (0.0,), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(spec.scale or (1.0,), dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits if logits.dtype == torch.float32 else logits.float()
        if self.activation == "softmax":
            z = torch.softmax(z, dim=1)
        elif self.activation == "sigmoid":
            z = torch.sigmoid(z)
        if self.affine:
            z = z * self.get_buffer("scale") + self.get_buffer("shift")
        return z


class Predictor(nn.Module):
    """A fold model followed by its output head: images in, predictions in the task's units out."""

    def __init__(self, model: nn.Module, spec: OutputSpec):
        super().__init__()
        self.model = model
        self.head = OutputHead(spec)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Images (and, for a metadata tower, the raw metadata matrix: NaN where missing) -> predictions."""
        if meta is None:
            return self.head(self.model(x))
        return self.head(cast(Any, self.model).forward_raw(x, meta))
