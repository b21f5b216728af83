"""The optimizer and learning-rate schedule of one fold, both timm's."""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from comp.config import TrainConfig


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """``train.optimizer`` through timm's factory (momentum only for SGD, which alone takes it)."""
    return create_optimizer_v2(
        model,
        opt=tcfg.optimizer,
        lr=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        **({"momentum": tcfg.momentum} if tcfg.optimizer == "sgd" else {}),  # type: ignore[arg-type]
    )


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
    for g in optimizer.param_groups:
        g["lr"] = lr
