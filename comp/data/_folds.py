"""Pure fold assignment: arrays in, fold ids out (wraps sklearn's stratified splitters)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from comp._progress import Progress
from comp.data._stratify import multilabel_group_folds, regression_key
from comp.errors import CompError


def assign_folds(
    targets: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int, *, task: str = "classification"
) -> np.ndarray:
    """Return a fold id in ``[0, n_splits)`` for every row; no group ever lands in two folds.

    Stratified on what ``task`` scores: the class (classification), every label's positives (multilabel:
    iterative stratification over groups), quantile bins of the target (regression)."""
    targets = np.asarray(targets)
    n = len(targets)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < n_splits:
            raise CompError(
                f"folds.n_splits={n_splits} but the group column has only {n_groups} groups; lower folds.n_splits"
            )
    elif n < n_splits:
        raise CompError(f"folds.n_splits={n_splits} but train.csv has only {n} rows; lower folds.n_splits")
    if task == "multilabel":
        return multilabel_group_folds(targets, groups, n_splits, seed)
    key = regression_key(targets, n_splits) if task == "regression" else targets
    if groups is not None:
        if task == "classification":
            _warn_thin_classes(key, groups, n_splits)
        with warnings.catch_warnings(), Progress(len(np.unique(groups)), "assigning groups to folds") as bar:
            warnings.simplefilter("ignore")  # we warn in our own words above
            splitter = _GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            splitter.tick = bar.update
            splits = list(splitter.split(np.zeros(n), key, groups))
    else:
        if task == "classification":
            _warn_thin_classes(key, np.arange(n), n_splits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # we warn in our own words above
            splits = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(n), key))
    folds = np.full(n, -1, dtype=np.int64)
    for k, (_, valid_idx) in enumerate(splits):
        folds[valid_idx] = k
    assert (folds >= 0).all(), "every row must be assigned a fold"
    return folds


def thin_classes(targets: np.ndarray, groups: np.ndarray, n_splits: int) -> dict[int, int]:
    """Classes with fewer distinct groups than folds: class index -> number of groups."""
    out = {}
    for c in np.unique(targets):
        g = len(np.unique(groups[targets == c]))
        if g < n_splits:
            out[int(c)] = g
    return out


def _warn_thin_classes(targets, groups, n_splits) -> None:
    thin = thin_classes(targets, groups, n_splits)
    if thin:
        desc = ", ".join(f"class {c}: {g}" for c, g in sorted(thin.items()))
        warnings.warn(
            f"some classes have fewer groups than folds.n_splits={n_splits} ({desc}); "
            "those folds will validate without them and their per-fold scores will be noisy",
            UserWarning,
            stacklevel=3,
        )


class _GroupKFold(StratifiedGroupKFold):
    """sklearn's StratifiedGroupKFold with its per-group step done for all folds at once, and a count of the
    groups placed (the bar).

    sklearn places one group per call of ``_find_best_fold``, trying the folds one at a time: about a dozen
    small numpy calls per fold and group, 2.5 minutes for 125k groups. Here the five trials are one (k, k, C)
    array: the same sums in the same order, so the same bits, and the same choice (lowest spread; within
    ``np.isclose`` of it, fewest rows; then the first), so the folds are sklearn's (a test compares them on
    inputs with ties). Should a later sklearn rename that method, the folds stay sklearn's and only the speed
    and the bar go."""

    tick: Callable[[], object] | None = None

    def _find_best_fold(self, y_counts_per_fold, y_cnt, group_y_counts):
        if self.tick is not None:
            self.tick()
        k = len(y_counts_per_fold)
        trial = np.repeat(y_counts_per_fold[None], k, axis=0)  # trial[i]: the folds with the group in fold i
        trial[np.arange(k), np.arange(k)] += group_y_counts
        evals = np.std(trial / y_cnt.reshape(1, -1), axis=1).mean(axis=1).tolist()
        samples = y_counts_per_fold.sum(axis=1).tolist()
        best_fold, min_eval, min_samples = None, math.inf, math.inf
        for i in range(k):
            fold_eval = evals[i]
            if fold_eval < min_eval or (_isclose(fold_eval, min_eval) and samples[i] < min_samples):
                best_fold, min_eval, min_samples = i, fold_eval, samples[i]
        return best_fold


def _isclose(a: float, b: float) -> bool:
    """``np.isclose(a, b)`` of two floats (its default tolerances), without a numpy call."""
    return (abs(a - b) <= 1e-08 + 1e-05 * abs(b) and math.isfinite(b)) or a == b
