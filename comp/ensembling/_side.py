"""What a stacker may read beside the members' predictions: each row's metadata (``data.features``), its group
(``data.group_column``) and its block (the fold of an OOF row, -1 for a test row), and the group-relative
features made of them.

Group-relative features (a value's deviation from its group's mean, its rank within the group) are computed
within one block: an OOF row's group statistics are taken over rows of its own fold only (whose predictions
came from the same fold model), a test row's over test rows. They read no target, so computing them once
for all rows leaks nothing; and a group that a careless fold plan split over two folds still never mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import Config
    from comp.ensembling._members import Aligned


@dataclass(frozen=True)
class Side:
    """Per-row inputs of n rows beside the predictions: metadata ``X`` (n, F) (numeric columns, then categorical
    codes; NaN missing), the rows' groups (or None) and blocks (their folds; -1 for test rows)."""

    X: np.ndarray
    names: list[str]
    categorical: list[int]  # indices of X's categorical columns
    groups: np.ndarray | None
    blocks: np.ndarray
    levels: dict[str, list[str]] | None = None  # each categorical column's training values, in code order

    def take(self, rows: np.ndarray) -> Side:
        groups = None if self.groups is None else self.groups[rows]
        return Side(self.X[rows], self.names, self.categorical, groups, self.blocks[rows], self.levels)


def group_relative(values: np.ndarray, groups: np.ndarray, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's deviation from its (block, group) mean and its rank within the (block, group) as a fraction
    in (0, 1]; NaN stays NaN (the mean and ranks skip it)."""
    frame = pd.DataFrame(values)
    keys = [pd.Series(blocks).reset_index(drop=True), pd.Series(groups).astype(str).reset_index(drop=True)]
    grouped = frame.groupby(keys, sort=False)
    dev = (frame - grouped.transform("mean")).to_numpy(np.float64)
    rank = grouped.rank(pct=True).to_numpy(np.float64)
    return dev, rank


def design(
    P: np.ndarray, side: Side | None, columns: list[str] | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """The stacker's feature matrix for n rows: every member's prediction of every output column, the metadata,
    and with groups, the group-relative features of the members' mean prediction of each column and of each
    numeric metadata column. Returns (X, names, categorical indices)."""
    M, n, C = P.shape
    cols = columns or [str(c) for c in range(C)]
    parts = [P.transpose(1, 0, 2).reshape(n, M * C)]
    names = [f"m{m}:{c}" for m in range(M) for c in cols]
    categorical: list[int] = []
    if side is not None:
        if len(side.blocks) != n:
            raise ValueError(f"side inputs hold {len(side.blocks)} rows for {n} rows of predictions")
        categorical = [M * C + j for j in side.categorical]
        parts.append(side.X)
        names += side.names
        if side.groups is not None:
            numeric = [j for j in range(side.X.shape[1]) if j not in side.categorical]
            base = np.concatenate([P.mean(axis=0), side.X[:, numeric]], axis=1)
            base_names = [f"mean:{c}" for c in cols] + [side.names[j] for j in numeric]
            dev, rank = group_relative(base, side.groups, side.blocks)
            parts += [dev, rank]
            names += [f"{b}-group_mean" for b in base_names] + [f"{b}:group_rank" for b in base_names]
    return np.concatenate(parts, axis=1), names, categorical


def blend_side(config: Config, data: Aligned, *, metadata: bool = True) -> tuple[Side, Side | None, list[str]]:
    """The OOF rows' and test rows' side inputs from the first member's config: ``data.features`` of the training
    table and the test table (validated: columns present, numbers numeric, categories seen in training), the
    groups of ``data.group_column`` (``metadata`` false: none of them, the rows' folds only). Returns (oof side,
    test side or None, notes)."""
    from comp.data._features import read_test_features
    from comp.data._table import train_metadata

    dcfg, notes = config.data, list[str]()
    has_groups = bool(dcfg.group_column or (dcfg.layout or {}).get("group"))
    if not metadata or not (dcfg.features or has_groups):  # nothing beside the predictions: no table to read
        n_test = None if data.test_ids is None else len(data.test_ids)
        test = None if n_test is None else Side(np.zeros((n_test, 0)), [], [], None, np.full(n_test, -1))
        return Side(np.zeros((len(data.ids), 0)), [], [], None, np.asarray(data.folds)), test, notes
    df, all_groups, feats = train_metadata(dcfg)
    id_col = dcfg.id_column
    where = pd.Index(df[id_col].astype(str)).get_indexer(pd.Index(data.ids).astype(str))
    if (where < 0).any():
        first = data.ids[int(np.flatnonzero(where < 0)[0])]
        raise CompError(
            f"OOF id {first!r} is not in the training table {dcfg.train_csv}; the stack reads its metadata there "
            "(blend members trained on this competition's table)"
        )
    X = feats.matrix()[where] if feats is not None else np.zeros((len(where), 0))
    names = feats.names if feats is not None else []
    cats = [len(feats.numeric_names) + j for j in range(len(feats.categorical_names))] if feats is not None else []
    groups = None if all_groups is None else all_groups[where]
    levels = feats.levels if feats is not None else None
    oof = Side(X, names, cats, groups, np.asarray(data.folds), levels)
    if data.test_ids is None:
        return oof, None, notes
    if feats is not None:
        df, test_feats = read_test_features(dcfg, feats.levels)
        X_test = test_feats.matrix()
    else:
        df, X_test = _test_table(config), None
    if id_col not in df.columns:
        raise CompError(f"{dcfg.test_csv}: column '{id_col}' not found; the stack reads the test rows' metadata there")
    at = pd.Index(df[id_col].astype(str)).get_indexer(pd.Index(data.test_ids).astype(str))
    if (at < 0).any():
        first = data.test_ids[int(np.flatnonzero(at < 0)[0])]
        raise CompError(
            f"test id {first!r} of the members' test.csv is not in the test table {dcfg.test_csv}; predict the "
            "members on that table"
        )
    X_test = np.zeros((len(at), 0)) if X_test is None else X_test[at]
    test_groups = None
    group_col = dcfg.group_column
    if groups is not None:
        if group_col and group_col in df.columns:
            test_groups = df[group_col].astype(str).to_numpy()[at]
        else:
            groups = None  # group features must exist for test rows too, or the stack cannot use them
            oof = Side(X, names, cats, None, oof.blocks, levels)
            notes.append(
                f"no group-relative features: the test table {dcfg.test_csv or dcfg.sample_submission} has no "
                f"'{group_col}' column"
            )
    return oof, Side(X_test, names, cats, test_groups, np.full(len(at), -1), levels), notes


def _test_table(config: Config) -> pd.DataFrame:
    """The test ids' table without metadata: data.test_csv, else the sample submission."""
    from comp.data._csv import read_csv

    path = config.data.test_csv or config.data.sample_submission
    if not path:
        raise CompError("no test table: set data.test_csv or data.sample_submission in the config")
    return read_csv(path, "test CSV").reset_index(drop=True)
