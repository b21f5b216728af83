"""Reading each task's targets from the training rows: one reader per task, every problem named by file and line.

- classification: ``data.label_column`` (a class name per row) or ``data.label_columns`` (one-hot columns);
- multilabel: ``data.label_column`` holding space-separated tags (an empty cell is a row with no label) or
  ``data.label_columns`` holding 0/1 per label;
- regression: ``data.label_column`` (a number per row) or ``data.label_columns`` (several numeric targets).

The output columns (``classes``: classes, labels or target names) are ordered by ``data.classes`` when given,
else by ``data.label_columns``, else (multilabel) by the sample submission's wide columns when they name the
labels, else sorted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from comp.data._csv import read_csv, require_columns, strip_labels
from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import DataConfig

RESERVED_COLUMNS = ("fold", "target")
TARGET_PREFIX = "target:"  # OOF files hold a matrix target as one 'target:<column>' column per output column


@dataclass
class Targets:
    """A task's targets: output column names and (n,) int64 class indices or an (n, K) float32 matrix."""

    classes: list[str]
    values: np.ndarray


Where = Callable[[int], str]


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def check_names(names: list[str], id_col: str, source: str | Path, what: str, *, matrix: bool = False) -> None:
    """Output column names that would clash with a column comp writes are refused. Matrix targets (multilabel,
    regression) are written as ``target:<name>``, so an output may be called ``target`` there."""
    reserved = ("fold",) if matrix else RESERVED_COLUMNS
    for name in names:
        if name in reserved or name == id_col or name.startswith(TARGET_PREFIX):
            raise CompError(f"{source}: {what} name {name!r} clashes with a column comp writes; rename it")


# ---------------------------------------------------------------- classification


def class_list(labels: pd.Series, declared, path) -> list[str]:
    """Declared class order if given, else sorted unique labels (numerically when all are integers)."""
    if declared:
        names = [str(c) for c in declared]
        if len(set(names)) != len(names):
            raise CompError("config key 'data.classes' lists a class twice; each class once")
        return names
    uniq = list(pd.unique(labels))
    if len(uniq) < 2:
        raise CompError(f"{path}: only one class ({uniq[0]!r}) in the label column; classification needs two or more")
    try:
        return sorted(uniq, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(uniq)


def classification(df: pd.DataFrame, data: DataConfig, source: str | Path, where: Where) -> Targets:
    if data.label_columns is not None:  # one-hot columns: the class is the column holding the 1
        M = _binary_matrix(df, data.label_columns, source, where, "class")
        bad = M.sum(1) != 1
        if bad.any():
            i = _first(bad)
            raise CompError(
                f"{where(i)}: {int(M[i].sum())} of the one-hot columns {', '.join(data.label_columns)} hold 1; "
                "a single-label row has exactly one (for several labels per image use task: multilabel)"
            )
        check_names(list(data.label_columns), data.id_column, source, "class")
        return Targets(list(data.label_columns), M.argmax(1).astype(np.int64))
    label_col = data.label_column
    require_columns(df, [label_col], source, "data.label_column")
    df[label_col] = strip_labels(df[label_col], source)  # 'cat ' and 'cat' are one class
    nan = df[label_col].isna()
    if nan.any():
        raise CompError(f"{where(_first(nan))}: empty label in column '{label_col}'; fill or drop the row")
    classes = class_list(df[label_col], data.classes, source)
    check_names(classes, data.id_column, source, "class")
    index = {c: i for i, c in enumerate(classes)}
    unknown = ~df[label_col].isin(index)
    if unknown.any():
        i = _first(unknown)
        raise CompError(f"{where(i)}: label {df[label_col].iloc[i]!r} is not in data.classes; add it there")
    return Targets(classes, df[label_col].map(index).to_numpy(np.int64))


# ---------------------------------------------------------------- multi-label


def _binary_matrix(df: pd.DataFrame, columns: list[str], source, where: Where, what: str) -> np.ndarray:
    require_columns(df, columns, source, "data.label_columns")
    values = df[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise CompError(
            f"{where(r)}: column '{columns[c]}' holds {df[columns[c]].iloc[r]!r}; each {what} column holds 0 or 1"
        )
    return values


def _sample_labels(data: DataConfig) -> list[str] | None:
    """The sample submission's non-id columns, when it is wide (one column per label)."""
    if not data.sample_submission or not Path(data.sample_submission).is_file():
        return None
    try:
        sample = read_csv(data.sample_submission, "sample submission")
    except CompError:
        return None
    cols = [c for c in sample.columns if c != data.id_column]
    return cols if len(cols) >= 2 else None


def multilabel(df: pd.DataFrame, data: DataConfig, source: str | Path, where: Where) -> Targets:
    if data.label_columns is not None:
        labels = list(data.label_columns)
        Y = _binary_matrix(df, labels, source, where, "label")
    else:
        col = data.label_column
        require_columns(df, [col], source, "data.label_column")
        tags = [str(v).split() if isinstance(v, str) else [] for v in df[col].tolist()]  # empty cell: no label
        seen = list(dict.fromkeys(t for row in tags for t in row))
        declared = [str(c) for c in data.classes] if data.classes else None
        where_from = "data.classes"
        if declared is None:  # a wide sample submission (one column per label) names the labels
            sample = _sample_labels(data)
            if sample is not None:
                declared, where_from = sample, f"the columns of {data.sample_submission}"
        labels = declared if declared is not None else sorted(seen)
        index = {c: j for j, c in enumerate(labels)}
        Y = np.zeros((len(df), len(labels)), np.float64)
        for i, row in enumerate(tags):
            for t in row:
                j = index.get(t)
                if j is None:
                    raise CompError(
                        f"{where(i)}: tag {t!r} in column '{col}' is not among the labels of {where_from} "
                        f"({', '.join(labels[:8])}{'...' if len(labels) > 8 else ''}); add it there or fix the row"
                    )
                Y[i, j] = 1.0
    if len(labels) < 2:
        raise CompError(
            f"{source}: task multilabel needs two or more labels, found {len(labels)} ({', '.join(labels)}); "
            "for one yes/no label use task: classification with two classes"
        )
    check_names(labels, data.id_column, source, "label", matrix=True)
    return Targets(labels, Y.astype(np.float32))


# ---------------------------------------------------------------- regression


def regression(df: pd.DataFrame, data: DataConfig, source: str | Path, where: Where) -> Targets:
    cols = list(data.label_columns) if data.label_columns is not None else [data.label_column]
    require_columns(df, cols, source, "data.label_columns" if data.label_columns is not None else "data.label_column")
    values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raw = df[cols[c]].iloc[r]
        what = "is empty" if pd.isna(raw) else f"holds {raw!r}, not a number"
        raise CompError(f"{where(r)}: target column '{cols[c]}' {what}; regression targets are finite numbers")
    check_names(cols, data.id_column, source, "target", matrix=True)
    return Targets(cols, values.astype(np.float32))


READERS: dict[str, Callable[[pd.DataFrame, DataConfig, str | Path, Where], Targets]] = {
    "classification": classification,
    "multilabel": multilabel,
    "regression": regression,
}


def read_targets(task: str, df: pd.DataFrame, data: DataConfig, source: str | Path, where: Where) -> Targets:
    """The targets of ``task`` from the training rows ``df``."""
    return READERS[task](df, data, source, where)
