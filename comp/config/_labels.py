"""Labels made of attributes: each class is one combination of attribute values (mask x gender x age).

Spec (a plain dict, the YAML under e.g. ``data.labels``)::

    attributes:                  # in code order
      mask:   {source: mask, values: [wear, incorrect, not_wear],
               map: {mask1: wear, mask2: wear, mask3: wear, mask4: wear, mask5: wear,
                     incorrect_mask: incorrect, normal: not_wear}}
      gender: {source: folder_gender, values: [male, female]}
      age:    {source: folder_age, values: [young, middle, old], bins: [30, 60], train_bins: [30, 58]}
    code: "mask * 6 + gender * 3 + age"   # optional; default: mixed radix in attribute order (the same here)

An attribute's ``source`` (default: its name) is a column of the table. Its value is looked up in
``map`` when given, else must be one of ``values``; with ``bins`` it is a number binned as
``value < bins[0]`` -> values[0], ``bins[i-1] <= value < bins[i]`` -> values[i], ``value >= bins[-1]``
-> values[-1]. ``train_bins`` (same length) bins the training targets differently from the scored ones,
e.g. ages 58-59 trained as old while scored as middle.

``code`` is an arithmetic formula over attribute names, integer constants, ``+`` and ``*`` only (parsed
with ``ast``, never evaluated as Python); it must map the combinations onto 0..N-1 one to one. Class ``i``
is named by its attribute values joined with '_' (``wear_female_middle``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comp.errors import CompError, closest

if TYPE_CHECKING:
    import numpy as np

SPEC_KEYS = ("attributes", "code")
ATTRIBUTE_KEYS = ("source", "values", "map", "bins", "train_bins")
OPERATORS = {ast.Sub: "-", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.MatMult: "@"}


@dataclass(frozen=True)
class Attribute:
    """One validated attribute: where it is read from and how its values become indices."""

    name: str
    source: str
    values: tuple[str, ...]
    map: dict[str, str] | None
    bins: tuple[float, ...] | None
    train_bins: tuple[float, ...] | None


@dataclass(frozen=True)
class Scheme:
    """A validated label spec: the attributes, and the code <-> attribute-index tables."""

    attributes: tuple[Attribute, ...]
    code_of: np.ndarray  # shape (k_1, ..., k_n): the class code of each combination of attribute indices
    combos: np.ndarray  # shape (N, n): the attribute indices of each class code
    key: str

    @property
    def n_classes(self) -> int:
        return len(self.combos)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]


def parse_labels(
    spec: Mapping[str, Any] | Scheme, *, columns: Iterable[str] | None = None, key: str = "data.labels"
) -> Scheme:
    """Validate a label spec (and, given ``columns``, its sources); fail with one line naming the key."""
    import numpy as np

    if isinstance(spec, Scheme):
        return spec
    if not isinstance(spec, Mapping):
        raise CompError(f"config key '{key}' must be a mapping with 'attributes' (and optionally 'code')")
    for name in spec:
        if name not in SPEC_KEYS:
            raise CompError(
                f"config key '{key}.{name}' is unknown{closest(str(name), SPEC_KEYS)}; keys are attributes, code"
            )
    raw = spec.get("attributes")
    if not isinstance(raw, Mapping) or not raw:
        raise CompError(f"config key '{key}.attributes' must map each attribute name to its values and source")
    attributes = tuple(_attribute(str(name), value, f"{key}.attributes.{name}") for name, value in raw.items())
    if columns is not None:
        for attr in attributes:
            _check_source(attr, columns, key)
    sizes = tuple(len(a.values) for a in attributes)
    combos = np.indices(sizes).reshape(len(sizes), -1).T
    formula = spec.get("code")
    codes: np.ndarray
    if formula is None:
        codes = np.asarray(np.ravel_multi_index(tuple(combos.T), sizes), dtype=np.int64)
    else:
        codes = _formula_codes(formula, attributes, combos, f"{key}.code")
    _check_bijection(codes, attributes, combos, formula, f"{key}.code")
    code_of = np.empty(sizes, dtype=np.int64)
    code_of[tuple(combos.T)] = codes
    scheme = Scheme(attributes, code_of, combos[np.argsort(codes)], key)
    names = class_names(scheme)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CompError(f"config key '{key}.attributes': class name {twice!r} arises twice; avoid '_' in values")
    return scheme


def class_names(spec: Mapping[str, Any] | Scheme) -> list[str]:
    """Class names in code order: the attribute values of code ``i`` joined with '_'."""
    scheme = parse_labels(spec)
    return ["_".join(a.values[i] for a, i in zip(scheme.attributes, combo)) for combo in scheme.combos]


def _attribute(name: str, raw: Any, key: str) -> Attribute:
    """Validate one attribute's spec."""
    if not isinstance(raw, Mapping):
        raise CompError(f"config key '{key}' must be a mapping with values (and source, map or bins)")
    for field in raw:
        if field not in ATTRIBUTE_KEYS:
            raise CompError(
                f"config key '{key}.{field}' is unknown{closest(str(field), ATTRIBUTE_KEYS)}; keys are {', '.join(ATTRIBUTE_KEYS)}"
            )
    values = raw.get("values")
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) < 2:
        raise CompError(f"config key '{key}.values' must list two or more values, in index order")
    values = tuple(str(v) for v in values)
    if len(set(values)) != len(values):
        raise CompError(
            f"config key '{key}.values' lists {next(v for v in values if values.count(v) > 1)!r} twice; each once"
        )
    source = raw.get("source", name)
    if not isinstance(source, str) or not source:
        raise CompError(f"config key '{key}.source' must be a column name, not {source!r}")
    mapping = raw.get("map")
    if mapping is not None:
        if not isinstance(mapping, Mapping) or not mapping:
            raise CompError(f"config key '{key}.map' must map raw values to one of {list(values)}")
        mapping = {str(k): str(v) for k, v in mapping.items()}
        for raw_value, value in mapping.items():
            if value not in values:
                raise CompError(
                    f"config key '{key}.map' maps {raw_value!r} to {value!r}, which is not in values {list(values)}{closest(value, values)}"
                )
    if mapping is not None and raw.get("bins") is not None:
        raise CompError(f"config key '{key}' has both map and bins; use one")
    if raw.get("train_bins") is not None and raw.get("bins") is None:
        raise CompError(f"config key '{key}.train_bins' needs {key}.bins (the scoring bins) too")
    bins = _bins(raw.get("bins"), f"{key}.bins", len(values))
    train_bins = _bins(raw.get("train_bins"), f"{key}.train_bins", len(values))
    return Attribute(name, source, values, mapping, bins, train_bins)


def _bins(raw: Any, key: str, n_values: int) -> tuple[float, ...] | None:
    """Validate bin edges: finite numbers, strictly increasing, one fewer than the values."""
    import numpy as np

    if raw is None:
        return None
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise CompError(f"config key '{key}' must be a list of numbers (bin edges), not {raw!r}")
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and np.isfinite(b) for b in raw):
        raise CompError(f"config key '{key}' {list(raw)} must hold finite numbers only")
    if any(b >= c for b, c in zip(raw, raw[1:])):
        raise CompError(f"config key '{key}' {list(raw)} is not strictly increasing; sort the edges")
    if len(raw) + 1 != n_values:
        raise CompError(f"config key '{key}' has {len(raw)} edges for {n_values} values; n edges make n + 1 values")
    return tuple(float(b) for b in raw)


def _check_source(attr: Attribute, columns: Iterable[Any], key: str) -> None:
    """Fail if the attribute's source column is missing."""
    names = [str(c) for c in columns]
    if attr.source not in names:
        raise CompError(
            f"config key '{key}.attributes.{attr.name}.source': column {attr.source!r} not found{closest(attr.source, names)}; "
            f"columns are {', '.join(names)}"
        )


def _formula_codes(formula: Any, attributes: tuple[Attribute, ...], combos: np.ndarray, key: str) -> np.ndarray:
    """Evaluate a code formula over every combination, allowing only names, integers, + and *."""
    import numpy as np

    if not isinstance(formula, str) or not formula.strip():
        raise CompError(f"config key '{key}' must be a formula such as 'mask * 6 + gender * 3 + age'")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError:
        raise CompError(
            f"config key '{key}' {formula!r} is not a formula; use attribute names, integers, + and *"
        ) from None
    env = {a.name: combos[:, j] for j, a in enumerate(attributes)}
    return np.broadcast_to(_evaluate(tree.body, env, formula, key), (len(combos),)).astype(np.int64)


def _evaluate(node: ast.AST, env: Mapping[str, np.ndarray], formula: str, key: str) -> np.ndarray:
    """Evaluate one node of a parsed code formula."""
    import numpy as np

    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left = _evaluate(node.left, env, formula, key)
        right = _evaluate(node.right, env, formula, key)
        return left + right if isinstance(node.op, ast.Add) else left * right
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise CompError(
                f"config key '{key}' {formula!r} names {node.id!r}, which is not an attribute{closest(node.id, env)}"
            )
        return env[node.id]
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        return np.asarray(node.value, dtype=np.int64)
    if isinstance(node, ast.BinOp):
        part = f"operator {OPERATORS.get(type(node.op), type(node.op).__name__)!r}"
    elif isinstance(node, ast.Call):
        part = "a function call"
    else:
        part = repr(ast.get_source_segment(formula.strip(), node) or type(node).__name__)
    raise CompError(f"config key '{key}' {formula!r}: {part} is not allowed; use attribute names, integers, + and *")


def _check_bijection(
    codes: np.ndarray, attributes: tuple[Attribute, ...], combos: np.ndarray, formula: Any, key: str
) -> None:
    """Fail unless ``codes`` are exactly 0..N-1, naming two combinations that collide or a code out of range."""
    import numpy as np

    n = len(combos)

    def name(j: int) -> str:
        return "_".join(a.values[i] for a, i in zip(attributes, combos[j]))

    outside = np.flatnonzero((codes < 0) | (codes >= n))
    if outside.size:
        j = int(outside[0])
        raise CompError(
            f"config key '{key}' {formula!r} gives {name(j)} code {codes[j]}, outside 0..{n - 1}; codes must be 0..{n - 1}"
        )
    order = np.argsort(codes, kind="stable")
    same = np.flatnonzero(np.diff(codes[order]) == 0)
    if same.size:
        a, b = order[same[0]], order[same[0] + 1]
        raise CompError(
            f"config key '{key}' {formula!r} gives {name(a)} and {name(b)} the same code {codes[a]}; each class needs its own"
        )
