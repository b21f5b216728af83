"""Test-time augmentation: a registry of views (NCHW float batch -> batch) and merging their predictions.

Besides the fixed views of ``TTA_OPS``, two families take a number after a colon (``TTA_FAMILIES``):
``scale:F`` zooms by F (resize, then centre-crop or zero-pad back to the model's size: the graph keeps one
input size, which every backbone accepts, where running at another size would not suit ViTs), and
``five_crop:F`` (``five_crop`` = 0.875) gives five views, the four corner crops and the centre crop of
F x the size, each resized back to the model's size. Every view is merged with the others by the merge.

Views are torch ops so the same code runs before the torch or onnxruntime engine and inside a fused ONNX
graph. Merging is plain numpy on predictions in the task's units (probabilities, never logits; target
values), so every engine shares it; ``merge_torch`` is the same arithmetic inside a fused graph.

Which merges fit is the task's (``Task.merges``): ``geometric`` renormalises rows into class probabilities,
so it is classification's only; ``median`` of class probabilities is renormalised too (classification's
``normalise``), while multi-label rows and regression values are never renormalised.
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
from comp.errors import CompError, ConfigError
from comp.tasks import get_task

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


def crop(frac: float, corner: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A view that crops ``frac`` of the height and width at ``corner`` (tl, tr, bl, br, c) and resizes the
    crop back to the input size (bilinear, as ``rescale``)."""

    def op(x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        top = {"t": 0, "b": h - ch, "c": (h - ch) // 2}[corner[0]]
        left = {"l": 0, "r": w - cw, "c": (w - cw) // 2}[corner[-1]]
        part = x[:, :, top : top + ch, left : left + cw]
        return F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)

    op.__doc__ = f"Crop {frac} of the size at {corner}, resized back."
    return op


def _scale_views(factor: float) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    return [rescale(factor)]


def _five_crop_views(frac: float) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    return [crop(frac, c) for c in ("tl", "tr", "bl", "br", "c")]


# family -> (views of a number, default number or None, (low, high) bounds, what the number is)
TTA_FAMILIES: dict[
    str, tuple[Callable[[float], list[Callable[[torch.Tensor], torch.Tensor]]], float | None, tuple[float, float], str]
] = {
    "scale": (_scale_views, None, (0.5, 2.0), "the zoom factor (e.g. scale:0.9)"),
    "five_crop": (_five_crop_views, 0.875, (0.5, 0.99), "the crop's share of the size (e.g. five_crop:0.875)"),
}


def _family(name: str) -> tuple[str, float] | None:
    """(family, number) of a parametrised view name, None for a fixed one; a CompError for a bad number."""
    fam, sep, arg = name.partition(":")
    if fam not in TTA_FAMILIES or (not sep and TTA_FAMILIES[fam][1] is None):
        return None
    make, default, (lo, hi), what = TTA_FAMILIES[fam]
    if not sep:
        assert default is not None
        return fam, default
    try:
        value = float(arg)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:
        raise CompError(f"TTA view '{name}': the number after '{fam}:' is {what}, between {lo} and {hi}")
    return fam, value


def canonical_view(name: str) -> str:
    """The view's name as graphs and files record it (``five_crop`` -> ``five_crop:0.875``); unknown names list
    the fixed views and the families."""
    fam = _family(name)
    if fam is not None:
        return f"{fam[0]}:{fam[1]:g}"
    if name not in TTA_OPS:
        families = ", ".join(f"{f}:N" for f in TTA_FAMILIES)
        try:
            TTA_OPS.check(name, "TTA view")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (or a family: {families})") from None
    return name


def view_ops(name: str) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The view functions a (canonical or not) view name stands for: one, or five for ``five_crop``."""
    fam = _family(name)
    if fam is None:
        return [TTA_OPS[name]]
    return TTA_FAMILIES[fam[0]][0](fam[1])


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
    names = [canonical_view(name) for name in names]
    if len(set(names)) != len(names):
        raise CompError(f"TTA view listed twice in {','.join(names)}; list each once")
    return names


def check_config(cfg: Config) -> None:
    """Refuse unknown view names in ``predict.tta`` (the whole option is checked again by parse_tta at predict)
    and a ``predict.tta_merge`` that does not fit the config's task."""
    for name in cfg.predict.tta:
        canonical_view(name)
    check_merge(cfg.predict.tta_merge, cfg.task)


def check_merge(method: str, task: str = "classification") -> str:
    """Fail unless ``method`` names a merge that fits ``task``, naming the merges that do."""
    if method not in MERGES:
        raise CompError(f"unknown TTA merge '{method}'; choose from {', '.join(MERGES)}")
    fits = get_task(task).merges
    if method not in fits:
        raise ConfigError(
            f"TTA merge '{method}' does not fit task {task} (it renormalises rows into class probabilities); "
            f"merges that fit {task}: {', '.join(fits)}"
        )
    return method


def views(x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """The original batch followed by each named view of it (five for ``five_crop``)."""
    return [x] + [op(x) for n in names for op in view_ops(n)]


def merge_probs(probs: np.ndarray, method: str = "mean", task: str = "classification") -> np.ndarray:
    """Merge (V, N, C) predictions of V views into (N, C): the arithmetic mean, the median (class rows
    renormalised), or the renormalised geometric mean (classification only)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected (views, rows, columns), got shape {probs.shape}")
    method = check_merge(method, task)
    if method == "mean":
        return probs.mean(0)
    if method == "median":
        return get_task(task).normalise(np.median(probs, axis=0))
    geo = np.exp(np.log(np.clip(probs, _EPS, 1.0)).mean(0))
    return geo / geo.sum(1, keepdims=True)


def _median_torch(xs: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise median of equally shaped tensors (the mean of the two middle values for an even count), as
    np.median. A sorting network of minimum/maximum: it exports to ONNX at every opset (torch.median returns the
    lower middle value, and Sort/TopK need newer opsets), and the few views of TTA keep it small."""
    s = list(xs)
    for i in range(len(s)):
        for j in range(i % 2, len(s) - 1, 2):  # odd-even transposition: len(s) rounds sort any input
            s[j], s[j + 1] = torch.minimum(s[j], s[j + 1]), torch.maximum(s[j], s[j + 1])
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def merge_torch(probs: list[torch.Tensor], method: str, task: str = "classification") -> torch.Tensor:
    """Same as :func:`merge_probs` on a list of (N, C) tensors, for the fused ONNX graph."""
    method = check_merge(method, task)
    if method == "mean":
        return torch.stack(probs).mean(0)
    if method == "median":
        med = _median_torch(probs)
        if get_task(task).activation == "softmax":  # the task's normalise: class rows sum to one
            med = med.clamp_min(0.0)
            med = med / med.sum(1, keepdim=True)
        return med
    geo = torch.exp(torch.log(torch.stack(probs).clamp(_EPS, 1.0)).mean(0))
    return geo / geo.sum(1, keepdim=True)
