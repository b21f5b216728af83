"""Row-weighted forms of the metrics whose competitions weight rows (``data.weight_column``): the weighted
OOF score ``metrics.json`` records as ``cv_weighted`` beside the plain CV.

Each is the metric with every row counting ``w`` times (scikit-learn's ``sample_weight`` where it has one);
integer weights give exactly the plain metric on a table with each row repeated ``w`` times. A metric that
scores a decision fitted on OOF rows (F-metric thresholds, QWK cut-points) or a partial AUC has no weighted
form here: ``weighted_score`` returns None for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn import metrics as skm

from comp.tasks._base import Metric
from comp.tasks._scores import EPS, _columns, _mean

Weighted = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


def _cls_log_loss(y, p, w):
    p = np.clip(p, EPS, 1.0)
    return skm.log_loss(y, p / p.sum(1, keepdims=True), labels=np.arange(p.shape[1]), sample_weight=w)


def _cls_auc(y, p, w):
    if p.shape[1] == 2:
        return skm.roc_auc_score(y, p[:, 1], sample_weight=w)
    aucs = [
        skm.roc_auc_score(y == c, p[:, c], sample_weight=w)
        for c in np.unique(y)
        if 0 < (w[y == c] > 0).sum() and (w[y != c] > 0).any()
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def _label_auc(Y, P, w):
    Y, P = _columns(Y, P)
    out = []
    for j in range(Y.shape[1]):
        pos = Y[:, j] > 0.5
        has_both = (w[pos] > 0).any() and (w[~pos] > 0).any()
        out.append(float(skm.roc_auc_score(pos, P[:, j], sample_weight=w)) if has_both else float("nan"))
    return _mean(out)


def _label_ap(Y, P, w):
    Y, P = _columns(Y, P)
    return _mean(
        [
            float(skm.average_precision_score(Y[:, j] > 0.5, P[:, j], sample_weight=w))
            if (w[Y[:, j] > 0.5] > 0).any()
            else float("nan")
            for j in range(Y.shape[1])
        ]
    )


def _label_log_loss(Y, P, w):
    Y, P = _columns(Y, P)
    P = np.clip(P, EPS, 1 - EPS)
    cells = -(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    return _mean(list(np.average(cells, axis=0, weights=w)))


def _per_target(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> Weighted:
    def score(y, p, w):
        y, p = _columns(y, p)
        return _mean(list(fn(y, p, w)))

    return score


def _r2(y, p, w):
    mean = np.average(y, axis=0, weights=w)
    tot = (w[:, None] * (y - mean) ** 2).sum(0)
    res = (w[:, None] * (y - p) ** 2).sum(0)
    return np.where(tot > 0, 1 - res / np.where(tot > 0, tot, 1), np.nan)


def _log1p(v):
    return np.log1p(np.clip(v, 0, None))


WEIGHTED: dict[tuple[str, str], Weighted] = {
    ("classification", "accuracy"): lambda y, p, w: skm.accuracy_score(y, p.argmax(1), sample_weight=w),
    ("classification", "balanced_accuracy"): lambda y, p, w: skm.balanced_accuracy_score(
        y, p.argmax(1), sample_weight=w
    ),
    ("classification", "macro_f1"): lambda y, p, w: skm.f1_score(
        y, p.argmax(1), average="macro", zero_division=0, sample_weight=w
    ),
    ("classification", "weighted_f1"): lambda y, p, w: skm.f1_score(
        y, p.argmax(1), average="weighted", zero_division=0, sample_weight=w
    ),
    ("classification", "log_loss"): _cls_log_loss,
    ("classification", "roc_auc"): _cls_auc,
    ("multilabel", "mean_auc"): _label_auc,
    ("multilabel", "map"): _label_ap,
    ("multilabel", "log_loss"): _label_log_loss,
    ("regression", "rmse"): _per_target(lambda y, p, w: np.sqrt(np.average((y - p) ** 2, axis=0, weights=w))),
    ("regression", "mae"): _per_target(lambda y, p, w: np.average(np.abs(y - p), axis=0, weights=w)),
    ("regression", "r2"): _per_target(_r2),
    ("regression", "rmsle"): _per_target(
        lambda y, p, w: np.sqrt(np.average((_log1p(y) - _log1p(p)) ** 2, axis=0, weights=w))
    ),
}


def has_weighted(metric: Metric) -> bool:
    """Whether ``metric`` has a row-weighted form."""
    return (metric.task, metric.name) in WEIGHTED


def weighted_score(metric: Metric, y: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> float | None:
    """``metric`` of ``pred`` against ``y`` with row ``i`` counting ``weights[i]`` times; None when the
    metric has no weighted form."""
    fn = WEIGHTED.get((metric.task, metric.name))
    if fn is None:
        return None
    w = np.asarray(weights, np.float64)
    return float(fn(np.asarray(y), np.asarray(pred, np.float64), w))
