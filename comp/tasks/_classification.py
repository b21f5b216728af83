"""Single-label classification: one class per image, softmax rows that sum to one, scored on class indices.

Metrics take ``y_true`` of shape (n,) with class indices and ``probs`` of shape (n, C) whose rows sum to one.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from comp._registry import Registry
from comp.errors import CompError
from comp.tasks._base import TASKS, Metric, Task
from comp.tasks._scores import partial_auc

CLS_METRICS: Registry[Metric] = Registry("metric")


def _add(
    name: str, fn, *, greater_is_better: bool = True, needs_proba: bool = False, doc: str = "", n: int | None = None
) -> None:
    CLS_METRICS.add(name, Metric(name, fn, greater_is_better, needs_proba, "classification", doc=doc, n_columns=n))


def _macro_f1(y_true, probs):
    # labels=None: classes absent from both truth and prediction (e.g. in one fold) do not count as F1=0
    return skm.f1_score(y_true, probs.argmax(1), average="macro", zero_division=0)


def _log_loss(y_true, probs):
    p = np.clip(probs, 1e-15, 1.0)
    p = p / p.sum(1, keepdims=True)
    return skm.log_loss(y_true, p, labels=np.arange(probs.shape[1]))


def _roc_auc(y_true, probs):
    """Macro one-vs-rest AUC over the classes present in ``y_true`` (binary: AUC of class 1)."""
    if probs.shape[1] == 2:
        return skm.roc_auc_score(y_true, probs[:, 1])
    present = np.unique(y_true)
    aucs = [skm.roc_auc_score(y_true == c, probs[:, c]) for c in present if 0 < (y_true == c).sum() < len(y_true)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _pauc(y_true, probs, min_tpr: float = 0.8):
    if probs.shape[1] != 2:
        raise CompError(
            f"metric 'pauc' scores binary competitions (2 classes), got {probs.shape[1]} classes; choose another metric"
        )
    return partial_auc(np.asarray(y_true) == 1, probs[:, 1], min_tpr)


_add("macro_f1", _macro_f1, doc="macro F1 of the argmax")
_add(
    "weighted_f1",
    lambda y, p: skm.f1_score(y, p.argmax(1), average="weighted", zero_division=0),
    doc="class-frequency weighted F1 of the argmax",
)
_add("accuracy", lambda y, p: skm.accuracy_score(y, p.argmax(1)), doc="accuracy of the argmax")
_add(
    "balanced_accuracy",
    lambda y, p: skm.balanced_accuracy_score(y, p.argmax(1)),
    doc="mean per-class recall of the argmax",
)
_add("log_loss", _log_loss, greater_is_better=False, needs_proba=True, doc="multi-class log loss")
_add("roc_auc", _roc_auc, needs_proba=True, doc="ROC AUC (binary) or macro one-vs-rest AUC")
_add(
    "pauc",
    _pauc,
    needs_proba=True,
    n=2,
    doc="binary: partial AUC above a true-positive rate of 0.8 (the ISIC 2024 definition; the second class "
    "is the positive one)",
)


def renormalise(p: np.ndarray) -> np.ndarray:
    """Clip negatives and scale rows to sum to one (all-zero rows become uniform)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    s = p.sum(axis=-1, keepdims=True)
    return np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[-1]), where=s > 0)


CLASSIFICATION = Task(
    "classification",
    activation="softmax",
    metrics=CLS_METRICS,
    default_metric="macro_f1",
    default_loss="ce",
    merges=("mean", "geometric", "median"),
    blend_methods=("mean", "weighted", "rank", "geometric", "hill_climb", "stacking", "gbdt"),
    normalise=renormalise,
    doc="one class per image: data.label_column (or data.labels' attributes)",
)
TASKS.add("classification", CLASSIFICATION)
