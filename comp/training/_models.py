"""timm model creation by name, weights loading, and self-describing checkpoints."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import timm
from torch import nn

from comp.config import ModelConfig, TrainConfig
from comp.config._features import tower_options
from comp.data._attributes import Scheme
from comp.data._features import FeatureScaler
from comp.errors import CompError, closest
from comp.run._checkpoint import Checkpoint, load_checkpoint
from comp.training._heads import AttributeHeads, attribute_heads, from_description
from comp.training._tower import MetadataTower, tower_from_description
from comp.training._weights import MAKE_FOLDER, check_local_weights


def check_model_name(name: str) -> None:
    """Fail with the closest valid timm names when ``name`` is not a timm architecture."""
    arch = name.split(".")[0]  # allow pretrained tags: convnext_tiny.fb_in22k
    if not timm.is_model(arch):
        raise CompError(f"unknown timm model '{name}'{closest(arch, timm.list_models())}; see timm.list_models()")


def create_model(
    entry: ModelConfig,
    num_classes: int,
    train_cfg: TrainConfig | None = None,
    *,
    scheme: Scheme | None = None,
    scaler: FeatureScaler | None = None,
) -> nn.Module:
    """Create the timm model of a config entry; ``pretrained`` is true (timm's source) or a local weights file.

    An entry with ``heads: attributes`` gets a headless backbone and one head per attribute of ``scheme``; one
    with ``metadata`` a headless backbone, a metadata tower over ``scaler``'s encoding and one classifier.
    """
    if entry.metadata is not None:
        if scaler is None:
            raise CompError(
                f"model '{entry.model_id}' has a metadata tower but the data has no data.features; set them"
            )
        backbone = _timm_model(entry, num_classes, train_cfg)  # same start as the entry without tower (see below)
        backbone.reset_classifier(0)  # type: ignore[operator]
        opts = tower_options(entry.metadata)
        return MetadataTower(backbone, num_classes, scaler, int(opts["hidden"]), float(opts["dropout"]))
    if entry.heads == "attributes":
        if scheme is None:
            raise CompError(f"model '{entry.model_id}' has heads: attributes but the data has no data.labels; set them")
        # built with its usual classifier, then dropped: the backbone starts from the same weights as the
        # entry's single-head model under the same seed, so the two compare on their heads alone
        backbone = _timm_model(entry, num_classes, train_cfg)
        backbone.reset_classifier(0)  # type: ignore[operator]
        return attribute_heads(backbone, scheme)
    return _timm_model(entry, num_classes, train_cfg)


def _timm_model(entry: ModelConfig, num_classes: int, train_cfg: TrainConfig | None) -> nn.Module:
    name = entry.name
    check_model_name(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": entry.in_chans}
    if train_cfg is not None and train_cfg.drop_rate:
        kwargs["drop_rate"] = train_cfg.drop_rate
    if train_cfg is not None and train_cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = train_cfg.drop_path_rate
    pretrained = entry.pretrained
    if isinstance(pretrained, str):
        path = check_local_weights(pretrained, name, kwargs)
        # timm loads a local file through the pretrained config and adapts the classifier to num_classes
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError, AttributeError) as exc:
            why = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise CompError(
                f"pretrained weights file {path} does not fit '{name}' ({why}); give weights of that "
                "architecture (a state_dict saved with torch.save or safetensors) or pretrained: false"
            ) from None
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise CompError(
                f"could not fetch pretrained weights for '{name}' ({type(exc).__name__}); {MAKE_FOLDER}"
            ) from None
        raise


def normalization(model: nn.Module, in_chans: int = 3) -> tuple[list[float], list[float]]:
    """Mean and std from the model's pretrained config (ImageNet defaults when it has none); one value each
    (their average) for a one-channel model, whose input is the grayscale of the RGB image."""
    cfg = timm.data.resolve_data_config({}, model=model)
    mean, std = [float(x) for x in cfg["mean"]], [float(x) for x in cfg["std"]]
    if in_chans == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return mean, std


def head_parameters(model: nn.Module) -> set[int]:
    """ids of the classifier's parameters (what trains during a frozen-backbone warm-up)."""
    if isinstance(model, MetadataTower):  # the tower is as new as the classifier: it trains in the warm-up too
        return {id(p) for m in model.warmup_modules() for p in m.parameters()}
    head = model.get_classifier() if hasattr(model, "get_classifier") else None  # type: ignore[operator]
    if not isinstance(head, nn.Module):
        raise CompError(f"{type(model).__name__} exposes no classifier; set train.freeze_epochs=0")
    return {id(p) for p in head.parameters()}


def zero_head(model: nn.Module) -> None:
    """Zero the classifier's weights and bias, so the untrained model predicts 0 for every output (the centre of
    standardised regression targets) instead of a random projection of its features."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None  # type: ignore[operator]
    for module in head.modules() if isinstance(head, nn.Module) else ():
        if isinstance(module, nn.Linear | nn.Conv2d):
            nn.init.zeros_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze every parameter outside the classifier."""
    head = head_parameters(model)
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(not frozen)


def model_from_checkpoint(ckpt: Checkpoint | str | Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model of a checkpoint (no download) and load its weights; returns (model in eval mode, ckpt)."""
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    meta = ckpt.meta
    where = str(ckpt.path) if ckpt.path is not None else "checkpoint"
    name = meta.model_name
    if not isinstance(name, str) or ":" in name or not timm.is_model(name.split(".")[0]):
        # a hub or local-dir name would make timm fetch or read code and weights from elsewhere
        raise CompError(f"{where}: model_name {name!r} is not a timm architecture; retrain that fold with comp")
    num_classes = 0 if meta.heads or meta.tower else meta.num_classes
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=meta.in_chans)
    if meta.heads:
        model = from_description(model, meta.heads)
    if meta.tower:
        model = tower_from_description(model, meta.num_classes, meta.tower)
    try:
        model.load_state_dict(ckpt.state_dict)
    except (RuntimeError, KeyError, TypeError) as exc:
        why = " ".join(str(exc).split())[:160]
        raise CompError(f"{where}: its weights do not fit {name} ({why}); retrain that fold") from None
    return model.eval(), ckpt


def heads_description(model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint needs besides timm's name to rebuild ``model``: the heads of a multi-head model."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    return model.describe() if isinstance(model, AttributeHeads) else None
