"""Multi-label competitions: a set of labels per image (possibly empty), one sigmoid probability per label."""

from __future__ import annotations

import numpy as np

from comp._registry import Registry
from comp.tasks import _scores as S
from comp.tasks._base import TASKS, Decision, Metric, Task
from comp.tasks._decisions import apply_thresholds, fbeta_multilabel, fit_thresholds

ML_METRICS: Registry[Metric] = Registry("multi-label metric")


def _f_metric(name: str, beta: float, average: str, doc: str) -> Metric:
    def fit(Y: np.ndarray, P: np.ndarray) -> Decision:
        return {"thresholds": [float(t) for t in fit_thresholds(Y, P, beta=beta, average=average)]}

    def apply(P: np.ndarray, d: Decision) -> np.ndarray:
        return apply_thresholds(P, np.asarray(d["thresholds"]))

    def per_label(Y: np.ndarray, P: np.ndarray, d: Decision | None) -> list[float]:
        B = apply(P, d if d is not None else fit(Y, P))
        return [fbeta_multilabel(Y[:, [j]], B[:, [j]], beta, "macro") for j in range(Y.shape[1])]

    return Metric(
        name,
        lambda Y, B: fbeta_multilabel(Y, B, beta, average),
        task="multilabel",
        fit=fit,
        apply=apply,
        per_column=per_label,
        doc=doc,
    )


def _columns(fn):
    return lambda Y, P, d: fn(Y, P)


for _m in (
    Metric(
        "mean_auc",
        S.mean_auc,
        needs_proba=True,
        task="multilabel",
        per_column=_columns(S.per_label_auc),
        doc="mean column-wise ROC AUC",
    ),
    Metric(
        "map",
        S.mean_average_precision,
        needs_proba=True,
        task="multilabel",
        per_column=_columns(S.per_label_ap),
        doc="mean average precision over labels",
    ),
    Metric(
        "log_loss",
        S.mean_log_loss,
        greater_is_better=False,
        needs_proba=True,
        task="multilabel",
        per_column=_columns(S.per_label_log_loss),
        doc="mean column-wise binary log loss",
    ),
    _f_metric("micro_f1", 1.0, "micro", "F1 over every (image, label) cell, at per-label thresholds fitted on OOF"),
    _f_metric("macro_f1", 1.0, "macro", "mean per-label F1, at per-label thresholds fitted on OOF"),
    _f_metric("samples_f1", 1.0, "samples", "mean per-image F1, at per-label thresholds fitted on OOF"),
    _f_metric("f2", 2.0, "samples", "mean per-image F2 (Amazon-from-space style), thresholds fitted on OOF"),
):
    ML_METRICS.add(_m.name, _m)


def clip_probabilities(p: np.ndarray) -> np.ndarray:
    """Averages of per-label probabilities stay probabilities; rows are not renormalised."""
    return np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)


MULTILABEL = Task(
    "multilabel",
    activation="sigmoid",
    metrics=ML_METRICS,
    default_metric="mean_auc",
    default_loss="bce",
    merges=("mean", "median"),
    blend_methods=("mean", "weighted", "rank", "hill_climb", "stacking", "gbdt"),
    normalise=clip_probabilities,
    doc="a set of labels per image: space-separated tags in data.label_column or 0/1 columns data.label_columns",
)
TASKS.add("multilabel", MULTILABEL)
