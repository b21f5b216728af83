"""Test-time augmentation: a registry of views (NCHW float batch -> batch) and merging their probabilities.

Views are torch ops so the same code runs before the torch or onnxruntime engine and inside a fused ONNX
graph. Merging is plain numpy on probabilities, never on logits, so every engine shares it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from comp._registry import Registry
from comp.config import PredictConfig
from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import Config

TTA_OPS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("TTA view")
# the config's schema names the merges (predict.tta_merge, and so the CLI's --tta-merge); merge_probs implements them
MERGES: tuple[str, ...] = typing.get_args(typing.get_type_hints(PredictConfig)["tta_merge"])
_EPS = 1e-7


@TTA_OPS.register("hflip")
def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror left-right."""
    return x.flip(3)


@TTA_OPS.register("vflip")
def vflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror top-bottom."""
    return x.flip(2)


def _fit(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Centre-crop or zero-pad (zero is the mean colour after normalisation) back to ``h`` x ``w``."""
    dh, dw = x.shape[2] - h, x.shape[3] - w
    if dh >= 0 and dw >= 0:
        return x[:, :, dh // 2 : dh // 2 + h, dw // 2 : dw // 2 + w]
    return F.pad(x, (-dw // 2, -dw - (-dw // 2), -dh // 2, -dh - (-dh // 2)))


def rescale(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A view that zooms by ``factor`` (resize, then centre-crop or pad back to the input size)."""

    def op(x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return _fit(F.interpolate(x, size=size, mode="bilinear", align_corners=False), h, w)

    op.__doc__ = f"Zoom by {factor}."
    return op


for _f in (0.9, 1.1):
    TTA_OPS.add(f"scale{_f}", rescale(_f))


@TTA_OPS.register("shift")
def shift(x: torch.Tensor) -> torch.Tensor:
    """Translate right and down by 1/16 of the size (at least one pixel), padding with zeros."""
    h, w = int(x.shape[2]), int(x.shape[3])
    dy, dx = max(1, h // 16), max(1, w // 16)
    return F.pad(x, (dx, 0, dy, 0))[:, :, :h, :w]


def parse_tta(spec: str | Iterable[str] | None) -> list[str]:
    """'hflip,vflip' or a list -> validated view names (the original view is always included, not listed)."""
    if spec is None:
        return []
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    for name in names:
        TTA_OPS.check(name)
    if len(set(names)) != len(names):
        raise CompError(f"TTA view listed twice in {','.join(names)}; list each once")
    return names


def check_config(cfg: Config) -> None:
    """Refuse unknown view names in ``predict.tta`` (the whole option is checked again by parse_tta at predict)."""
    for name in cfg.predict.tta:
        TTA_OPS.check(name, "TTA view")


def check_merge(method: str) -> str:
    """Fail unless ``method`` names a merge."""
    if method not in MERGES:
        raise CompError(f"unknown TTA merge '{method}'; choose from {', '.join(MERGES)}")
    return method


def views(x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """The original batch followed by each named view of it."""
    return [x] + [TTA_OPS[n](x) for n in names]


def merge_probs(probs: np.ndarray, method: str = "mean") -> np.ndarray:
    """Merge (V, N, C) probabilities of V views into (N, C): arithmetic mean or renormalised geometric mean."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected (views, rows, classes), got shape {probs.shape}")
    if check_merge(method) == "mean":
        return probs.mean(0)
    geo = np.exp(np.log(np.clip(probs, _EPS, 1.0)).mean(0))
    return geo / geo.sum(1, keepdims=True)


def merge_torch(probs: list[torch.Tensor], method: str) -> torch.Tensor:
    """Same as :func:`merge_probs` on a list of (N, C) tensors, for the fused ONNX graph."""
    stacked = torch.stack(probs)
    if check_merge(method) == "mean":
        return stacked.mean(0)
    geo = torch.exp(torch.log(stacked.clamp(_EPS, 1.0)).mean(0))
    return geo / geo.sum(1, keepdim=True)
