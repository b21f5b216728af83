"""Pruning across folds: what a trial reports to its pruner, and the pruners by name."""

from __future__ import annotations

import math

import numpy as np
import optuna

from comp.errors import CompError, closest
from comp.training._trainer import EpochEvent

PRUNERS = ("median", "hyperband", "wilcoxon", "none")


class FoldReporter:
    """Reports a trial's progress to its pruner in a way that stays comparable across folds.

    Median/Hyperband: one global step per epoch, ``step = (model, fold position) * epochs + epoch``, and the
    value is the mean over the folds seen so far of each fold's best score up to now: a trial is compared
    with others at the same fold and epoch, never with a restarted per-fold curve.
    Wilcoxon (built for k-fold): each finished fold's score is reported at step = its position, and the
    pruner tests whether this trial's per-fold scores are worse than the best trial's.
    """

    def __init__(self, trial: optuna.Trial, fold_order: list[int], wilcoxon: bool, greater_is_better: bool):
        self.trial, self.fold_order, self.wilcoxon = trial, fold_order, wilcoxon
        self.sign = 1.0 if greater_is_better else -1.0
        self.finished: dict[tuple[str, int], float] = {}
        self.models: list[str] = []

    def __call__(self, ev: EpochEvent) -> None:
        if ev.model_id not in self.models:
            self.models.append(ev.model_id)
        pos = self.models.index(ev.model_id) * len(self.fold_order) + self.fold_order.index(ev.fold)
        current = ev.best_score if ev.best_score is not None else ev.score
        if ev.fold_done:
            self.finished[(ev.model_id, ev.fold)] = current
        if self.wilcoxon:
            if ev.fold_done:
                self._report(current, pos)
            return
        if ev.fold_done:
            return
        seen = [v for k, v in self.finished.items() if k != (ev.model_id, ev.fold)] + [current]
        self._report(float(np.mean(seen)), pos * ev.epochs + ev.epoch)

    def _report(self, value: float, step: int) -> None:
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4f}")


def make_pruner(name: str, total_steps: int) -> optuna.pruners.BasePruner:
    """The pruner called ``name``; unknown names list the valid ones."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(total_steps, 1), reduction_factor=3)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CompError(f"unknown pruner '{name}'; choose from {', '.join(PRUNERS)}{closest(name, PRUNERS)}")
