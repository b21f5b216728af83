"""Fold assignment for targets that are not one class per row: label sets and numbers, with groups kept whole.

- ``multilabel_group_folds``: iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) lifted from
  rows to groups. Written by hand: the maintained implementations (``iterative-stratification``,
  scikit-multilearn) split rows and cannot keep a group (a patient, a person) inside one fold.
- ``regression_key``: quantile bins of the target, so the stratified (group) splitters of scikit-learn can
  balance the target's distribution across folds.
"""

from __future__ import annotations

import numpy as np


def multilabel_group_folds(Y: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int) -> np.ndarray:
    """A fold in ``[0, n_splits)`` for every row of the 0/1 matrix ``Y`` (n, L); all rows of a group share one.

    Groups are placed one label at a time, rarest label first: each group holding that label goes to the fold
    that still lacks the most of it (ties: the fold lacking the most rows, then the lowest number after a
    seeded shuffle of fold order). Groups without any label fill the folds that lack the most rows. Every
    label's positives are so spread as evenly as whole groups allow, and fold sizes stay close."""
    Y = np.asarray(Y, dtype=bool)
    n, n_labels = Y.shape
    rng = np.random.default_rng(seed)
    if groups is None:
        gid = np.arange(n)
    else:
        _, gid = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups = int(gid.max()) + 1 if n else 0
    counts = np.zeros((n_groups, n_labels), dtype=np.float64)
    np.add.at(counts, gid, Y.astype(np.float64))
    sizes = np.bincount(gid, minlength=n_groups).astype(np.float64)
    need = np.tile(counts.sum(0) / n_splits, (n_splits, 1))  # positives each fold still lacks, per label
    need_rows = np.full(n_splits, n / n_splits)
    fold_rank = rng.permutation(n_splits)  # seeded tie-break between equally needy folds
    group_fold = np.full(n_groups, -1, dtype=np.int64)
    order = rng.permutation(n_groups)  # seeded order among groups of the same label and size
    while True:
        remaining = counts[group_fold < 0].sum(0)
        live = np.flatnonzero(remaining > 0)
        if not len(live):
            break
        label = live[np.argmin(remaining[live])]
        holders = order[(group_fold[order] < 0) & (counts[order, label] > 0)]
        holders = holders[np.argsort(-counts[holders, label], kind="stable")]  # big groups first, then the shuffle
        for g in holders:
            f = _pick(need[:, label], need_rows, fold_rank)
            group_fold[g] = f
            need[f] -= counts[g]
            need_rows[f] -= sizes[g]
    rest = order[group_fold[order] < 0]
    for g in rest[np.argsort(-sizes[rest], kind="stable")]:
        f = _pick(need_rows, need_rows, fold_rank)
        group_fold[g] = f
        need_rows[f] -= sizes[g]
    return group_fold[gid]


def _pick(primary: np.ndarray, rows: np.ndarray, rank: np.ndarray) -> int:
    """The fold with the largest ``primary`` need; ties by the largest row need, then by ``rank``."""
    keys = np.lexsort((rank, -rows, -primary))
    return int(keys[0])


def regression_key(y: np.ndarray, n_splits: int, *, max_bins: int = 10) -> np.ndarray:
    """Integer bins of a numeric target (n,) or (n, T) for stratified splitting: quantile bins of the target
    (of the mean of the standardised targets when there are several), as many as leave every bin at least
    two rows per fold, at most ``max_bins``."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2:
        std = y.std(0)
        y = ((y - y.mean(0)) / np.where(std > 0, std, 1.0)).mean(1)
    n_bins = int(max(1, min(max_bins, len(y) // (2 * n_splits))))
    if n_bins < 2:
        return np.zeros(len(y), dtype=np.int64)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    key = np.searchsorted(edges, y, side="right").astype(np.int64)
    return key - key.min()
