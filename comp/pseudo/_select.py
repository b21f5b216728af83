"""Which test rows become pseudo-labels: plain numpy over a prediction matrix, tested without torch.

One rule per task:

- classification (:func:`select_rows`): a row's class is its argmax and its confidence the top probability;
- multilabel (:func:`select_labels`): a row is confident when every label is (each probability at least
  ``threshold`` or at most ``1 - threshold``); the caps count each label's positives (probability >= 0.5);
- regression (:func:`select_values`): rows ranked by how well the blend's members agree (the spread of their
  predictions), when the source records its members; otherwise every row, or a seeded sample of them.
"""

from __future__ import annotations

import numpy as np

from comp.errors import CompError


def _check_options(threshold: float | None, top_per_class: int | None, max_per_class: int | None, low: float) -> None:
    if (threshold is None) == (top_per_class is None):
        raise CompError("choose one of --threshold and --top-per-class")
    if threshold is not None and not low < threshold <= 1:
        raise CompError(f"--threshold must be in ({low:g}, 1], got {threshold}")
    for name, value in (("--top-per-class", top_per_class), ("--max-per-class", max_per_class)):
        _check_count(name, value)
    if top_per_class is not None and max_per_class is not None:
        raise CompError("--max-per-class caps --threshold; --top-per-class already sets the count per class")


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise CompError(f"{name} must be a whole number >= 1, got {value!r}")


def _most(score: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows (of ``rows``) with the highest ``score``; ties keep row order."""
    return rows[np.argsort(-score[rows], kind="stable")[:k]]


def select_rows(
    probs: np.ndarray,
    *,
    threshold: float | None = None,
    top_per_class: int | None = None,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Positions of the rows to pseudo-label, in ascending order.

    A row's class is its argmax and its confidence the top probability. ``threshold`` keeps rows at least
    that confident; ``max_per_class`` then keeps only the most confident rows of each class, so an easy,
    common class cannot drown the rare ones. ``top_per_class`` keeps the ``k`` most confident rows of
    every class whatever their confidence (equal counts per class). Ties go to the earlier row.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (rows, classes) with 2+ classes, got shape {probs.shape}")
    _check_options(threshold, top_per_class, max_per_class, 0.0)
    label, conf = probs.argmax(1), probs.max(1)
    keep = conf >= threshold if threshold is not None else np.ones(len(probs), bool)
    cap = top_per_class if top_per_class is not None else max_per_class
    if cap is not None:
        for c in range(probs.shape[1]):
            rows = np.flatnonzero(keep & (label == c))
            order = rows[np.argsort(-conf[rows], kind="stable")]  # most confident first; ties keep row order
            keep[order[cap:]] = False
    return np.flatnonzero(keep)


def select_labels(
    probs: np.ndarray,
    *,
    threshold: float | None = None,
    top_per_class: int | None = None,
    max_per_class: int | None = None,
) -> np.ndarray:
    """Multi-label rows to pseudo-label (their labels stay the probabilities), in ascending order.

    ``threshold`` (in (0.5, 1]) keeps rows whose every label is confident: its probability at least
    ``threshold`` or at most ``1 - threshold``. ``max_per_class`` then caps each label's positives
    (probability >= 0.5) at its most probable ``max_per_class`` rows: a row is kept when it is within the cap
    of at least one of its labels, so a common label cannot drown the rare ones that share its rows; rows
    with no positive label are kept by the threshold alone. ``top_per_class`` instead keeps, for each label,
    its ``k`` most probable positives whatever the other labels say (rows with no positive label are never
    picked). Ties go to the earlier row.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (rows, labels), got shape {probs.shape}")
    _check_options(threshold, top_per_class, max_per_class, 0.5)
    positive = probs >= 0.5
    if top_per_class is not None:
        picked = np.zeros(len(probs), bool)
        for j in range(probs.shape[1]):
            picked[_most(probs[:, j], np.flatnonzero(positive[:, j]), top_per_class)] = True
        return np.flatnonzero(picked)
    assert threshold is not None
    keep = np.asarray((np.maximum(probs, 1 - probs) >= threshold).all(1))  # each label's confidence
    if max_per_class is not None:
        within = np.asarray(~positive.any(1))  # no positive label: nothing to cap
        for j in range(probs.shape[1]):
            within[_most(probs[:, j], np.flatnonzero(keep & positive[:, j]), max_per_class)] = True
        keep &= within
    return np.flatnonzero(keep)


def select_values(
    n: int, *, spread: np.ndarray | None = None, max_rows: int | None = None, seed: int = 0
) -> np.ndarray:
    """Regression rows to pseudo-label (their targets are the predicted values), in ascending order.

    ``spread`` (n,) says how much the members of a blend disagree on each row (smaller: more agreement). With
    it, ``max_rows`` keeps the rows they agree on most (ties: the earlier row); without ``max_rows`` every row
    is kept. Without a spread nothing ranks the rows: every row, or ``max_rows`` of them drawn at random
    (seeded, so the same file comes out each time)."""
    _check_count("--max-rows", max_rows)
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    if spread is None:
        return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    return np.sort(np.argsort(np.asarray(spread, np.float64), kind="stable")[:max_rows])
