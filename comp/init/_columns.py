"""What a table's columns are: labels of which task, groups, ids; each guess with the evidence a person can check.

Plain pandas over the table as written (strings), so the guesses never depend on how a CSV reader typed them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import CompError

LABEL_NAMES = re.compile(
    r"^(label|labels|target|targets|class|classes|category|y|tags?|answer|ans|diagnosis|grade|score|species)$", re.I
)
GROUP_NAMES = re.compile(
    r"(patient|person|subject|group|user|source|study|case|video|individual|owner|session|site|animal|scene|object|"
    r"series|lesion|plant|specimen)",
    re.I,
)
MAX_CLASSES = 1000
MAX_INT_CLASSES = 20  # integer labels with at most this many values read as classes (ordinal grades: --set task)


@dataclass
class Guess:
    """One decision of ``comp init``: the config key, its value, why, and how to override it."""

    key: str
    value: Any
    evidence: str
    override: str = ""

    def __post_init__(self) -> None:
        if not self.override:
            self.override = f"--set {self.key}=..."


@dataclass
class LabelKind:
    """What a label column holds: the task it implies and the evidence."""

    column: str
    task: str
    evidence: str
    score: int  # how plausible, for ranking candidates (the sample submission's word beats a name beats a shape)


def ambiguous(what: str, key: str, candidates: list[tuple[str, str]]) -> CompError:
    """The one-line error when two or more candidates are equally plausible."""
    listed = "; ".join(f"{name} ({why})" for name, why in candidates)
    return CompError(
        f"{what}: {len(candidates)} candidates are equally plausible: {listed}; choose one with "
        f"--set {key}={candidates[0][0]}"
    )


def _numbers(s: pd.Series) -> np.ndarray | None:
    vals = pd.to_numeric(s[s != ""], errors="coerce")
    if len(vals) == 0 or vals.isna().any():
        return None
    return vals.to_numpy(np.float64)


def is_binary(s: pd.Series) -> bool:
    nums = _numbers(s)
    return nums is not None and len(nums) == len(s) and bool(np.isin(nums, (0.0, 1.0)).all())


def id_like(s: pd.Series) -> bool:
    """Nearly every value distinct and not a number with decimals: an identifier, not a label or group."""
    nums = _numbers(s)
    if nums is not None and not np.all(nums == np.round(nums)):
        return False
    return s.nunique() >= 0.8 * len(s) and len(s) >= 5


def label_kind(name: str, s: pd.Series, *, hinted: bool = False) -> LabelKind | None:
    """What ``s`` would be as a label column, or None when it cannot be one (constant, an identifier, free text)."""
    filled = s[s != ""]
    if len(filled) == 0 or filled.nunique() < 2 and not (s == "").any():
        return None
    score = 3 if hinted else 2 if LABEL_NAMES.match(name) else 1
    nums = _numbers(s)
    if nums is not None and len(nums) == len(s):
        uniq = np.unique(nums)
        span = f"{uniq.min():g}-{uniq.max():g}"
        if np.all(uniq == np.round(uniq)) and len(uniq) <= MAX_INT_CLASSES:
            return LabelKind(
                name,
                "classification",
                f"{len(uniq)} integer values {span}: classes (--set task=regression if they are ordinal grades)",
                score,
            )
        return LabelKind(name, "regression", f"numbers {span}, {len(uniq)} distinct: regression", score)
    tokens = filled.str.split()
    several = float((tokens.map(len) > 1).mean())
    empty = float((s == "").mean())
    vocab = {t for ts in tokens for t in ts}
    if (several > 0.02 or empty > 0) and len(vocab) <= MAX_CLASSES and len(vocab) < max(3, len(s) // 2):
        return LabelKind(
            name,
            "multilabel",
            f"space-separated tags: {len(vocab)} labels, {several:.0%} of rows with several, {empty:.0%} empty",
            score,
        )
    if id_like(s):
        return None
    n = filled.nunique()
    if 2 <= n <= MAX_CLASSES and n <= max(2, len(s) // 2):
        counts = filled.value_counts()
        return LabelKind(
            name,
            "classification",
            f"{n} classes, {counts.min()}-{counts.max()} rows each",
            score,
        )
    return None


def wide_kind(df: pd.DataFrame, columns: list[str]) -> tuple[str, str]:
    """(task, evidence) of several target columns read together."""
    if all(is_binary(df[c]) for c in columns):
        sums = df[columns].astype(float).sum(axis=1)
        if (sums == 1).all():
            return "classification", f"{len(columns)} one-hot 0/1 columns (each row has exactly one 1)"
        return "multilabel", (
            f"{len(columns)} 0/1 columns, {float((sums > 1).mean()):.0%} of rows with several, "
            f"{float((sums == 0).mean()):.0%} with none"
        )
    if all(_numbers(df[c]) is not None for c in columns):
        return "regression", f"{len(columns)} numeric target columns"
    raise CompError(
        f"the sample submission's columns {', '.join(columns)} are not all numeric in the training table; "
        "set data.label_column or data.label_columns with --set"
    )


def group_evidence(name: str, s: pd.Series, labels: np.ndarray | None) -> tuple[str, int] | None:
    """(evidence, score) for ``s`` as the group column, or None when it cannot be one."""
    n, k = len(s), s.nunique()
    if k < 2 or k > n / 1.5 or (s == "").any():
        return None
    nums = _numbers(s)
    if nums is not None and not np.all(nums == np.round(nums)):
        return None  # measurements, not identities
    per = n / k
    why = f"{per:.3g} images per value ({k} values)"
    if labels is not None:
        frame = pd.DataFrame({"g": s.to_numpy(), "y": labels})
        spread = frame.groupby("g")["y"].nunique()
        mixed = float((spread > 1).mean())
        why += ", every value within one label" if mixed == 0 else f", {mixed:.0%} of values span several labels"
    return why, 2 if GROUP_NAMES.search(name) else 1


def pick(what: str, key: str, ranked: list[tuple[str, str, int]]) -> tuple[str, str] | None:
    """The best (name, evidence) by score, or an ambiguity error when the best two tie."""
    if not ranked:
        return None
    ranked = sorted(ranked, key=lambda r: -r[2])
    top = [r for r in ranked if r[2] == ranked[0][2]]
    if len(top) > 1:
        raise ambiguous(what, key, [(name, why) for name, why, _ in top])
    return ranked[0][0], ranked[0][1]
