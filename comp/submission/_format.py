"""Submission files shaped like ``sample_submission.csv``: its id column, target column(s) and row order.

The sample decides the format, for the task at hand (``submission_kind``):

- ``proba``: the sample's non-id columns are exactly the output columns: one probability per class
  (classification) or per label (multilabel), or one value per target (regression; then named ``values``);
- ``names`` / ``codes`` (classification): one label column holding the argmax class, by name or by code
  (the class index, which is the code of ``data.labels``) when the sample's column holds integers and the
  class names are not integers themselves (the mask contest's ``info.csv``);
- ``tags`` (multilabel): one column holding the space-separated labels whose probability reaches the label's
  threshold (fitted on OOF for F-metrics, else 0.5);
- ``values`` (regression): one column per target, or one column for a single target whatever its name; with
  a QWK decision, the grades its cut-points give.

Plain pandas/numpy; nothing is written unless the frame matches the sample.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.data._csv import read_csv
from comp.errors import CompError
from comp.run._io import write_csv

KINDS = ("proba", "names", "codes", "tags", "values")


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


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def label_kind(sample: pd.DataFrame, column: str, classes: list[str]) -> str:
    """'codes' when the sample's label column holds integer class codes for non-integer class names, else 'names'."""
    values = sample[column].dropna().astype(str)
    if len(values) and all(_is_int(v) for v in values) and not all(_is_int(c) for c in classes):
        return "codes"
    return "names"


def submission_kind(sample: pd.DataFrame, targets: list[str], classes: list[str], task: str, name: str) -> str:
    """The format the sample asks for (see the module docstring), or a CompError saying why none fits."""
    wide = len(targets) == len(classes) and set(targets) == set(classes)
    if task == "regression":
        if wide or (len(targets) == 1 and len(classes) == 1):
            return "values"
        raise CompError(
            f"{name} has target columns {targets}, not the regression's targets {classes} (or one column for one "
            "target); point data.sample_submission at this competition's sample or set data.label_columns"
        )
    if wide:
        return "proba"
    if len(targets) == 1:
        return "tags" if task == "multilabel" else label_kind(sample, targets[0], classes)
    what = "labels" if task == "multilabel" else "classes"
    raise CompError(
        f"{name} has target columns {targets}, which are neither one {'tags' if task == 'multilabel' else 'label'} "
        f"column nor exactly the {what} {classes}; fix data.classes or pass the right data.sample_submission"
    )


def _first(values) -> str:
    return repr(next(iter(values)))


def _thresholds(decision: dict[str, Any] | None, n: int) -> np.ndarray:
    t = (decision or {}).get("thresholds")
    return np.asarray(t, np.float64) if t is not None and len(t) == n else np.full(n, 0.5)


def _grades(values: np.ndarray, decision: dict[str, Any] | None) -> np.ndarray:
    if not decision or "cutpoints" not in decision:
        return values
    cuts, grades = np.asarray(decision["cutpoints"], np.float64), np.asarray(decision["grades"], np.float64)
    out = grades[np.searchsorted(cuts, values)]
    return out.astype(np.int64) if np.all(grades == np.round(grades)) else out


def tags(probs: np.ndarray, classes: list[str], decision: dict[str, Any] | None) -> list[str]:
    """Per row, the space-separated labels whose probability reaches the label's threshold."""
    on = np.asarray(probs) >= _thresholds(decision, len(classes))[None, :]
    names = np.asarray(classes, dtype=object)
    return [" ".join(names[row]) for row in on]


def decisions(probs, classes, *, task: str = "classification", decision: dict[str, Any] | None = None) -> pd.DataFrame:
    """What a submission states per row, whatever the sample's layout: the argmax class (``label``), the labels
    at the fitted thresholds (``tags``), or each target's value or QWK grade (one column per target)."""
    classes = [str(c) for c in classes]
    probs = np.asarray(probs, dtype=np.float64)
    if task == "regression":
        return pd.DataFrame({c: _grades(probs[:, j], decision) for j, c in enumerate(classes)})
    if task == "multilabel":
        return pd.DataFrame({"tags": tags(probs, classes, decision)})
    return pd.DataFrame({"label": np.asarray(classes, dtype=object)[probs.argmax(1)]})


def make_submission(
    ids,
    probs,
    classes,
    sample_path,
    id_column: str | None = None,
    *,
    task: str = "classification",
    decision: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Build a submission frame in the sample's format and row order from per-id predictions (class or label
    probabilities, target values); ``decision`` holds fitted thresholds or cut-points (``metrics.json``)."""
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
    kind = submission_kind(sample, targets, classes, task, str(sample_path))
    if kind in ("proba", "values") and len(targets) == len(classes) and set(targets) == set(classes):
        for c in targets:
            j = classes.index(c)
            out[c] = _grades(probs[:, j], decision) if kind == "values" else probs[:, j]
    elif kind == "values":  # one target, the sample names its column its own way
        out[targets[0]] = _grades(probs[:, 0], decision)
    elif kind == "codes":
        out[targets[0]] = probs.argmax(1).astype(np.int64)
    elif kind == "names":
        out[targets[0]] = np.asarray(classes, dtype=object)[probs.argmax(1)]
    else:
        out[targets[0]] = tags(probs, classes, decision)
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


def _check_values(df: pd.DataFrame, targets: list[str], classes: list[str], kind: str) -> list[str]:
    """Problems with the target columns: empty cells, unknown labels, probabilities outside [0, 1], non-numbers."""
    problems = []
    cols = df[targets]
    empty = cols.isna().to_numpy()
    if kind == "tags":  # an empty cell is an image with no label
        empty = np.zeros_like(empty)
    if empty.any():
        r, c = (int(x[0]) for x in np.nonzero(empty))
        problems.append(f"{int(empty.sum())} empty values (first: row {r + 1}, column '{targets[c]}')")
    if kind in ("proba", "values"):
        values = cols.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(values) & ((values >= 0) & (values <= 1) if kind == "proba" else True)
        bad = ~ok & ~empty
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            what = "probabilities outside [0, 1]" if kind == "proba" else "values that are not finite numbers"
            problems.append(f"{int(bad.sum())} {what} (first: row {r + 1}, column '{targets[c]}')")
    elif kind == "tags":
        label_set = set(classes)
        for r, cell in enumerate(cols[targets[0]].tolist()):
            unknown = [t for t in (cell.split() if isinstance(cell, str) else []) if t not in label_set]
            if unknown:
                problems.append(f"row {r + 1} holds tag {unknown[0]!r}, not one of the labels")
                break
    else:
        labels = cols[targets[0]].dropna().astype(str)
        known = [str(i) for i in range(len(classes))] if kind == "codes" else classes
        unknown = labels[~labels.isin(known)]
        if len(unknown):
            what = f"class codes 0..{len(classes) - 1}" if kind == "codes" else "the classes"
            problems.append(f"{len(unknown)} labels not among {what} (first: {unknown.iloc[0]!r})")
    return problems


def validate_submission(
    df: pd.DataFrame, sample_path, classes, id_column: str | None = None, *, task: str = "classification"
) -> None:
    """Raise CompError (one line listing every difference) unless ``df`` matches the sample submission."""
    classes = [str(c) for c in classes]
    sample, id_col, targets = _sample(sample_path, id_column)
    name = Path(sample_path).name
    if list(df.columns) != list(sample.columns):
        raise CompError(
            f"submission columns {list(df.columns)} differ from {name}'s {list(sample.columns)}; use the same names and order"
        )
    kind = submission_kind(sample, targets, classes, task, name)
    problems = _check_ids(df[id_col], sample[id_col], name) + _check_values(df, targets, classes, kind)
    if problems:
        raise CompError("submission " + "; ".join(problems) + f"; rebuild it with make_submission from {name}")


def write_submission(
    df: pd.DataFrame, path, sample_path, classes, id_column: str | None = None, *, task: str = "classification"
) -> Path:
    """Validate ``df`` against the sample, then write it atomically (nothing is written on failure)."""
    validate_submission(df, sample_path, classes, id_column, task=task)
    return write_csv(Path(path), df)
