"""Labels made of attributes: each row's class code and attribute indices, and probabilities between the
class and attribute views (composed from heads, marginals of a class distribution).

The spec under ``data.labels`` (attributes, sources, maps, bins, the code formula) is parsed by
``comp/config/_labels.py``; here it meets the table. An attribute's value is looked up in ``map`` when given,
else must be one of ``values``; with ``bins`` it is a number binned as ``value < bins[0]`` -> values[0],
``bins[i-1] <= value < bins[i]`` -> values[i], ``value >= bins[-1]`` -> values[-1]; ``train_bins`` bins the
training targets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from comp.config._labels import Attribute, Scheme, _check_source, class_names, parse_labels
from comp.errors import CompError, closest
from comp.metrics import get_metric

__all__ = [  # the spec's names are re-exported: the data side reads labels through this module
    "Attribute",
    "Scheme",
    "Targets",
    "attribute_f1",
    "class_names",
    "compose_probs",
    "decompose",
    "encode",
    "marginals",
    "parse_labels",
    "targets",
]


@dataclass(frozen=True)
class Targets:
    """Class codes and per-attribute indices, with training bins and with scoring bins."""

    train_codes: np.ndarray
    train: dict[str, np.ndarray]
    score_codes: np.ndarray
    score: dict[str, np.ndarray]


def encode(
    df: pd.DataFrame, spec: Mapping[str, Any] | Scheme, *, train: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Class codes and per-attribute indices of each row (``train``: with the training bins)."""
    scheme = parse_labels(spec)
    indices = {}
    for attr in scheme.attributes:
        _check_source(attr, df.columns, scheme.key)
        bins = attr.train_bins if train and attr.train_bins is not None else attr.bins
        indices[attr.name] = _indices(df, attr, bins, scheme.key)
    codes = scheme.code_of[tuple(indices[a.name] for a in scheme.attributes)]
    return codes.astype(np.int64), indices


def targets(df: pd.DataFrame, spec: Mapping[str, Any] | Scheme) -> Targets:
    """Training and scoring targets of each row (they differ only where ``train_bins`` are set)."""
    scheme = parse_labels(spec)
    train_codes, train = encode(df, scheme, train=True)
    score_codes, score = encode(df, scheme)
    return Targets(train_codes, train, score_codes, score)


def decompose(codes: np.ndarray | int, spec: Mapping[str, Any] | Scheme) -> dict[str, np.ndarray]:
    """The attribute indices of class codes (same shape as ``codes``), by attribute name."""
    scheme = parse_labels(spec)
    arr = np.asarray(codes)
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= scheme.n_classes):
        raise CompError(f"class codes must be integers in 0..{scheme.n_classes - 1}; got {arr.ravel()[:5].tolist()}")
    return {a.name: scheme.combos[arr, j] for j, a in enumerate(scheme.attributes)}


def compose_probs(
    probs: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    spec: Mapping[str, Any] | Scheme,
    *,
    atol: float = 1e-4,
) -> np.ndarray:
    """Class probabilities (n, N) as the product of per-attribute probabilities, in code order, renormalised."""
    scheme = parse_labels(spec)
    parts = _ordered(probs, scheme)
    squeeze = all(p.ndim == 1 for p in parts)
    parts = [np.atleast_2d(p) for p in parts]
    n = parts[0].shape[0]
    for attr, p in zip(scheme.attributes, parts):
        _check_probs(p, n, len(attr.values), f"probabilities of attribute '{attr.name}'", atol)
    out = np.ones((n, scheme.n_classes))
    for j, p in enumerate(parts):
        out *= p[:, scheme.combos[:, j]]
    out /= out.sum(axis=1, keepdims=True)
    return out[0] if squeeze else out


def marginals(
    class_probs: np.ndarray, spec: Mapping[str, Any] | Scheme, *, atol: float = 1e-4
) -> dict[str, np.ndarray]:
    """Per-attribute probabilities (n, k_j) by summing the class probabilities of each attribute value."""
    scheme = parse_labels(spec)
    probs = np.asarray(class_probs, dtype=np.float64)
    squeeze = probs.ndim == 1
    probs = np.atleast_2d(probs)
    _check_probs(probs, probs.shape[0], scheme.n_classes, "class probabilities", atol)
    out = {}
    for j, attr in enumerate(scheme.attributes):
        member = np.eye(len(attr.values))[scheme.combos[:, j]]  # (N, k_j): class c has value i
        out[attr.name] = probs @ member
    return {k: v[0] for k, v in out.items()} if squeeze else out


def attribute_f1(
    probs: np.ndarray, attribute_targets: Mapping[str, np.ndarray], scheme: Mapping[str, Any] | Scheme
) -> dict[str, float]:
    """Macro F1 per attribute of a label scheme: the argmax of each attribute's marginal probability
    (summed over the classes that share the value) against the row's true value."""
    macro_f1 = get_metric("macro_f1")
    parts = marginals(np.asarray(probs, dtype=np.float64), scheme, atol=1e-3)
    return {name: macro_f1(attribute_targets[name], p) for name, p in parts.items()}


def _indices(df: pd.DataFrame, attr: Attribute, bins: tuple[float, ...] | None, key: str) -> np.ndarray:
    """Each row's index into ``attr.values``; the first bad row is an error naming it."""
    raw = df[attr.source]
    where = f"{key}.attributes.{attr.name}"
    if bins is not None:
        numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CompError(
                f"{_row(df, i)}: {attr.source} {raw.iloc[i]!r} is not a number, so '{where}.bins' cannot bin it; fix the value"
            )
        return np.searchsorted(np.asarray(bins), numbers, side="right").astype(np.int64)
    mapped = raw.map(attr.map) if attr.map is not None else raw
    index = {v: i for i, v in enumerate(attr.values)}
    out = mapped.map(index)
    bad = out.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = list(attr.map) if attr.map is not None else list(attr.values)
        place = "map" if attr.map is not None else "values"
        raise CompError(
            f"{_row(df, i)}: {attr.source} {raw.iloc[i]!r} is not in '{where}.{place}' "
            f"{allowed}{closest(str(raw.iloc[i]), allowed)}; add it there or fix the value"
        )
    return out.to_numpy(dtype=np.int64)


def _row(df: pd.DataFrame, i: int) -> str:
    """Name row ``i`` of ``df`` by position and by its id or, for a layout's table, its image path."""
    for col in ("id", "path"):
        if col in df.columns:
            return f"row {i} ({col} {str(df[col].iloc[i])!r})"
    return f"row {i}"


def _ordered(probs: Sequence[np.ndarray] | Mapping[str, np.ndarray], scheme: Scheme) -> list[np.ndarray]:
    """Per-attribute probability arrays in attribute order."""
    if isinstance(probs, Mapping):
        missing = [n for n in scheme.names if n not in probs]
        if missing:
            raise CompError(f"probabilities for attribute {missing[0]!r} are missing; pass one array per attribute")
        parts = [probs[n] for n in scheme.names]
    else:
        parts = list(probs)
        if len(parts) != len(scheme.attributes):
            raise CompError(
                f"got {len(parts)} probability arrays for {len(scheme.attributes)} attributes ({', '.join(scheme.names)})"
            )
    return [np.asarray(p, dtype=np.float64) for p in parts]


def _check_probs(p: np.ndarray, n: int, k: int, what: str, atol: float) -> None:
    """Fail unless ``p`` is (n, k), non-negative, with rows summing to 1."""
    if p.ndim != 2 or p.shape != (n, k):
        raise CompError(f"{what} have shape {p.shape}, expected ({n}, {k})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise CompError(f"{what} hold negative or non-finite numbers; pass softmax outputs")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        raise CompError(f"{what}: row {int(bad[0])} sums to {sums[bad[0]]:.6g}, not 1; pass softmax outputs")
