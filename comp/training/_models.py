"""timm model creation by name, weights loading, and self-describing checkpoints."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from comp.errors import CompError, closest

CHECKPOINT_FORMAT = "comp.checkpoint/1"


def check_model_name(name: str) -> None:
    """Fail with the closest valid timm names when ``name`` is not a timm architecture."""
    arch = name.split(".")[0]  # allow pretrained tags: convnext_tiny.fb_in22k
    if not timm.is_model(arch):
        raise CompError(f"unknown timm model '{name}'{closest(arch, timm.list_models())}; see timm.list_models()")


def create_model(entry: dict, num_classes: int, train_cfg: dict | None = None) -> nn.Module:
    """Create the timm model of a config entry; ``pretrained`` is true (timm's source) or a local weights file."""
    name = entry["name"]
    check_model_name(name)
    train_cfg = train_cfg or {}
    kwargs = {"num_classes": num_classes, "in_chans": entry.get("in_chans", 3)}
    if train_cfg.get("drop_rate"):
        kwargs["drop_rate"] = train_cfg["drop_rate"]
    if train_cfg.get("drop_path_rate") is not None:
        kwargs["drop_path_rate"] = train_cfg["drop_path_rate"]
    pretrained = entry.get("pretrained", False)
    if isinstance(pretrained, str):
        path = Path(pretrained)
        if not path.is_file():
            raise CompError(f"pretrained weights file {path} not found; set models[].pretrained to a file or true/false")
        # timm loads a local file through the pretrained config and adapts the classifier to num_classes
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise CompError(
                f"could not fetch pretrained weights for '{name}' ({type(exc).__name__}); "
                "go online once, or set models[].pretrained to a local weights file"
            ) from None
        raise


def normalization(model: nn.Module) -> tuple[list[float], list[float]]:
    """Mean and std from the model's pretrained config (ImageNet defaults when it has none)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return [float(x) for x in cfg["mean"]], [float(x) for x in cfg["std"]]


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the classifier's parameters (what trains during a frozen-backbone warm-up)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        raise CompError(f"{type(model).__name__} exposes no classifier; set train.freeze_epochs=0")
    return {id(p) for p in head.parameters()}


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze every parameter outside the classifier."""
    head = head_parameters(model)
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(not frozen)


def make_checkpoint(model: nn.Module, meta: dict) -> dict:
    """A checkpoint dict that describes itself: timm name, classes, image size, eval transform, config."""
    required = ("model_name", "model_id", "classes", "image_size", "mean", "std", "eval_transform", "config")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": CHECKPOINT_FORMAT, **meta, "num_classes": len(meta["classes"]), "state_dict": state}


def load_checkpoint(path: str | Path) -> dict:
    """Load a comp checkpoint safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CompError(f"checkpoint {path} not found; train it with `comp train-folds` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CompError(f"checkpoint {path} is unreadable ({type(exc).__name__}); retrain that fold") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CompError(f"{path} is not a comp checkpoint (format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint (no download) and load its weights; returns (model in eval mode, ckpt)."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    kwargs = {"num_classes": ckpt["num_classes"], "in_chans": ckpt.get("in_chans", 3)}
    model = timm.create_model(ckpt["model_name"], pretrained=False, **kwargs)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
