"""Grad-CAM for timm models: where a fold model looked for one output (a class, a label or a target)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from comp.errors import CompError

MIN_CAM_SIDE = 4  # a 1x1 or 2x2 final map (small inputs) gives a flat, useless heatmap


def cam_layer(model: torch.nn.Module, hw) -> dict | None:
    """The deepest of timm's ``feature_info`` stages whose map is at least MIN_CAM_SIDE on its short side;
    None when that is the last stage (or the model lists none): then Grad-CAM uses ``forward_features``."""
    info = list(getattr(model, "feature_info", None) or [])
    deep_enough = [f for f in info if min(hw) / f.get("reduction", 1) >= MIN_CAM_SIDE]
    if not info or not deep_enough or deep_enough[-1] is info[-1]:
        return None
    return deep_enough[-1]


def gradcam(
    model: Any, x: torch.Tensor, class_idx: int | None = None, name: str = "", layer: Any = "auto"
) -> tuple[np.ndarray, int]:
    """Grad-CAM for one image ``x`` (1, C, H, W): (h, w) map in [0, 1] and the class it explains.

    The map is the last feature map (``forward_features``), or with ``layer`` (a ``feature_info`` entry;
    "auto" = ``cam_layer``) that stage's output, so small inputs still get a map with some resolution.
    Activations are kept from the forward pass; a tensor hook catches their gradient in the backward pass.
    """
    label = name or type(model).__name__
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise CompError(f"model {label} has no forward_features/forward_head; Grad-CAM needs a timm CNN")
    if layer == "auto":
        layer = cam_layer(model, x.shape[-2:])
    model.eval()
    store: dict = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        store["act"] = t
        t.register_hook(lambda g: store.__setitem__("grad", g))  # the gradient of that map, in backward
        return t

    if layer is None:
        feats = keep(model.forward_features(x.clone().requires_grad_(True)))
        logits, channels = model.forward_head(feats), getattr(model, "num_features", None)
    else:
        hook = model.get_submodule(layer["module"]).register_forward_hook(lambda m, i, out: keep(out))
        try:
            logits = model(x.clone().requires_grad_(True))
        finally:
            hook.remove()
        feats, channels = store["act"], layer.get("num_chs")
    if feats.ndim != 4:
        raise CompError(
            f"model {label} has no spatial feature map; Grad-CAM needs a CNN (its features are {feats.ndim}-D)"
        )
    cls = int(logits.argmax(1)[0]) if class_idx is None else int(class_idx)
    model.zero_grad(set_to_none=True)
    logits[0, cls].backward()
    act, grad = store["act"].detach()[0], store["grad"].detach()[0]
    if _channels_last(channels, feats):  # e.g. Swin, MaxViT: (H, W, C) maps
        act, grad = act.permute(2, 0, 1), grad.permute(2, 0, 1)
    weights = grad.mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * act).sum(0)).numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.astype(np.float32), cls


def _channels_last(channels: int | None, feats: torch.Tensor) -> bool:
    """timm's NHWC families (Swin, MaxViT, ...) return (B, H, W, C) maps; C is the stage's channel count."""
    return channels is not None and feats.shape[-1] == channels and feats.shape[1] != channels


def overlay(img: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.55 * img + 0.45 * heat).astype(np.uint8)
