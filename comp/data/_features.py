"""Tabular metadata beside the images (``data.features``): read, validated and encoded.

Numeric columns become floats with NaN where a cell is empty; a cell that is not a number is refused with its
file and line. Categorical columns (``data.categorical``) become integer codes over the values seen in the
training table (sorted, so the codes do not depend on row order); an empty cell is missing (code -1), and a test
value never seen in training is refused by name: no model could have learnt anything about it.

:class:`FeatureScaler` is what a network's metadata tower sees: numeric columns standardised with statistics
fitted on the rows it is given (a fold's training part), missing values imputed with that part's mean plus a
0/1 missing indicator per numeric column, and categorical codes shifted by one so 0 means missing or unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import DataConfig


@dataclass(frozen=True)
class Features:
    """Metadata of some rows: ``numeric`` (n, F_num) floats with NaN, ``codes`` (n, F_cat) ints (-1 missing)."""

    numeric_names: list[str]
    categorical_names: list[str]
    numeric: np.ndarray
    codes: np.ndarray
    levels: dict[str, list[str]]  # each categorical column's values seen in training, in code order

    @property
    def names(self) -> list[str]:
        return [*self.numeric_names, *self.categorical_names]

    def matrix(self) -> np.ndarray:
        """(n, F) floats: numeric columns, then categorical codes (NaN where missing): what a GBDT reads."""
        codes = np.where(self.codes < 0, np.nan, self.codes.astype(np.float64))
        return np.concatenate([self.numeric, codes], axis=1)

    def take(self, rows: np.ndarray) -> Features:
        return Features(self.numeric_names, self.categorical_names, self.numeric[rows], self.codes[rows], self.levels)


def feature_columns(data_cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(numeric, categorical) column names, each in ``data.features`` order."""
    feats, cats = data_cfg.features or [], set(data_cfg.categorical or [])
    return [f for f in feats if f not in cats], [f for f in feats if f in cats]


def _numeric(df: pd.DataFrame, col: str, path) -> np.ndarray:
    raw = df[col]
    text = raw.astype("string").str.strip()
    values = pd.to_numeric(text.mask(text == ""), errors="coerce")
    bad = values.isna() & text.notna() & (text != "") & ~text.str.lower().isin(["nan", "na", "null", "none"])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise CompError(
            f"{path} line {i + 2}: column '{col}' holds {raw.iloc[i]!r}, not a number; fix the cell, leave it "
            f"empty (missing), or list '{col}' in data.categorical"
        )
    out = values.to_numpy(dtype=np.float64)
    if np.isinf(out).any():
        i = int(np.flatnonzero(np.isinf(out))[0])
        raise CompError(
            f"{path} line {i + 2}: column '{col}' holds {raw.iloc[i]!r}; use a finite number or leave it empty"
        )
    return out


def _categories(df: pd.DataFrame, col: str) -> pd.Series:
    text = df[col].astype("string").str.strip()
    return text.mask(text == "")


def _require(df: pd.DataFrame, cols: list[str], path, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CompError(
            f"{path}: column '{missing[0]}' of data.features not found in the {what}; columns are "
            f"{', '.join(map(str, df.columns))} (add it to the {what} or drop it from data.features)"
        )


def encode_train(df: pd.DataFrame, data_cfg: DataConfig, path: str | Path) -> Features:
    """Validate and encode the training rows' metadata; the category levels come from these rows."""
    num_cols, cat_cols = feature_columns(data_cfg)
    _require(df, num_cols + cat_cols, path, "training table")
    numeric = np.stack([_numeric(df, c, path) for c in num_cols], axis=1) if num_cols else np.zeros((len(df), 0))
    levels: dict[str, list[str]] = {}
    codes = np.full((len(df), len(cat_cols)), -1, dtype=np.int64)
    for j, col in enumerate(cat_cols):
        values = _categories(df, col)
        levels[col] = sorted(values.dropna().unique().tolist())
        codes[:, j] = pd.Index(levels[col]).get_indexer(values.fillna("\0missing"))
    return Features(num_cols, cat_cols, numeric, codes, levels)


def encode_test(df: pd.DataFrame, data_cfg: DataConfig, levels: dict[str, list[str]], path) -> Features:
    """Validate and encode the test rows' metadata with the training table's ``levels``; an unseen value is refused."""
    if not data_cfg.test_csv:
        raise CompError(
            "data.features needs the test rows' metadata: set data.test_csv to the test table holding "
            f"{', '.join(data_cfg.features or [])}"
        )
    num_cols, cat_cols = feature_columns(data_cfg)
    _require(df, num_cols + cat_cols, path, "test table")
    numeric = np.stack([_numeric(df, c, path) for c in num_cols], axis=1) if num_cols else np.zeros((len(df), 0))
    codes = np.full((len(df), len(cat_cols)), -1, dtype=np.int64)
    for j, col in enumerate(cat_cols):
        values = _categories(df, col)
        found = pd.Index(levels[col]).get_indexer(values.fillna("\0missing"))
        unseen = (found < 0) & values.notna().to_numpy()
        if unseen.any():
            i = int(np.flatnonzero(unseen)[0])
            shown = ", ".join(map(repr, levels[col][:8])) + (" ..." if len(levels[col]) > 8 else "")
            raise CompError(
                f"{path} line {i + 2}: column '{col}' holds {values.iloc[i]!r}, a value the training table never "
                f"has (it has {shown}); map it to a known value or leave the cell empty (missing)"
            )
        codes[:, j] = found
    return Features(num_cols, cat_cols, numeric, codes, levels)


def read_train_features(data_cfg: DataConfig, df: pd.DataFrame | None = None) -> Features:
    """The training table's metadata (``df``: its rows already read, else ``data.train_csv``)."""
    from comp.data._csv import read_csv

    path = data_cfg.train_csv if data_cfg.layout is None else "data.layout rows"
    if df is None:
        df = read_csv(data_cfg.train_csv, "train CSV")
    return encode_train(df, data_cfg, path)


def read_test_features(data_cfg: DataConfig, levels: dict[str, list[str]]) -> tuple[pd.DataFrame, Features]:
    """The test table (``data.test_csv``) and its rows' metadata."""
    from comp.data._csv import read_csv

    if not data_cfg.test_csv:
        return pd.DataFrame(), encode_test(pd.DataFrame(), data_cfg, levels, "")
    df = read_csv(data_cfg.test_csv, "test CSV").reset_index(drop=True)
    return df, encode_test(df, data_cfg, levels, data_cfg.test_csv)


@dataclass(frozen=True)
class FeatureScaler:
    """Numeric standardisation (mean, std, imputed with the mean, plus missing indicators) and category counts,
    fitted on one fold's training part; a plain dict round-trips it through a checkpoint."""

    mean: np.ndarray  # (F_num,)
    std: np.ndarray  # (F_num,)
    cardinalities: list[int]  # per categorical column: its levels + 1 (index 0: missing or unseen)
    seen: list[list[int]]  # per categorical column: the codes the fitted rows hold (others count as unseen)

    @classmethod
    def fit(cls, feats: Features) -> FeatureScaler:
        x = feats.numeric
        seen = ~np.isnan(x)
        count = seen.sum(axis=0)
        mean = np.divide(np.nansum(x, axis=0), count, out=np.zeros(x.shape[1]), where=count > 0)
        var = np.divide(
            np.nansum((np.where(seen, x, mean) - mean) ** 2, axis=0), count, out=np.ones(x.shape[1]), where=count > 0
        )
        std = np.sqrt(var)
        std[~(std > 1e-12)] = 1.0
        cards = [len(feats.levels[c]) + 1 for c in feats.categorical_names]
        seen_codes = [sorted(int(v) for v in np.unique(col) if v >= 0) for col in feats.codes.T]
        return cls(mean, std, cards, seen_codes)

    @property
    def n_numeric(self) -> int:
        return len(self.mean)

    @property
    def width(self) -> int:
        """Columns of :meth:`numeric`: standardised values and their missing indicators."""
        return 2 * len(self.mean)

    def numeric(self, feats: Features) -> np.ndarray:
        """(n, 2 * F_num) float32: standardised values (missing -> 0, the training mean) and missing indicators."""
        x = feats.numeric
        missing = np.isnan(x)
        z = (np.where(missing, self.mean, x) - self.mean) / self.std
        return np.concatenate([z, missing.astype(np.float64)], axis=1).astype(np.float32)

    def categorical(self, feats: Features) -> np.ndarray:
        """(n, F_cat) int64 codes shifted by one: 0 is missing (or a level this part never saw)."""
        out = np.zeros(feats.codes.shape, dtype=np.int64)
        for j, known in enumerate(self.seen):
            col = feats.codes[:, j]
            out[:, j] = np.where(np.isin(col, known), col + 1, 0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "cardinalities": list(self.cardinalities),
            "seen": [list(s) for s in self.seen],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureScaler:
        return cls(
            np.asarray(raw["mean"], np.float64),
            np.asarray(raw["std"], np.float64),
            list(raw["cardinalities"]),
            [list(s) for s in raw["seen"]],
        )
