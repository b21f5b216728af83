"""Metric registry: name -> function of (integer targets, probability matrix) and its direction.

Plain numpy/sklearn; no torch. Every metric takes ``y_true`` of shape (n,) with class indices and
``probs`` of shape (n, n_classes) whose rows sum to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn import metrics as skm

from comp._registry import Registry

if TYPE_CHECKING:
    from comp.config import Config


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool
    needs_proba: bool  # False: the metric only looks at the argmax

    def __call__(self, y_true, probs) -> float:
        return float(self.fn(np.asarray(y_true), np.asarray(probs, dtype=np.float64)))

    def better(self, a: float, b: float) -> bool:
        """True when score ``a`` beats score ``b``."""
        if b is None or np.isnan(b):
            return not np.isnan(a)
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf

    @property
    def direction(self) -> str:
        return "maximize" if self.greater_is_better else "minimize"


METRICS: Registry[Metric] = Registry("metric")


def register(name: str, greater_is_better: bool = True, needs_proba: bool = False):
    """Decorator: add ``fn(y_true, probs) -> float`` to the registry under ``name``."""

    def deco(fn):
        METRICS.add(name, Metric(name, fn, greater_is_better, needs_proba))
        return fn

    return deco


def get_metric(name: str) -> Metric:
    """Look up a metric by name; unknown names list the valid ones."""
    return METRICS.get(name)


def check_config(cfg: Config) -> None:
    """Refuse a config whose ``metric`` is not registered; stages that score call it in their preflight."""
    METRICS.check(cfg.metric, "metric")


def _labels(probs: np.ndarray) -> np.ndarray:
    return np.arange(probs.shape[1])


@register("macro_f1")
def macro_f1(y_true, probs):
    # labels=None: classes absent from both truth and prediction (e.g. in one fold) do not count as F1=0
    return skm.f1_score(y_true, probs.argmax(1), average="macro", zero_division=0)


@register("weighted_f1")
def weighted_f1(y_true, probs):
    return skm.f1_score(y_true, probs.argmax(1), average="weighted", zero_division=0)


@register("accuracy")
def accuracy(y_true, probs):
    return skm.accuracy_score(y_true, probs.argmax(1))


@register("balanced_accuracy")
def balanced_accuracy(y_true, probs):
    return skm.balanced_accuracy_score(y_true, probs.argmax(1))


@register("log_loss", greater_is_better=False, needs_proba=True)
def log_loss(y_true, probs):
    p = np.clip(probs, 1e-15, 1.0)
    p = p / p.sum(1, keepdims=True)
    return skm.log_loss(y_true, p, labels=_labels(probs))


@register("roc_auc", needs_proba=True)
def roc_auc(y_true, probs):
    """Macro one-vs-rest AUC over the classes present in ``y_true`` (binary: AUC of class 1)."""
    if probs.shape[1] == 2:
        return skm.roc_auc_score(y_true, probs[:, 1])
    present = np.unique(y_true)
    aucs = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in present if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean(aucs)) if aucs else float("nan")
