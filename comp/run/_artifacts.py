"""The typed contents of a run's files: prediction tables (OOF and test) and metrics.

``Predictions`` is one table of predictions per row, one column per output (class probabilities, label
probabilities or target values); OOF tables also carry each row's fold and target: a ``target`` column with
the class name (classification), or one ``target:<column>`` column per output (multilabel 0/1, regression
values). ``Metrics`` is ``metrics.json``. Both are parsed and checked here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import RunFolderError

OOF_COLUMNS = ("fold", "target")
TARGET_PREFIX = "target:"


@dataclass
class Predictions:
    """Predictions per row: a test table (ids + outputs) or an OOF table (+ fold and target).

    ``probs`` holds the predictions (n, K) whatever the task; ``targets`` class names (n,) or a matrix (n, K)."""

    ids: np.ndarray
    classes: list[str]
    probs: np.ndarray
    folds: np.ndarray | None = None
    targets: np.ndarray | None = None
    id_column: str = "id"

    @property
    def matrix_targets(self) -> bool:
        """Whether targets are a matrix (multilabel, regression) rather than class names."""
        return self.targets is not None and np.asarray(self.targets).ndim == 2

    @property
    def y(self) -> np.ndarray:
        """Targets as class indices (classification) or the target matrix (OOF only)."""
        if self.targets is None:
            raise ValueError("test predictions have no targets")
        if self.matrix_targets:
            return np.asarray(self.targets, dtype=np.float64)
        return pd.Index(self.classes).get_indexer(self.targets)

    def frame(self) -> pd.DataFrame:
        """The CSV layout: id, [fold, target or target:<column>...,] one column per output."""
        head: dict[str, Any] = {self.id_column: np.asarray(self.ids, dtype=object)}
        if self.folds is not None and self.targets is not None:
            head["fold"] = np.asarray(self.folds, dtype=np.int64)
            if self.matrix_targets:
                t = np.asarray(self.targets, dtype=np.float64)
                head.update({f"{TARGET_PREFIX}{c}": t[:, j] for j, c in enumerate(self.classes)})
            else:
                head["target"] = np.asarray(self.targets, dtype=object)
        return pd.concat([pd.DataFrame(head), pd.DataFrame(np.asarray(self.probs), columns=self.classes)], axis=1)

    def take(self, index: np.ndarray) -> Predictions:
        """Rows ``index`` (positions or a boolean mask)."""
        folds = None if self.folds is None else np.asarray(self.folds)[index]
        targets = None if self.targets is None else np.asarray(self.targets)[index]
        return Predictions(
            np.asarray(self.ids)[index],
            list(self.classes),
            np.asarray(self.probs)[index],
            folds,
            targets,
            self.id_column,
        )

    def reorder(self, ids: Any) -> Predictions:
        """Rows in the order of ``ids`` (every id must be present)."""
        pos = pd.Index(self.ids).get_indexer(pd.Index(ids))
        if (pos < 0).any():
            missing = np.asarray(ids)[pos < 0][0]
            raise RunFolderError(f"id {missing!r} has no prediction row; regenerate the predictions")
        return self.take(pos)


def parse_predictions(df: pd.DataFrame, path: Path, id_column: str, *, oof: bool) -> Predictions:
    """Check a probability table read as strings and type it; every problem names the file and line."""
    hint = "regenerate it with comp train-folds" if oof else "regenerate it with comp predict"
    target_cols = [str(c) for c in df.columns if str(c).startswith(TARGET_PREFIX)]
    matrix = bool(target_cols)  # class names never start with "target:" (refused when read), so this is exact
    required = [id_column, *(("fold",) if matrix else OOF_COLUMNS)] if oof else [id_column]
    for col in required:
        if col not in df.columns:
            raise RunFolderError(
                f"{path}: column '{col}' not found (columns: {', '.join(map(str, df.columns))}); {hint}"
            )
    classes = [str(c) for c in df.columns if c not in required and not str(c).startswith(TARGET_PREFIX)]
    if not classes or (len(classes) < 2 and not matrix and oof):
        raise RunFolderError(f"{path} has {len(classes)} prediction columns; it needs one per output; {hint}")
    if matrix and oof and [c[len(TARGET_PREFIX) :] for c in target_cols] != classes:
        raise RunFolderError(
            f"{path}: its target columns ({', '.join(target_cols)}) do not match its prediction columns "
            f"({', '.join(classes)}); {hint}"
        )
    ids = df[id_column]
    if ids.isna().any():
        raise RunFolderError(f"{path} line {int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2}: empty id; {hint}")
    dup = ids.duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise RunFolderError(f"{path} line {i + 2}: id {ids.iloc[i]!r} appears twice; {hint}")
    values = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise RunFolderError(
            f"{path} line {r + 2}: column '{classes[c]}' holds {df[classes[c]].iloc[r]!r}, not a number; {hint}"
        )
    folds = targets = None
    if oof and matrix:
        f = pd.to_numeric(df["fold"], errors="coerce")
        bad_fold = f.isna() | (f % 1 != 0) | (f < 0)
        if bad_fold.any():
            r = int(np.flatnonzero(bad_fold.to_numpy())[0])
            raise RunFolderError(f"{path} line {r + 2}: fold is not a whole number ({df['fold'].iloc[r]!r}); {hint}")
        t = df[target_cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.isfinite(t).all():
            r, c = (int(x[0]) for x in np.nonzero(~np.isfinite(t)))
            raise RunFolderError(f"{path} line {r + 2}: column '{target_cols[c]}' is not a number; {hint}")
        return Predictions(ids.to_numpy(dtype=object), classes, values, f.astype(np.int64).to_numpy(), t, id_column)
    if oof:
        f = pd.to_numeric(df["fold"], errors="coerce")
        bad_fold = f.isna() | (f % 1 != 0) | (f < 0)
        unknown = ~df["target"].isin(classes)
        for mask, what in (
            (bad_fold, "fold is not a whole number"),
            (unknown, "target is not one of the class columns"),
        ):
            if mask.any():
                r = int(np.flatnonzero(mask.to_numpy())[0])
                raise RunFolderError(
                    f"{path} line {r + 2}: {what} ({df['fold'].iloc[r]!r}, {df['target'].iloc[r]!r}); {hint}"
                )
        folds, targets = f.astype(np.int64).to_numpy(), df["target"].to_numpy(dtype=object)
    return Predictions(ids.to_numpy(dtype=object), classes, values, folds, targets, id_column)


@dataclass
class Metrics:
    """``metrics.json``: the metric, CV over all OOF rows, per-fold scores, and anything a producer adds
    (a blend's method, weights and members; per-attribute scores) under ``extra``."""

    metric: str
    greater_is_better: bool | None  # None: read from a file that does not say
    cv: float
    folds: list[float]
    fold_mean: float | None = None
    fold_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "cv": self.cv,
            "folds": self.folds,
            "fold_mean": self.fold_mean,
            "fold_std": self.fold_std,
        }
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: Any, path: Path) -> Metrics:
        if not isinstance(obj, dict) or not isinstance(obj.get("metric"), str) or "cv" not in obj:
            raise RunFolderError(f"{path} is not a comp metrics file (needs 'metric' and 'cv'); regenerate it")
        known = {"metric", "greater_is_better", "cv", "folds", "fold_mean", "fold_std"}
        gib = obj.get("greater_is_better")
        if not isinstance(gib, bool):
            gib = None  # a file that does not say: the reader asks comp.metrics (a layer above the run folder)
        return cls(
            obj["metric"],
            gib,
            obj["cv"],
            list(obj.get("folds") or []),
            obj.get("fold_mean"),
            obj.get("fold_std"),
            {k: v for k, v in obj.items() if k not in known},
        )
