"""Decisions fitted on out-of-fold predictions: per-label thresholds for F-metrics, cut-points for QWK.

Plain numpy. A decision turns continuous predictions into what the competition scores (label sets, integer
grades); it is fitted on OOF rows and, when CV is reported, on the *other* folds only (see
``comp.tasks.nested_score``), so the reported score never saw the rows it scores.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.02, 0.99, 0.02), 4)


# ---------------------------------------------------------------- multi-label thresholds


def _fbeta(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta: float, empty: float) -> np.ndarray:
    b2 = beta * beta
    num = (1 + b2) * tp
    den = num + b2 * fn + fp
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty, dtype=np.float64), where=den > 0)


def fbeta_multilabel(Y: np.ndarray, B: np.ndarray, beta: float, average: str) -> float:
    """F-beta of binary predictions ``B`` against ``Y`` (n, L), averaged over rows ('samples'), over all cells
    ('micro') or over labels ('macro', labels never true nor predicted left out). A row with no true and no
    predicted label scores 1 in the 'samples' average, as competitions that allow empty label sets count it."""
    Y, B = np.asarray(Y, bool), np.asarray(B, bool)
    tp, fp, fn = Y & B, ~Y & B, Y & ~B
    if average == "micro":
        return float(_fbeta(tp.sum(), fp.sum(), fn.sum(), beta, 1.0))
    if average == "samples":
        return float(_fbeta(tp.sum(1), fp.sum(1), fn.sum(1), beta, 1.0).mean())
    if average == "macro":
        used = (Y | B).any(0)
        if not used.any():
            return float("nan")
        return float(_fbeta(tp.sum(0), fp.sum(0), fn.sum(0), beta, 0.0)[used].mean())
    raise ValueError(f"unknown average {average!r}")


def fit_thresholds(
    Y: np.ndarray, P: np.ndarray, *, beta: float = 1.0, average: str = "samples", rounds: int = 3
) -> np.ndarray:
    """Per-label thresholds that maximise F-beta (``average`` as in :func:`fbeta_multilabel`) on (Y, P).

    Coordinate ascent over a grid of thresholds: every candidate threshold of one label is scored at once
    from per-row (or per-label) counts, so a round costs O(n L G) with G grid points. Hand-written because no
    library fits thresholds for sample- or micro-averaged F; ties keep the threshold nearest 0.5."""
    Y = np.asarray(Y, bool)
    P = np.asarray(P, np.float64)
    n, L = Y.shape
    grid = THRESHOLD_GRID
    order = np.argsort(np.abs(grid - 0.5), kind="stable")  # prefer thresholds near 0.5 on ties
    t = np.full(L, 0.5)
    if n == 0:
        return t
    b2 = beta * beta
    for _ in range(rounds):
        changed = False
        for j in range(L):
            B = P >= t
            cand = P[:, j, None] >= grid[None, :]  # (n, G)
            yj = Y[:, j, None]
            if average == "macro":
                tp, fp, fn = (yj & cand).sum(0), (~yj & cand).sum(0), (yj & ~cand).sum(0)
                score = _fbeta(tp, fp, fn, beta, 0.0)
            else:
                rest_tp = (Y & B).sum(1) - (Y[:, j] & B[:, j])
                rest_fp = (~Y & B).sum(1) - (~Y[:, j] & B[:, j])
                rest_fn = (Y & ~B).sum(1) - (Y[:, j] & ~B[:, j])
                tp = rest_tp[:, None] + (yj & cand)
                fp = rest_fp[:, None] + (~yj & cand)
                fn = rest_fn[:, None] + (yj & ~cand)
                if average == "micro":
                    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
                    score = _fbeta(tp, fp, fn, beta, 1.0)
                else:
                    num = (1 + b2) * tp
                    den = num + b2 * fn + fp
                    score = np.divide(num, den, out=np.ones(den.shape), where=den > 0).mean(0)
            best = order[np.argmax(score[order])]
            now = int(np.argmin(np.abs(grid - t[j])))  # t[j] is always a grid point
            if score[best] > score[now] + 1e-12:
                t[j], changed = grid[best], True
        if not changed:
            break
    return t


def apply_thresholds(P: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 label matrix: each label's probability at or above its threshold."""
    return (np.asarray(P, np.float64) >= np.asarray(thresholds, np.float64)[None, :]).astype(np.int64)


# ---------------------------------------------------------------- ordinal cut-points


def quadratic_kappa(y: np.ndarray, pred: np.ndarray, grades: np.ndarray) -> float:
    """Quadratic weighted kappa between integer grades ``y`` and ``pred`` (both drawn from ``grades``)."""
    grades = np.asarray(grades)
    k = len(grades)
    if k < 2:
        return float("nan")
    a = np.searchsorted(grades, np.asarray(y))
    b = np.searchsorted(grades, np.asarray(pred))
    observed = np.bincount(a * k + b, minlength=k * k).reshape(k, k).astype(np.float64)
    w = (np.subtract.outer(np.arange(k), np.arange(k)) ** 2) / (k - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1.0)
    den = (w * expected).sum()
    return float(1.0 - (w * observed).sum() / den) if den > 0 else float("nan")


def apply_cutpoints(p: np.ndarray, cutpoints: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Continuous predictions -> grades: ``grades[i]`` for values between cut ``i-1`` and cut ``i``."""
    return np.asarray(grades)[np.searchsorted(np.asarray(cutpoints, np.float64), np.asarray(p, np.float64))]


def fit_cutpoints(y: np.ndarray, p: np.ndarray, *, rounds: int = 4, grid: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(cut-points, grades) that maximise quadratic weighted kappa of ``apply_cutpoints(p)`` against ``y``.

    Starts from the midpoints between consecutive grades (plain rounding) and moves one cut at a time within
    its neighbours' interval (coordinate search, as ordinal competitions' winners fit their "optimised
    rounder"); keeps a cut where it is unless another position scores strictly better."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    grades = np.unique(y)
    cuts = (grades[:-1] + grades[1:]) / 2.0
    if len(grades) < 2:
        return cuts, grades
    best = quadratic_kappa(y, apply_cutpoints(p, cuts, grades), grades)
    lo_all, hi_all = min(p.min(), grades[0]) - 1.0, max(p.max(), grades[-1]) + 1.0
    for _ in range(rounds):
        moved = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j > 0 else lo_all
            hi = cuts[j + 1] if j + 1 < len(cuts) else hi_all
            for c in np.linspace(lo, hi, grid + 2)[1:-1]:
                trial = cuts.copy()
                trial[j] = c
                score = quadratic_kappa(y, apply_cutpoints(p, trial, grades), grades)
                if score > best + 1e-12:
                    best, cuts, moved = score, trial, True
        if not moved:
            break
    return cuts, grades
