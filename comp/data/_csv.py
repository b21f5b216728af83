"""The competition CSVs as string tables: reading them, and the checks every reader of one shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from comp.errors import CompError
from comp.run._io import read_table


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
