"""The typed contents of a run's files: probability tables (OOF and test) and metrics.

``Predictions`` is one table of class probabilities per row; OOF tables also carry each row's fold and
label. ``Metrics`` is ``metrics.json``. Both are parsed and checked here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import RunFolderError

OOF_COLUMNS = ("fold", "target")


@dataclass
class Predictions:
    """Class probabilities per row: a test table (ids + classes) or an OOF table (+ fold and target)."""

    ids: np.ndarray
    classes: list[str]
    probs: np.ndarray
    folds: np.ndarray | None = None
    targets: np.ndarray | None = None
    id_column: str = "id"

    @property
    def y(self) -> np.ndarray:
        """Targets as class indices (OOF only)."""
        if self.targets is None:
            raise ValueError("test predictions have no targets")
        return pd.Index(self.classes).get_indexer(self.targets)

    def frame(self) -> pd.DataFrame:
        """The CSV layout: id, [fold, target,] one probability column per class."""
        head: dict[str, Any] = {self.id_column: np.asarray(self.ids, dtype=object)}
        if self.folds is not None and self.targets is not None:
            head.update(fold=np.asarray(self.folds, dtype=np.int64), target=np.asarray(self.targets, dtype=object))
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
    required = [id_column, *OOF_COLUMNS] if oof else [id_column]
    for col in required:
        if col not in df.columns:
            raise RunFolderError(
                f"{path}: column '{col}' not found (columns: {', '.join(map(str, df.columns))}); {hint}"
            )
    classes = [str(c) for c in df.columns if c not in required]
    if len(classes) < 2:
        raise RunFolderError(f"{path} has {len(classes)} probability columns; it needs one per class; {hint}")
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
            f"{path} line {r + 2}: column '{classes[c]}' holds {df[classes[c]].iloc[r]!r}, not a probability; {hint}"
        )
    folds = targets = None
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
