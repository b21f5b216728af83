"""Regression competitions: one or more numbers per image, predicted in the target's own units.

Ordinal targets (grades scored by quadratic weighted kappa) are regression too: the model regresses the
grade and ``qwk`` fits the cut-points that turn its output into grades on the OOF predictions.
"""

from __future__ import annotations

import numpy as np

from comp._registry import Registry
from comp.tasks import _scores as S
from comp.tasks._base import TASKS, Decision, Metric, Task
from comp.tasks._decisions import apply_cutpoints, fit_cutpoints, quadratic_kappa

REG_METRICS: Registry[Metric] = Registry("regression metric")


def _columns(fn):
    return lambda y, p, d: fn(y, p)


def _qwk_fit(y: np.ndarray, p: np.ndarray) -> Decision:
    cuts, grades = fit_cutpoints(np.asarray(y, np.float64).reshape(-1), np.asarray(p, np.float64).reshape(-1))
    return {"cutpoints": [float(c) for c in cuts], "grades": [float(g) for g in grades]}


def _qwk_apply(p: np.ndarray, d: Decision) -> np.ndarray:
    flat = apply_cutpoints(np.asarray(p, np.float64).reshape(-1), np.asarray(d["cutpoints"]), np.asarray(d["grades"]))
    return flat.reshape(np.shape(p))


def _qwk(y: np.ndarray, grades_pred: np.ndarray) -> float:
    y = np.asarray(y, np.float64).reshape(-1)
    g = np.asarray(grades_pred, np.float64).reshape(-1)
    grades = np.unique(np.concatenate([y, g]))
    return quadratic_kappa(y, g, grades)


for _m in (
    Metric(
        "rmse",
        S.rmse,
        greater_is_better=False,
        needs_proba=True,
        task="regression",
        per_column=_columns(S.per_target_rmse),
        doc="root mean squared error (mean over targets)",
    ),
    Metric(
        "mae",
        S.mae,
        greater_is_better=False,
        needs_proba=True,
        task="regression",
        per_column=_columns(S.per_target_mae),
        doc="mean absolute error (mean over targets)",
    ),
    Metric(
        "r2",
        S.r2,
        needs_proba=True,
        task="regression",
        per_column=_columns(S.per_target_r2),
        doc="coefficient of determination (mean over targets)",
    ),
    Metric(
        "rmsle",
        S.rmsle,
        greater_is_better=False,
        needs_proba=True,
        task="regression",
        per_column=_columns(S.per_target_rmsle),
        doc="root mean squared log error (negative predictions count as 0)",
    ),
    Metric(
        "qwk",
        _qwk,
        task="regression",
        fit=_qwk_fit,
        apply=_qwk_apply,
        doc="quadratic weighted kappa of grades, at cut-points fitted on OOF (ordinal targets; one target)",
        n_columns=1,
    ),
):
    REG_METRICS.add(_m.name, _m)


def as_values(p: np.ndarray) -> np.ndarray:
    return np.asarray(p, dtype=np.float64)


REGRESSION = Task(
    "regression",
    activation="identity",
    metrics=REG_METRICS,
    default_metric="rmse",
    default_loss="mse",
    merges=("mean", "median"),
    blend_methods=("mean", "weighted", "hill_climb", "stacking", "gbdt"),  # ranks are not in the target's units
    normalise=as_values,
    doc="one number per target: data.label_column (numeric) or data.label_columns",
)
TASKS.add("regression", REGRESSION)
