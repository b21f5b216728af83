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

    Coordinate ascent over a grid of thresholds. Every candidate threshold of one label is scored at once: a
    row is on for the candidates up to its grid position, so each count (or each row's F when it is on minus
    when it is off) is binned by that position and summed from the top, O(n + G) per label instead of O(n G).
    Row counts over the other labels are kept up to date as thresholds move, so a round costs O(n L).
    Hand-written because no library fits thresholds for sample- or micro-averaged F; ties keep the threshold
    nearest 0.5."""
    Y = np.asarray(Y, bool)
    P = np.asarray(P, np.float64)
    n, L = Y.shape
    grid = THRESHOLD_GRID
    G = len(grid)
    order = np.argsort(np.abs(grid - 0.5), kind="stable")  # prefer thresholds near 0.5 on ties
    t = np.full(L, 0.5)
    if n == 0:
        return t
    pos = np.searchsorted(grid, P, side="right")  # row i is on for candidate g exactly when g < pos[i, j]
    B = P >= t
    tp_row, fp_row, fn_row = (Y & B).sum(1), (~Y & B).sum(1), (Y & ~B).sum(1)

    def above(j: int, weights: np.ndarray) -> np.ndarray:
        """For every candidate g: the sum of ``weights`` over rows on at g."""
        c = np.bincount(pos[:, j], weights=weights, minlength=G + 1)
        return np.cumsum(c[::-1])[::-1][1:]

    for _ in range(rounds):
        changed = False
        for j in range(L):
            yj, bj = Y[:, j], B[:, j]
            rest_tp, rest_fp, rest_fn = tp_row - (yj & bj), fp_row - (~yj & bj), fn_row - (yj & ~bj)
            if average in ("macro", "micro"):
                tp = above(j, yj.astype(np.float64))
                fp = above(j, (~yj).astype(np.float64))
                fn = yj.sum() - tp
                if average == "micro":
                    score = _fbeta(tp + rest_tp.sum(), fp + rest_fp.sum(), fn + rest_fn.sum(), beta, 1.0)
                else:
                    score = _fbeta(tp, fp, fn, beta, 0.0)
            else:
                on = _fbeta(rest_tp + yj, rest_fp + ~yj, rest_fn, beta, 1.0)
                off = _fbeta(rest_tp, rest_fp, rest_fn + yj, beta, 1.0)
                score = (off.sum() + above(j, on - off)) / n
            best = order[np.argmax(score[order])]
            now = int(np.argmin(np.abs(grid - t[j])))  # t[j] is always a grid point
            if score[best] > score[now] + 1e-12:
                t[j], changed = grid[best], True
                new = P[:, j] >= t[j]
                tp_row, fp_row, fn_row = rest_tp + (yj & new), rest_fp + (~yj & new), rest_fn + (yj & ~new)
                B[:, j] = new
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
    return _kappa(np.bincount(a * k + b, minlength=k * k).reshape(k, k).astype(np.float64))


def _kappa(observed: np.ndarray) -> float:
    """Quadratic weighted kappa of a (k, k) confusion matrix (true grade, predicted grade)."""
    k = len(observed)
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
    rounder"); keeps a cut where it is unless another position scores strictly better. Moving cut ``j`` only
    moves rows between grades ``j`` and ``j + 1``: the confusion matrix of every candidate comes from the rows
    sorted by prediction (a count per true grade below each candidate), not from grading every row again."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    grades = np.unique(y)
    cuts = (grades[:-1] + grades[1:]) / 2.0
    if len(grades) < 2:
        return cuts, grades
    k = len(grades)
    order = np.argsort(p, kind="stable")
    ps, truth = p[order], np.searchsorted(grades, y[order])
    # below[i, g]: rows among the i smallest predictions whose true grade is g
    below = np.zeros((len(ps) + 1, k), dtype=np.int64)
    np.cumsum(np.eye(k, dtype=np.int64)[truth], axis=0, out=below[1:])

    def confusion(cuts: np.ndarray) -> np.ndarray:
        edges = np.r_[0, np.searchsorted(ps, cuts, side="right"), len(ps)]  # grade i: p in (cut i-1, cut i]
        return np.diff(below[edges], axis=0).T.astype(np.float64)

    observed = confusion(cuts)
    best = _kappa(observed)
    lo_all, hi_all = min(p.min(), grades[0]) - 1.0, max(p.max(), grades[-1]) + 1.0
    for _ in range(rounds):
        moved = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j > 0 else lo_all
            hi = cuts[j + 1] if j + 1 < len(cuts) else hi_all
            candidates = np.linspace(lo, hi, grid + 2)[1:-1]
            at = np.searchsorted(ps, candidates, side="right")  # rows graded j or lower with cut j there
            now = np.searchsorted(ps, cuts[j], side="right")
            for c, i in zip(candidates, at):
                trial = observed.copy()
                shift = (below[i] - below[now]).astype(np.float64)  # rows moving from grade j + 1 to j
                trial[:, j] += shift
                trial[:, j + 1] -= shift
                score = _kappa(trial)
                if score > best + 1e-12:
                    best, moved = score, True
                    cuts = cuts.copy()
                    cuts[j], observed, now = c, trial, i
        if not moved:
            break
    return cuts, grades
