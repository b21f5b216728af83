"""The optimizer and learning-rate schedule of one fold, both timm's."""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from comp.config import TrainConfig


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` through timm's factory (momentum only for SGD, which alone takes it).

    With ``train.layer_decay`` or ``train.head_lr_scale``, the parameters come in groups from timm's layer
    grouping (``param_groups_layer_decay``: no weight decay on norms and biases, as timm's factory does anyway),
    the classifier in groups of its own, each group holding its LR scale (``lr_scale``, which timm's schedulers
    apply) and its actual learning rate (``lr``), so the LR the optimizer uses is right from the first step,
    whatever sets it later (``set_lr`` applies the scale too)."""
    extra = {"momentum": tcfg.momentum} if tcfg.optimizer == "sgd" else {}
    if tcfg.layer_decay is None and tcfg.head_lr_scale == 1.0:
        return create_optimizer_v2(model, opt=tcfg.optimizer, lr=tcfg.lr, weight_decay=tcfg.weight_decay, **extra)  # type: ignore[arg-type]
    groups = lr_groups(model, tcfg)
    return create_optimizer_v2(groups, opt=tcfg.optimizer, lr=tcfg.lr, weight_decay=tcfg.weight_decay, **extra)  # type: ignore[arg-type]


def lr_groups(model: torch.nn.Module, tcfg: TrainConfig) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise LR decay and the head's own LR scale (see ``make_optimizer``)."""
    from timm.optim import param_groups_layer_decay

    from comp.training._models import head_parameters

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # type: ignore[operator]
    groups = param_groups_layer_decay(
        model, weight_decay=tcfg.weight_decay, no_weight_decay_list=skip, layer_decay=tcfg.layer_decay or 1.0
    )
    head = head_parameters(model)
    out: list[dict[str, Any]] = []
    for g in groups:
        for is_head in (False, True):
            params = [p for p in g["params"] if (id(p) in head) == is_head]
            if not params:
                continue
            scale = float(g.get("lr_scale", 1.0)) * (tcfg.head_lr_scale if is_head else 1.0)
            out.append(
                {
                    "params": params,
                    "weight_decay": g["weight_decay"],
                    "lr_scale": scale,
                    "lr": tcfg.lr * scale,  # the actual learning rate, from the first step on
                    "initial_lr": tcfg.lr,  # what timm's scheduler schedules (it multiplies by lr_scale)
                }
            )
    return out


def make_scheduler(optimizer, tcfg: TrainConfig, steps_per_epoch: int):
    """Per-step cosine decay with a warmup prefix over the epochs after ``train.freeze_epochs``; None for ``none``."""
    if tcfg.scheduler == "none":
        return None
    ft_steps = max(1, (tcfg.epochs - tcfg.freeze_epochs) * steps_per_epoch)
    warm = int(round(tcfg.warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(
        optimizer,
        t_initial=ft_steps,
        lr_min=tcfg.lr * tcfg.min_lr_ratio,
        warmup_t=warm,
        warmup_lr_init=tcfg.lr * tcfg.min_lr_ratio,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def set_lr(optimizer, lr: float) -> None:
    """Every group's learning rate: ``lr`` times the group's own scale (layer-wise decay, the head's)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
