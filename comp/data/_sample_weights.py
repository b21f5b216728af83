"""``data.weight_column``: one non-negative weight per training row (vote counts, source quality), read and
checked with the training table so that a bad value is refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from comp.data._csv import require_columns
from comp.errors import CompError


def read_weights(df: pd.DataFrame, column: str, source, where: Callable[[int], str]) -> np.ndarray:
    """The float64 weight of every row of ``df`` from ``column``: numeric, finite, >= 0 and not all zero,
    or a ``CompError`` naming the first bad row and the fix."""
    require_columns(df, [column], source, "data.weight_column")
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = raw.iloc[i]
        what = (
            "an empty weight"
            if cell is None or (isinstance(cell, float) and np.isnan(cell)) or str(cell).strip() == ""
            else f"weight {cell!r}"
        )
        raise CompError(
            f"{where(i)}: {what} in column '{column}' (data.weight_column); every row needs a finite number >= 0"
        )
    neg = values < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise CompError(
            f"{where(i)}: negative weight {raw.iloc[i]!r} in column '{column}' (data.weight_column); "
            "weights must be >= 0 (0 leaves the row out of the loss)"
        )
    if not values.any():
        raise CompError(
            f"{source}: every weight in column '{column}' (data.weight_column) is 0, so nothing would be learnt; "
            "give some rows a positive weight or unset data.weight_column"
        )
    return values


def training_weights(weights: np.ndarray, n_extra: int = 0) -> np.ndarray:
    """The weights of a fold's training part (its labelled rows, then ``n_extra`` pseudo-labelled rows at
    weight 1), scaled to mean 1 over that part.

    Scaled once per fold rather than per batch, the weighted loss ``mean(w * loss)`` stays linear in the
    rows: gradient accumulation, DDP's gradient average and any batch split give the gradient of the whole
    part, a weight of 0 equals dropping the row and a weight of 2 equals duplicating it, and weights all 1
    (or all equal) equal no weights at all."""
    w = np.concatenate([np.asarray(weights, np.float64), np.ones(n_extra)])
    total = w.sum()
    if total <= 0:
        raise CompError("every row of a fold's training part has weight 0 (data.weight_column); nothing to learn")
    return (w * (len(w) / total)).astype(np.float32)


def check_fold_weights(weights: np.ndarray, folds: np.ndarray, column: str) -> None:
    """Refuse a split where some fold's training part (every other fold) weighs nothing."""
    for k in np.unique(folds):
        if not np.asarray(weights)[folds != k].any():
            raise CompError(
                f"every row outside fold {k} has weight 0 in column '{column}' (data.weight_column), so fold "
                f"{k} would learn nothing; give rows of other folds a positive weight"
            )


def by_position(weights: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """A dataset's weight per position (``n`` of them): ``weights`` at positions ``idx`` (the training part's
    labelled rows), then any further weights at positions ``n - extra ..`` (pseudo rows appended after the
    table); positions the part does not train on weigh 0."""
    out = np.zeros(n, np.float32)
    out[idx] = weights[: len(idx)]
    extra = len(weights) - len(idx)
    if extra:
        out[n - extra :] = weights[len(idx) :]
    return out
