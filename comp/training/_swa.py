"""Stochastic weight averaging (Izmailov et al. 2018) for one fold: the weights of every epoch from
``train.swa_start`` on are averaged (``torch.optim.swa_utils.AveragedModel``), BatchNorm statistics are recomputed
for the averaged weights on the fold's training rows, and the average is evaluated and saved like the EMA
weights. From ``swa_start`` the learning rate ramps linearly, over ``swa_anneal_epochs``, from the scheduled
value to ``train.swa_lr`` and stays there (with ``swa_lr`` unset the schedule goes on).

Everything here is resumable: the averaged weights and their count are part of the fold's state file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from comp.config import TrainConfig
from comp.training._optim import set_lr


class SWA:
    def __init__(self, model: nn.Module, tcfg: TrainConfig, steps_per_epoch: int):
        assert tcfg.swa_start is not None
        self.start = tcfg.swa_start
        self.lr, self.anneal = tcfg.swa_lr, max(1, round(tcfg.swa_anneal_epochs * steps_per_epoch))
        self.first_step = self.start * steps_per_epoch  # the global optimizer step where SWA begins
        self.averaged = AveragedModel(model)
        self.from_lr: float | None = None

    def active(self, epoch: int) -> bool:
        return epoch >= self.start

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.get_buffer("n_averaged").item())

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def controls_lr(self, epoch: int) -> bool:
        """Whether the SWA learning rate replaces the schedule in this epoch."""
        return self.active(epoch) and self.lr is not None

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int, scheduled: float) -> None:
        """The LR at global optimizer ``step``: a linear ramp from the schedule's value at SWA's start."""
        assert self.lr is not None
        if self.from_lr is None:
            self.from_lr = scheduled
        t = min(1.0, max(0, step - self.first_step) / self.anneal)
        set_lr(optimizer, self.from_lr + (self.lr - self.from_lr) * t)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    @torch.no_grad()
    def update_bn(self, loader, prepare) -> None:
        """Recompute BatchNorm running statistics of the averaged weights over ``loader`` (``prepare`` turns a batch
        into the model's inputs, moved and normalised): a cumulative average, as ``torch.optim.swa_utils.update_bn`` does."""
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = {}
        for m in norms:
            m.reset_running_stats()
            momenta[m] = m.momentum
            m.momentum = None
        was_training = self.module.training
        self.module.train()
        for batch in loader:
            self.module(*prepare(batch))
        for m in norms:
            m.momentum = momenta[m]
        self.module.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "from_lr": self.from_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.from_lr = state["from_lr"]
