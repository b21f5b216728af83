"""The competition CSVs as string tables: reading them, and the checks every reader of one shares."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from comp.errors import CompError
from comp.run._io import read_table

log = logging.getLogger(__name__)


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    """Read a competition CSV with every cell as a string; fail clearly if it is missing or empty."""
    return read_table(path, what)


def require_columns(df: pd.DataFrame, columns, path, key_hint: str = "") -> None:
    """Fail if any of ``columns`` is missing from ``df``."""
    for col in columns:
        if col not in df.columns:
            hint = f" (set {key_hint})" if key_hint else ""
            raise CompError(f"{path}: column '{col}' not found; columns are {', '.join(df.columns)}{hint}")


def check_ids(df: pd.DataFrame, id_col: str, path) -> None:
    """Fail on empty or duplicate ids, naming the first offending row (1-based, header excluded)."""
    missing = df[id_col].isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0]) + 2
        raise CompError(f"{path} line {row}: empty id in column '{id_col}'; every row needs an id")
    dup = df[id_col].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise CompError(
            f"{path} line {i + 2}: duplicate id {df[id_col].iloc[i]!r} in column '{id_col}'; ids must be unique"
        )


def strip_labels(labels: pd.Series, source) -> pd.Series:
    """Labels without surrounding whitespace, so 'cat ' and 'cat' (a spreadsheet's stray space) are one class,
    with a warning saying how many were stripped; a label of whitespace only becomes empty. Ids are left as
    they are: they name files, and a file name may end in a space."""
    stripped = labels.str.strip()
    changed = labels.notna() & (stripped != labels)
    if changed.any():
        first = labels[changed].iloc[0]
        log.warning(
            "%s: stripped surrounding whitespace from %d labels (e.g. %r -> %r): they are the same class",
            source,
            int(changed.sum()),
            first,
            first.strip(),
        )
    return stripped.mask(stripped == "")
