"""Score functions for multi-label and regression targets and the partial AUC of binary classification.

Plain numpy/scikit-learn on whole matrices: multi-label ``Y`` (n, L) of 0/1 against probabilities ``P``
(n, L); regression ``y`` (n, T) against predictions (n, T) in the target's own units. A column whose score is
undefined on the rows at hand (a label with no positive row in one fold) is left out of the mean, as the
competitions that use these metrics do.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

EPS = 1e-15


def _columns(Y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y, P = np.asarray(Y, np.float64), np.asarray(P, np.float64)
    if Y.ndim == 1:
        Y, P = Y[:, None], P.reshape(len(P), -1)
    return Y, P


def _mean(values: list[float]) -> float:
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


# ---------------------------------------------------------------- multi-label


def label_auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of one label's column (nan when the rows hold only one class)."""
    y = np.asarray(y) > 0.5
    if y.all() or not y.any():
        return float("nan")
    return float(skm.roc_auc_score(y, p))


def per_label_auc(Y: np.ndarray, P: np.ndarray) -> list[float]:
    Y, P = _columns(Y, P)
    return [label_auc(Y[:, j], P[:, j]) for j in range(Y.shape[1])]


def mean_auc(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean column-wise ROC AUC over the labels that have both classes among the rows."""
    return _mean(per_label_auc(Y, P))


def per_label_ap(Y: np.ndarray, P: np.ndarray) -> list[float]:
    Y, P = _columns(Y, P)
    return [
        float(skm.average_precision_score(Y[:, j] > 0.5, P[:, j])) if (Y[:, j] > 0.5).any() else float("nan")
        for j in range(Y.shape[1])
    ]


def mean_average_precision(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean over labels (with at least one positive row) of the average precision of that label's ranking."""
    return _mean(per_label_ap(Y, P))


def per_label_log_loss(Y: np.ndarray, P: np.ndarray) -> list[float]:
    Y, P = _columns(Y, P)
    P = np.clip(P, EPS, 1 - EPS)
    return list(-(Y * np.log(P) + (1 - Y) * np.log(1 - P)).mean(0))


def mean_log_loss(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean column-wise binary log loss (the multi-label log loss of competitions such as MoA)."""
    return _mean(per_label_log_loss(Y, P))


# ---------------------------------------------------------------- regression


def per_target_rmse(y: np.ndarray, p: np.ndarray) -> list[float]:
    y, p = _columns(y, p)
    return list(np.sqrt(((y - p) ** 2).mean(0)))


def rmse(y: np.ndarray, p: np.ndarray) -> float:
    """Root mean squared error, averaged over targets (one target: the RMSE)."""
    return _mean(per_target_rmse(y, p))


def per_target_mae(y: np.ndarray, p: np.ndarray) -> list[float]:
    y, p = _columns(y, p)
    return list(np.abs(y - p).mean(0))


def mae(y: np.ndarray, p: np.ndarray) -> float:
    return _mean(per_target_mae(y, p))


def per_target_r2(y: np.ndarray, p: np.ndarray) -> list[float]:
    y, p = _columns(y, p)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    ss_res = ((y - p) ** 2).sum(0)
    return [float(1 - r / t) if t > 0 else float("nan") for r, t in zip(ss_res, ss_tot)]


def r2(y: np.ndarray, p: np.ndarray) -> float:
    """Coefficient of determination, averaged over targets (the plant-traits style mean R2)."""
    return _mean(per_target_r2(y, p))


def per_target_rmsle(y: np.ndarray, p: np.ndarray) -> list[float]:
    y, p = _columns(y, p)
    # predictions below zero have no logarithm: they count as zero, as scorers of RMSLE competitions clip
    return list(np.sqrt(((np.log1p(np.clip(y, 0, None)) - np.log1p(np.clip(p, 0, None))) ** 2).mean(0)))


def rmsle(y: np.ndarray, p: np.ndarray) -> float:
    return _mean(per_target_rmsle(y, p))


# ---------------------------------------------------------------- binary partial AUC


def partial_auc(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.8) -> float:
    """Area under the ROC curve above the true-positive-rate floor ``min_tpr`` (range 0 .. 1 - min_tpr).

    The skin-lesion (ISIC 2024) definition: the area of the region under the ROC curve and above the line
    TPR = min_tpr, i.e. the integral over FPR of max(TPR - min_tpr, 0). Computed from the ROC curve's
    vertices (it is piecewise linear), not through ``roc_auc_score(max_fpr=...)``, whose McClish-standardised
    value measures a different region."""
    y = np.asarray(y) > 0.5
    if y.all() or not y.any():
        return float("nan")
    fpr, tpr, _ = skm.roc_curve(y, np.asarray(score, np.float64))
    above = np.clip(tpr - min_tpr, 0.0, None)
    # where a segment crosses the floor, split it there so the clipped curve stays piecewise linear
    xs, ys = [fpr[0]], [above[0]]
    for i in range(1, len(fpr)):
        t0, t1 = tpr[i - 1] - min_tpr, tpr[i] - min_tpr
        if t0 < 0 < t1 and fpr[i] > fpr[i - 1]:
            x = fpr[i - 1] + (fpr[i] - fpr[i - 1]) * (-t0) / (t1 - t0)
            xs.append(x)
            ys.append(0.0)
        xs.append(fpr[i])
        ys.append(above[i])
    x, h = np.asarray(xs), np.asarray(ys)
    return float(((x[1:] - x[:-1]) * (h[1:] + h[:-1]) / 2).sum())
