"""Which test rows become pseudo-labels: plain numpy over a probability matrix, tested without torch."""

from __future__ import annotations

import numpy as np

from comp.errors import CompError


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
    if (threshold is None) == (top_per_class is None):
        raise CompError("choose one of --threshold and --top-per-class")
    if threshold is not None and not 0 < threshold <= 1:
        raise CompError(f"--threshold must be in (0, 1], got {threshold}")
    for name, value in (("--top-per-class", top_per_class), ("--max-per-class", max_per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise CompError(f"{name} must be a whole number >= 1, got {value!r}")
    if top_per_class is not None and max_per_class is not None:
        raise CompError("--max-per-class caps --threshold; --top-per-class already sets the count per class")
    label, conf = probs.argmax(1), probs.max(1)
    keep = conf >= threshold if threshold is not None else np.ones(len(probs), bool)
    cap = top_per_class if top_per_class is not None else max_per_class
    if cap is not None:
        for c in range(probs.shape[1]):
            rows = np.flatnonzero(keep & (label == c))
            order = rows[np.argsort(-conf[rows], kind="stable")]  # most confident first; ties keep row order
            keep[order[cap:]] = False
    return np.flatnonzero(keep)
