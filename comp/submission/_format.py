"""Submission files shaped like ``sample_submission.csv``: its id column, target column(s) and row order.

Two formats: one probability column per class (the sample's non-id columns are exactly the class names)
or one label column holding the argmax class: its name, or its code (the class index, which is the code of
``data.labels``) when the sample's column holds integers and the class names are not integers themselves
(the mask contest's ``info.csv``: ``ImageID,ans`` with ``ans`` = 0). Plain pandas/numpy; nothing is written
unless the frame matches the sample.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from comp.data._table import read_csv
from comp.errors import CompError
from comp.run._io import write_csv


def _sample(sample_path, id_column: str | None) -> tuple[pd.DataFrame, str, list[str]]:
    """Read the sample; return it, its id column and its target columns."""
    sample = read_csv(sample_path, "sample submission")
    id_col = str(id_column if id_column is not None and id_column in sample.columns else sample.columns[0])
    targets = [c for c in sample.columns if c != id_col]
    if not targets:
        raise CompError(
            f"{sample_path} has only the id column '{id_col}'; it needs a target column or one column per class"
        )
    return sample, id_col, targets


def _is_proba(targets: list[str], classes: list[str]) -> bool:
    return len(targets) == len(classes) and set(targets) == set(classes)


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def label_kind(sample: pd.DataFrame, column: str, classes: list[str]) -> str:
    """'codes' when the sample's label column holds integer class codes for non-integer class names, else 'names'."""
    values = sample[column].dropna().astype(str)
    if len(values) and all(_is_int(v) for v in values) and not all(_is_int(c) for c in classes):
        return "codes"
    return "names"


def _first(values) -> str:
    return repr(next(iter(values)))


def make_submission(ids, probs, classes, sample_path, id_column: str | None = None) -> pd.DataFrame:
    """Build a submission frame in the sample's format and row order from per-id class probabilities."""
    classes = [str(c) for c in classes]
    probs = np.asarray(probs, dtype=np.float64)
    ids = pd.Index(pd.Series(ids).astype(str))
    if probs.shape != (len(ids), len(classes)):
        raise ValueError(f"probs has shape {probs.shape}, expected ({len(ids)}, {len(classes)})")
    if ids.has_duplicates:
        raise CompError(f"predictions hold id {_first(ids[ids.duplicated()])} twice; each test id once")
    sample, id_col, targets = _sample(sample_path, id_column)
    want = pd.Index(sample[id_col])
    missing, extra = want.difference(ids, sort=False), ids.difference(want, sort=False)
    if len(missing) or len(extra):
        raise CompError(
            f"predictions lack {len(missing)} and add {len(extra)} ids compared with {Path(sample_path).name}"
            f" (first: {_first(missing if len(missing) else extra)}); predict on the sample's ids"
        )
    probs = probs[ids.get_indexer(want)]
    out = pd.DataFrame({id_col: want.to_numpy()})
    if _is_proba(targets, classes):
        order = [classes.index(c) for c in targets]
        for j, c in zip(order, targets):
            out[c] = probs[:, j]
    elif len(targets) == 1 and label_kind(sample, targets[0], classes) == "codes":
        out[targets[0]] = probs.argmax(1).astype(np.int64)
    elif len(targets) == 1:
        out[targets[0]] = np.asarray(classes, dtype=object)[probs.argmax(1)]
    else:
        raise CompError(
            f"{sample_path} has target columns {targets} which are neither one label column nor exactly the classes "
            f"{classes}; fix data.classes or pass the right data.sample_submission"
        )
    return out[list(sample.columns)]


def _check_ids(got: pd.Series, want: pd.Series, name: str) -> list[str]:
    """Problems with the id column: duplicates, missing, extra, order."""
    got_i, want_i = pd.Index(got.astype(str)), pd.Index(want)
    problems = []
    if got_i.has_duplicates:
        problems.append(f"id {_first(got_i[got_i.duplicated()])} appears twice")
    missing, extra = want_i.difference(got_i, sort=False), got_i.difference(want_i, sort=False)
    if len(missing):
        problems.append(f"{len(missing)} ids of {name} are missing (first: {_first(missing)})")
    if len(extra):
        problems.append(f"{len(extra)} ids not in {name} (first: {_first(extra)})")
    if not problems and not (got_i == want_i).all():
        i = int(np.flatnonzero(got_i != want_i)[0])
        problems.append(f"row {i + 1} has id {got_i[i]!r} where {name} has {want_i[i]!r} (rows must follow its order)")
    return problems


def _check_values(df: pd.DataFrame, targets: list[str], classes: list[str], kind: str = "names") -> list[str]:
    """Problems with the target columns: empty cells, unknown labels, probabilities outside [0, 1]."""
    problems = []
    empty = df.isna().to_numpy()
    if empty.any():
        r, c = (int(x[0]) for x in np.nonzero(empty))
        problems.append(f"{int(empty.sum())} empty values (first: row {r + 1}, column '{df.columns[c]}')")
    if _is_proba(targets, classes):
        values = df[targets].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = ~((values >= 0) & (values <= 1)) & ~empty[:, [df.columns.get_loc(t) for t in targets]]
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            problems.append(
                f"{int(bad.sum())} probabilities outside [0, 1] (first: row {r + 1}, column '{targets[c]}')"
            )
    elif len(targets) == 1:
        labels = df[targets[0]].dropna().astype(str)
        known = [str(i) for i in range(len(classes))] if kind == "codes" else classes
        unknown = labels[~labels.isin(known)]
        if len(unknown):
            what = f"class codes 0..{len(classes) - 1}" if kind == "codes" else "the classes"
            problems.append(f"{len(unknown)} labels not among {what} (first: {unknown.iloc[0]!r})")
    return problems


def validate_submission(df: pd.DataFrame, sample_path, classes, id_column: str | None = None) -> None:
    """Raise CompError (one line listing every difference) unless ``df`` matches the sample submission."""
    classes = [str(c) for c in classes]
    sample, id_col, targets = _sample(sample_path, id_column)
    name = Path(sample_path).name
    if list(df.columns) != list(sample.columns):
        raise CompError(
            f"submission columns {list(df.columns)} differ from {name}'s {list(sample.columns)}; use the same names and order"
        )
    if not _is_proba(targets, classes) and len(targets) != 1:
        raise CompError(
            f"{name} target columns {targets} are neither one label column nor exactly the classes {classes}"
        )
    kind = label_kind(sample, targets[0], classes) if len(targets) == 1 else "names"
    problems = _check_ids(df[id_col], sample[id_col], name) + _check_values(df, targets, classes, kind)
    if problems:
        raise CompError("submission " + "; ".join(problems) + f"; rebuild it with make_submission from {name}")


def write_submission(df: pd.DataFrame, path, sample_path, classes, id_column: str | None = None) -> Path:
    """Validate ``df`` against the sample, then write it atomically (nothing is written on failure)."""
    validate_submission(df, sample_path, classes, id_column)
    return write_csv(Path(path), df)
