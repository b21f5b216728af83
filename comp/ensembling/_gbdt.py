"""The ``gbdt`` blend method: LightGBM over the members' OOF predictions, the metadata and group-relative features.

One model per fit, by task: a multiclass booster (classification), one binary booster per label (multilabel:
labels are scored one by one, and a label's booster cannot borrow another's rows), one regression booster per
target. Each is fitted on the rows it is given only: early stopping holds out one of those rows' own blocks
(folds) -- never a row the nested CV is about to score -- picks the number of rounds on the booster's own loss
(multi-class log-loss, binary log-loss, squared error), then the booster is refitted on every given row with
that many rounds. Small trees and strong regularisation: OOF tables are a few thousand rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from comp.ensembling._blend import Blender, Method, register
from comp.ensembling._side import Side, design
from comp.errors import CompError, closest
from comp.metrics import Metric

PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 15,
    "max_depth": 5,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "cat_smooth": 10.0,
    "min_data_per_group": 10,
    "verbose": -1,
    "seed": 0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,  # OOF tables are small: threads cost more than they save, and blends run beside training
}
MAX_ROUNDS = 2000
PATIENCE = 50
# what ``comp ensemble --gbdt-param KEY=VALUE`` may set: LightGBM's name -> (type, check, what it must be)
TUNABLE: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "learning_rate": (float, lambda v: v > 0, "a number > 0"),
    "num_leaves": (int, lambda v: v >= 2, "an integer >= 2"),
    "max_depth": (int, lambda v: v == -1 or v >= 1, "-1 (no limit) or an integer >= 1"),
    "min_data_in_leaf": (int, lambda v: v >= 1, "an integer >= 1"),
    "min_sum_hessian_in_leaf": (float, lambda v: v >= 0, "a number >= 0"),
    "feature_fraction": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "bagging_fraction": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "bagging_freq": (int, lambda v: v >= 0, "an integer >= 0 (0: no bagging)"),
    "lambda_l1": (float, lambda v: v >= 0, "a number >= 0"),
    "lambda_l2": (float, lambda v: v >= 0, "a number >= 0"),
    "cat_smooth": (float, lambda v: v >= 0, "a number >= 0"),
    "min_data_per_group": (int, lambda v: v >= 1, "an integer >= 1"),
    "extra_trees": (bool, lambda v: True, "true or false"),
    "seed": (int, lambda v: True, "an integer"),
    "num_threads": (int, lambda v: v >= 1, "an integer >= 1"),
}


def _value(kind: type, text: str) -> Any:
    if kind is bool:
        return {"true": True, "false": False, "1": True, "0": False}[text.strip().lower()]
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_params(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of the stack's LightGBM parameters (``PARAMS``), each key one of ``TUNABLE`` and
    its value checked; a dict's values are checked the same way. Empty for none."""
    pairs: list[tuple[str, str]] = []
    for item in [] if items is None else (list(items.items()) if isinstance(items, dict) else list(items)):
        if isinstance(item, tuple):
            pairs.append((str(item[0]), str(item[1])))
        elif "=" not in item:
            raise CompError(f"--gbdt-param {item!r} is not KEY=VALUE; e.g. --gbdt-param num_leaves=31")
        else:
            key, _, text = item.partition("=")
            pairs.append((key.strip(), text.strip()))
    out: dict[str, Any] = {}
    for key, text in pairs:
        if key not in TUNABLE:
            raise CompError(
                f"--gbdt-param {key}: not a parameter it sets; choose from {', '.join(TUNABLE)}{closest(key, TUNABLE)}"
            )
        kind, check, want = TUNABLE[key]
        try:
            value = _value(kind, text)
        except (ValueError, KeyError):
            raise CompError(f"--gbdt-param {key}={text}: {key} must be {want}") from None
        if not check(value):
            raise CompError(f"--gbdt-param {key}={text}: {key} must be {want}")
        out[key] = value
    return out


def with_params(method: Method, params: dict[str, Any]) -> Method:
    """``method`` fitting its boosters with ``params`` over ``PARAMS`` (refused for a method other than gbdt)."""
    if not params:
        return method
    if method.name != "gbdt":
        raise CompError(f"--gbdt-param sets the LightGBM parameters of --method gbdt; this blend uses {method.name}")
    return dataclasses.replace(method, fit=functools.partial(method.fit, params=params))


def _lightgbm():
    try:
        import lightgbm
    except ImportError:
        raise CompError(
            "blend method gbdt needs LightGBM: pip install 'comp[gbdt]' (or pip install lightgbm)"
        ) from None
    return lightgbm


def _holdout(side: Side | None, n: int) -> np.ndarray:
    """Rows of the fitted part that early stopping holds out: its last block (fold) when it has several, else a
    seeded fifth of its rows."""
    if side is not None and len(np.unique(side.blocks)) >= 2:
        return side.blocks == np.max(side.blocks)
    rng = np.random.default_rng(0)
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[: max(1, n // 5)]] = True
    return out


@dataclass(frozen=True)
class _Booster:
    """A LightGBM model (or a constant where the fitted rows hold one value) and its number of rounds."""

    model: Any
    rounds: int
    constant: np.ndarray | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.tile(self.constant, (len(X), 1))
        out = np.asarray(self.model.predict(X, num_iteration=self.rounds), np.float64)
        return out.reshape(len(X), -1)

    def saved(self) -> dict[str, Any]:
        """What a blend folder keeps of it: LightGBM's text model (``text``) or the constant, and the rounds."""
        if self.constant is not None:
            return {"constant": [float(v) for v in self.constant], "rounds": 0}
        return {"text": self.model.model_to_string(num_iteration=self.rounds), "rounds": self.rounds}


def _fit_one(X: np.ndarray, y: np.ndarray, params: dict[str, Any], cats: list[int], held: np.ndarray) -> _Booster:
    lgb = _lightgbm()
    fit_rows = ~held
    stop = lgb.early_stopping(PATIENCE, verbose=False)
    kw = {"categorical_feature": cats, "free_raw_data": False}
    train = lgb.Dataset(X[fit_rows], y[fit_rows], **kw)
    valid = lgb.Dataset(X[held], y[held], reference=train, **kw)
    probe = lgb.train(params, train, MAX_ROUNDS, valid_sets=[valid], callbacks=[stop])
    rounds = max(1, int(probe.best_iteration or probe.current_iteration()))
    model = lgb.train(params, lgb.Dataset(X, y, **kw), rounds)
    return _Booster(model, rounds)


def fit_gbdt(
    P: np.ndarray,
    y: np.ndarray,
    task: str,
    side: Side | None = None,
    columns: list[str] | None = None,
    params: dict[str, Any] | None = None,
):
    """Fit the stack on member predictions ``P`` (M, n, C), targets ``y`` and the rows' ``side`` inputs (LightGBM
    ``PARAMS`` with ``params`` over them); returns ``predict(Q, side) -> (n, C)`` and the boosters."""
    base = {**PARAMS, **(params or {})}
    X, _, cats = design(P, side, columns)
    held = _holdout(side, len(X))
    C = P.shape[2]
    boosters: list[_Booster] = []
    if task == "classification":
        y = np.asarray(y, np.int64)
        boosters.append(_fit_one(X, y, {**base, "objective": "multiclass", "num_class": C}, cats, held))
    else:
        Y = np.asarray(y, np.float64).reshape(len(X), -1)
        objective = "binary" if task == "multilabel" else "regression"
        for t in range(Y.shape[1]):
            target = Y[:, t]
            if np.all(target == target[0]) or (task == "multilabel" and len(np.unique(target[~held])) < 2):
                boosters.append(_Booster(None, 0, np.array([float(target.mean())])))
                continue
            boosters.append(_fit_one(X, target, {**base, "objective": objective}, cats, held))

    def predict(Q: np.ndarray, q_side: Side | None) -> np.ndarray:
        if (q_side is None) != (side is None):
            raise ValueError("the gbdt stack predicts with the same kind of side inputs it was fitted with")
        Xq, _, _ = design(Q, q_side, columns)
        out = np.concatenate([b.predict(Xq) for b in boosters], axis=1)
        if task == "classification":
            return out / out.sum(axis=1, keepdims=True)
        return out

    return predict, boosters


@register("gbdt", fitted=True, side=True, requires="lightgbm")
def _gbdt(P, y, metric: Metric, side: Side | None = None, params: dict[str, Any] | None = None) -> Blender:
    predict, boosters = fit_gbdt(P, y, metric.task, side, params=params)
    return Blender(lambda Q: predict(Q, None), None, predict, saved=[b.saved() for b in boosters])


def stack_spec(
    task: str, n_members: int, side: Side | None, group_column: str | None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a reader of the saved boosters needs to rebuild their input (``_side.design``) from the members'
    predictions and the test table: the metadata columns with their training levels, and the group column."""
    features = None
    if side is not None and side.names:
        cats = [side.names[j] for j in side.categorical]
        numeric = [n for j, n in enumerate(side.names) if j not in side.categorical]
        levels = side.levels or {}
        features = {"numeric": numeric, "categorical": cats, "levels": {c: list(levels[c]) for c in cats}}
    grouped = side is not None and side.groups is not None
    return {
        "method": "gbdt",
        "task": task,
        "members": n_members,
        "features": features,
        "group_column": group_column if grouped else None,
        "normalise": task == "classification",
        "params": {**PARAMS, **(params or {})},  # informational: what the boosters were fitted with
    }
