"""Blend methods: plain numpy functions on member predictions (M, n, C) and a registry of methods.

Predictions are whatever the members' task predicts: class probabilities (rows sum to one), label
probabilities (multilabel) or target values (regression); targets ``y`` are class indices (n,) or the target
matrix (n, C). The metric says which task it scores, and the task says what an average must be turned back
into (``Task.normalise``) and which methods fit (``Task.blend_methods``).

Each method's ``fit(P, y, metric)`` returns a ``Blender`` that maps member predictions to blended ones;
``nested_blend`` scores any fitted method honestly by refitting it without each fold in turn, and with it
the metric's decision (thresholds, cut-points), so that a fold's rows never meet weights or a decision
fitted on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from comp._registry import Registry
from comp.ensembling._side import Side
from comp.ensembling._task_stack import STACKERS
from comp.errors import CompError
from comp.metrics import Metric
from comp.tasks import Decision, Task, get_task

EPS = 1e-12


# ---------------------------------------------------------------- numbers


def normalise(p: np.ndarray) -> np.ndarray:
    """Clip negatives and scale rows to sum to one (all-zero rows become uniform)."""
    p = np.clip(p, 0.0, None)
    s = p.sum(axis=-1, keepdims=True)
    return np.divide(p, s, out=np.full_like(p, 1.0 / p.shape[-1]), where=s > 0)


Normalise = Callable[[np.ndarray], np.ndarray]


def task_of(metric: Metric) -> Task:
    """The task whose predictions ``metric`` scores (every metric belongs to one task's registry)."""
    return get_task(metric.task)


def weighted_mean(P: np.ndarray, w: np.ndarray, norm: Normalise = normalise) -> np.ndarray:
    """Weighted arithmetic mean of member predictions ``P`` (M, n, C) -> (n, C), then ``norm`` (the task's
    ``normalise``: rows renormalised for classification, probabilities clipped, values untouched)."""
    return norm(np.tensordot(np.asarray(w, dtype=np.float64), P, axes=1))


def geometric_mean(P: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted geometric mean of member probabilities, renormalised per row."""
    w = np.full(len(P), 1.0 / len(P)) if w is None else np.asarray(w, dtype=np.float64) / np.sum(w)
    logp = np.tensordot(w, np.log(np.clip(P, EPS, 1.0)), axes=1)
    return normalise(np.exp(logp - logp.max(axis=1, keepdims=True)))


def rank_mean(P: np.ndarray, norm: Normalise = normalise) -> np.ndarray:
    """Average each column's rank over rows across members, as a fraction of the rows (in (0, 1]), then ``norm``.

    Classification rows are then scaled to sum to one (what a rank blend of classes always was: the fraction
    is the same factor 1/n on every column, so the rows come out the same); label columns stay in [0, 1]."""
    # pandas, not scipy.stats: that import costs a second
    ranks = [pd.DataFrame(p).rank(axis=0, pct=True).to_numpy() for p in P]
    return norm(np.mean(ranks, axis=0))


def apply_bias(p: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Add per-class log-probability offsets ``b`` and renormalise."""
    logits = np.log(np.clip(p, EPS, 1.0)) + b
    return normalise(np.exp(logits - logits.max(axis=1, keepdims=True)))


def scorer(metric: Metric, y: np.ndarray, decision: Decision | None = None) -> Callable[[np.ndarray], float]:
    """``probs -> score`` for one fit; argmax metrics are cached by predicted labels, which searches revisit.

    A metric with a fitted decision (thresholds, cut-points) scores at ``decision`` when one is given, else
    fits it on the rows it scores. Weight searches fit it once per round on their current blend and compare
    the round's candidates at it (fitting thresholds costs a second on 20k rows x 17 labels, comparing at
    them a few milliseconds): coordinate ascent over weights and decision together."""
    if decision is not None:
        apply = metric.apply
        assert apply is not None
        return lambda p: float(metric.fn(y, apply(p, decision)))
    if metric.needs_proba or metric.fitted or metric.task != "classification":  # only class rows have an argmax
        return lambda p: metric(y, p)
    cache: dict[bytes, float] = {}

    def score(p: np.ndarray) -> float:
        key = hashlib.blake2b(p.argmax(1).tobytes(), digest_size=16).digest()
        if key not in cache:
            cache[key] = metric(y, p)
        return cache[key]

    return score


def _passes(metric: Metric, y: np.ndarray, score_of: Callable[[np.ndarray], float], current: np.ndarray):
    """(scorer, score of ``current``) for each pass of a search step: a metric with a fitted decision compares
    candidates at the decision fitted on the current blend first (one fit instead of one per candidate), and
    only when none improves there at their own decisions, so a search stops where the exact one would."""
    if metric.fitted:
        fixed = scorer(metric, y, metric.decide(y, current))
        yield fixed, fixed(current)
    yield score_of, score_of(current)


def fit_weights(
    P: np.ndarray, y: np.ndarray, metric: Metric, steps=(0.5, 0.2, 0.05), max_rounds: int = 30
) -> np.ndarray:
    """Non-negative weights summing to one that optimise ``metric``, by greedy coordinate search."""
    # Hand-written rather than scipy.optimize: argmax metrics (F1, accuracy) are piecewise constant, so
    # gradient and simplex methods stall on their plateaus; a coarse-to-fine coordinate grid does not.
    score_of = scorer(metric, y)
    norm = task_of(metric).normalise
    w = np.full(len(P), 1.0 / len(P))
    for _ in range(max_rounds):
        step = None
        for score_at, best in _passes(metric, y, score_of, weighted_mean(P, w, norm)):
            for j in range(len(P)):
                for delta in [s for d in steps for s in (d, -d)]:
                    v = w.copy()
                    v[j] = max(0.0, v[j] + delta)
                    if v.sum() <= 0:
                        continue
                    v /= v.sum()
                    score = score_at(weighted_mean(P, v, norm))
                    if metric.better(score, best):
                        best, step = score, v
            if step is not None:
                break
        if step is None:
            break
        w = step
    return w


def hill_climb(P: np.ndarray, y: np.ndarray, metric: Metric, max_iter: int = 50) -> np.ndarray:
    """Ensemble selection with replacement (Caruana et al. 2004); returns member weights summing to one."""
    score_of = scorer(metric, y)
    scores = [score_of(p) for p in P]
    first = _best_index(scores, metric)
    counts = np.zeros(len(P))
    counts[first] = 1
    total = P[first].copy()
    for _ in range(max_iter):
        k = counts.sum() + 1
        pick = None
        for score_at, best in _passes(metric, y, score_of, total / counts.sum()):
            trial = [score_at((total + p) / k) for p in P]
            m = _best_index(trial, metric)
            if metric.better(trial[m], best):
                pick = m
                break
        if pick is None:
            break
        counts[pick] += 1
        total += P[pick]
    return counts / counts.sum()


def _best_index(scores: list[float], metric: Metric) -> int:
    best = 0
    for i, s in enumerate(scores):
        if metric.better(s, scores[best]):
            best = i
    return best


def fit_bias(p: np.ndarray, y: np.ndarray, metric: Metric, steps=(1.0, 0.4, 0.1), max_rounds: int = 10) -> np.ndarray:
    """Per-class log-probability offsets that optimise ``metric``, by coordinate search (classification)."""
    check_bias(task_of(metric))
    score_of = scorer(metric, y)
    b = np.zeros(p.shape[1])
    best = score_of(apply_bias(p, b))
    for _ in range(max_rounds):
        improved = False
        for c in range(len(b)):
            for delta in [s for d in steps for s in (d, -d)]:
                v = b.copy()
                v[c] += delta
                score = score_of(apply_bias(p, v))
                if metric.better(score, best):
                    best, b, improved = score, v, True
        if not improved:
            break
    return b - b.mean()


# ---------------------------------------------------------------- method registry


def check_bias(task: Task) -> None:
    """``--bias`` offsets class log-probabilities before an argmax: refuse it for tasks without class rows."""
    if task.activation != "softmax":
        raise CompError(
            f"--bias fits per-class log-probability offsets for single-label classification; task {task.name} "
            "has none (its fitted decisions are part of the metric: thresholds, cut-points); drop --bias"
        )


@dataclass(frozen=True)
class Blender:
    """A blend ready to apply: member predictions (M, n, C) -> blended predictions (n, C). A method that reads
    per-row inputs beside the predictions (metadata, groups: :class:`Side`) sets ``predict_side`` instead."""

    predict: Callable[[np.ndarray], np.ndarray]
    weights: np.ndarray | None = None
    predict_side: Callable[[np.ndarray, Side | None], np.ndarray] | None = None
    saved: list[dict] | None = None  # a stack's boosters as files describe them (gbdt: ``saved_boosters``)

    def apply(self, Q: np.ndarray, side: Side | None = None) -> np.ndarray:
        """Blend ``Q`` (M, n, C); ``side`` holds the same n rows' inputs for a method that reads them."""
        return self.predict(Q) if self.predict_side is None else self.predict_side(Q, side)


@dataclass(frozen=True)
class Method:
    """A registered blend method."""

    name: str
    fit: Callable[..., Blender]  # fit(P, y, metric) or, with ``side``, fit(P, y, metric, side=...)
    fitted: bool  # True: fit looks at the targets, so its score needs nested CV
    weighted_mean: bool = False  # True: the blend is sum_m w_m * P_m with the Blender's weights (a bundle can carry it)
    side: bool = False  # True: fit and predict also read per-row inputs (metadata, groups, folds)
    requires: str | None = None  # an optional library it imports (pip extra), left out of --method all without it


METHODS: Registry[Method] = Registry("blend method")


def register(name: str, fitted: bool, weighted_mean: bool = False, side: bool = False, requires: str | None = None):
    """Decorator: add ``fit(P, y, metric) -> Blender`` to the blend registry under ``name``."""

    def deco(fn):
        METHODS.add(name, Method(name, fn, fitted, weighted_mean, side, requires))
        return fn

    return deco


def get_method(name: str) -> Method:
    """Look up a blend method; unknown names list the valid ones."""
    return METHODS.get(name)


def check_method(name: str, task: Task) -> Method:
    """The blend method ``name`` if it fits ``task`` (``Task.blend_methods``), else a CompError naming those that do."""
    method = get_method(name)
    if name not in task.blend_methods:
        raise CompError(
            f"blend method '{name}' does not fit task {task.name}; methods that fit {task.name}: "
            f"{', '.join(m for m in METHODS if m in task.blend_methods)}"
        )
    if method.requires is not None:
        from importlib.util import find_spec

        if find_spec(method.requires) is None:
            raise CompError(
                f"blend method '{name}' needs {method.requires}: pip install 'comp[{name}]' (or pip install "
                f"{method.requires})"
            )
    return method


def task_methods(task: Task) -> list[str]:
    """The registered blend methods that fit ``task``, in registry order (what ``--method all`` runs), less
    those whose optional library is not installed (named on its own, such a method says how to install it)."""
    from importlib.util import find_spec

    def installed(m: Method) -> bool:
        return m.requires is None or find_spec(m.requires) is not None

    return [m for m in METHODS if m in task.blend_methods and installed(METHODS[m])]


def _equal(P: np.ndarray) -> np.ndarray:
    return np.full(len(P), 1.0 / len(P))


@register("mean", fitted=False, weighted_mean=True)
def _mean(P, y, metric):
    w, norm = _equal(P), task_of(metric).normalise
    return Blender(lambda Q: weighted_mean(Q, w, norm), w)


@register("weighted", fitted=True, weighted_mean=True)
def _weighted(P, y, metric):
    w, norm = fit_weights(P, y, metric), task_of(metric).normalise
    return Blender(lambda Q: weighted_mean(Q, w, norm), w)


@register("rank", fitted=False)
def _rank(P, y, metric):
    norm = task_of(metric).normalise
    return Blender(lambda Q: rank_mean(Q, norm), _equal(P))


@register("geometric", fitted=False)
def _geometric(P, y, metric):
    return Blender(geometric_mean, _equal(P))


@register("hill_climb", fitted=True, weighted_mean=True)
def _hill_climb(P, y, metric):
    w, norm = hill_climb(P, y, metric), task_of(metric).normalise
    return Blender(lambda Q: weighted_mean(Q, w, norm), w)


@register("stacking", fitted=True)
def _stacking(P, y, metric):
    return Blender(STACKERS[metric.task](P, y), None)


def fit_blend(
    method: Method, P: np.ndarray, y: np.ndarray, metric: Metric, bias: bool, side: Side | None = None
) -> tuple[Blender, np.ndarray | None]:
    """Fit a method (and optional per-class biases on its output) on OOF rows (``side``: their per-row inputs)."""
    blender = method.fit(P, y, metric, side=side) if method.side else method.fit(P, y, metric)
    if not bias:
        return blender, None
    b = fit_bias(blender.apply(P, side), y, metric)
    return Blender(
        lambda Q: apply_bias(blender.predict(Q), b),
        blender.weights,
        None if blender.predict_side is None else lambda Q, S: apply_bias(blender.apply(Q, S), b),
    ), b


def nested_oof(
    method: Method,
    P: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    metric: Metric,
    bias: bool,
    side: Side | None = None,
) -> np.ndarray:
    """Out-of-fold blend: for each fold, fit on the other folds' OOF rows and predict this fold's rows."""
    return nested_blend(method, P, y, folds, metric, bias, side).pred


@dataclass(frozen=True)
class NestedBlend:
    """An honest blend of OOF rows: ``pred`` (n, C) from blends fitted without each row's fold and, for a metric
    with a fitted decision, ``decisions[k]`` fitted on the other folds only, applied to fold ``k``'s rows."""

    pred: np.ndarray
    decisions: dict[int, Decision]


def nested_blend(
    method: Method,
    P: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    metric: Metric,
    bias: bool,
    side: Side | None = None,
    *,
    on_fold: Callable[[], None] | None = None,
) -> NestedBlend:
    """Out-of-fold blend and decisions: for each fold, fit the blend (and the metric's decision, on the blend's
    predictions of those rows) on the other folds' OOF rows; predict this fold's rows. ``side``: the rows'
    per-row inputs, split with them."""
    if len(np.unique(folds)) < 2:
        raise CompError("nested CV needs at least two folds in oof.csv; retrain with folds.n_splits >= 2")
    out = np.empty(P.shape[1:])
    decisions: dict[int, Decision] = {}
    for k in np.unique(folds):
        train = folds != k
        part, held = (None, None) if side is None else (side.take(train), side.take(~train))
        blender, _ = fit_blend(method, P[:, train], y[train], metric, bias, part)
        out[~train] = blender.apply(P[:, ~train], held)
        if metric.fitted:
            decision = metric.decide(y[train], blender.apply(P[:, train], part))
            assert decision is not None
            decisions[int(k)] = decision
        if on_fold is not None:
            on_fold()
    return NestedBlend(out, decisions)


def nested_decisions(metric: Metric, y: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> dict[int, Decision]:
    """For a blend fitted on nothing (its predictions are the same whichever rows it saw): each fold's decision
    fitted on the other folds' rows (empty for a metric without one)."""
    if not metric.fitted:
        return {}
    out = {}
    for k in np.unique(folds):
        d = metric.decide(y[folds != k], pred[folds != k])
        assert d is not None
        out[int(k)] = d
    return out


def nested_scores(
    metric: Metric, y: np.ndarray, pred: np.ndarray, folds: np.ndarray, decisions: dict[int, Decision]
) -> tuple[float, list[float]]:
    """(CV, per-fold scores) of an honest blend: each fold's rows under its own decision, scored together."""
    ks = [int(k) for k in np.unique(folds)]
    if not decisions:
        return metric(y, pred), [metric(y[folds == k], pred[folds == k]) for k in ks]
    assert metric.apply is not None
    parts = {k: metric.apply(pred[folds == k], decisions[k]) for k in ks}
    first = np.asarray(parts[ks[0]])
    applied = np.zeros((len(y), *first.shape[1:]), dtype=first.dtype)
    for k in ks:
        applied[folds == k] = parts[k]
    return float(metric.fn(y, applied)), [float(metric.fn(y[folds == k], applied[folds == k])) for k in ks]
