"""The task seam: what differs between single-label, multi-label and regression competitions lives in one
``Task`` per kind, and every stage asks it instead of assuming softmax rows.

A ``Metric`` scores (targets, predictions). Some metrics score a *decision* fitted on the rows (per-label
thresholds for F-metrics, cut-points for QWK): ``Metric.fit`` fits it, ``Metric.apply`` applies it, and
calling the metric without a decision fits one in-sample. Reported CV never does that: ``nested_score``
fits each fold's decision on the other folds only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from comp._registry import Registry

Decision = dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """A competition metric of one task: ``fn(targets, predictions) -> float`` and its direction.

    ``fit``/``apply`` (both or neither): a decision fitted on rows and applied to predictions before ``fn``
    (``fn`` then receives the applied predictions: label sets, grades). ``per_column`` scores each output
    column on its own (per label or per target) for ``metrics.json``."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool = True
    needs_proba: bool = False  # False: only the decision (argmax, thresholds) matters
    task: str = "classification"
    fit: Callable[[np.ndarray, np.ndarray], Decision] | None = None
    apply: Callable[[np.ndarray, Decision], np.ndarray] | None = None
    per_column: Callable[[np.ndarray, np.ndarray, Decision | None], list[float]] | None = None
    doc: str = ""
    n_columns: int | None = None  # the number of output columns it scores (pauc: 2 classes, qwk: 1 target)

    def check_columns(self, columns: list[str]) -> None:
        """Refuse output columns this metric cannot score, naming them."""
        from comp.errors import ConfigError

        if self.n_columns is not None and len(columns) != self.n_columns:
            what = {"classification": "classes", "multilabel": "labels", "regression": "targets"}.get(self.task, "")
            raise ConfigError(
                f"metric '{self.name}' scores exactly {self.n_columns} {what}, the training table has "
                f"{len(columns)} ({', '.join(columns[:6])}{'...' if len(columns) > 6 else ''}); choose another metric"
            )

    def __call__(self, y_true: Any, pred: Any, decision: Decision | None = None) -> float:
        y, p = np.asarray(y_true), np.asarray(pred, dtype=np.float64)
        if self.fit is None or self.apply is None:
            return float(self.fn(y, p))
        d = decision if decision is not None else self.fit(y, p)
        return float(self.fn(y, self.apply(p, d)))

    @property
    def fitted(self) -> bool:
        """Whether the metric scores a decision fitted on OOF rows (thresholds, cut-points)."""
        return self.fit is not None

    def decide(self, y_true: Any, pred: Any) -> Decision | None:
        """The decision fitted on these rows (None for a metric that needs none)."""
        if self.fit is None:
            return None
        return self.fit(np.asarray(y_true), np.asarray(pred, dtype=np.float64))

    def columns(self, y_true: Any, pred: Any, decision: Decision | None = None) -> list[float] | None:
        """Per output column scores (labels, targets), or None when the metric has no per-column form."""
        if self.per_column is None:
            return None
        return [float(v) for v in self.per_column(np.asarray(y_true), np.asarray(pred, np.float64), decision)]

    def better(self, a: float, b: float | None) -> bool:
        """True when score ``a`` beats score ``b``."""
        if b is None or np.isnan(b):
            return not np.isnan(a)
        return a > b if self.greater_is_better else a < b

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf

    @property
    def direction(self) -> str:
        return "maximize" if self.greater_is_better else "minimize"


def nested_score(
    metric: Metric, y: np.ndarray, pred: np.ndarray, folds: np.ndarray
) -> tuple[float, Decision | None, float]:
    """(honest score, decision fitted on every row, in-sample score) of predictions ``pred`` against ``y``.

    A metric without a decision scores all rows once (honest = in-sample). A fitted one applies, to each
    fold's rows, the decision fitted on the other folds' rows, and scores the applied rows together."""
    y, pred, folds = np.asarray(y), np.asarray(pred, dtype=np.float64), np.asarray(folds)
    if metric.fit is None or metric.apply is None:
        s = metric(y, pred)
        return s, None, s
    whole = metric.fit(y, pred)
    in_sample = float(metric.fn(y, metric.apply(pred, whole)))
    uniq = np.unique(folds)
    if len(uniq) < 2:
        return in_sample, whole, in_sample
    applied: np.ndarray | None = None
    for k in uniq:
        rows, rest = folds == k, folds != k
        part = metric.apply(pred[rows], metric.fit(y[rest], pred[rest]))
        if applied is None:
            applied = np.zeros((len(y), *np.asarray(part).shape[1:]), dtype=np.asarray(part).dtype)
        applied[rows] = part
    assert applied is not None
    return float(metric.fn(y, applied)), whole, in_sample


@dataclass(frozen=True)
class Task:
    """One kind of competition target.

    - ``activation``: what turns the network's outputs into predictions (softmax rows, sigmoid per label, the
      identity followed by the inverse of the target scaling).
    - ``metrics``: the metrics that fit; ``default_metric``, ``default_loss``.
    - ``merges``: how TTA views and folds may be combined (no renormalising merge for multi-label rows).
    - ``blend_methods``: the blend methods that make sense for its predictions.
    - ``normalise``: what an average of predictions must be turned back into (rows summing to one,
      probabilities in [0, 1], values untouched)."""

    name: str
    activation: str
    metrics: Registry[Metric]
    default_metric: str
    default_loss: str
    merges: tuple[str, ...]
    blend_methods: tuple[str, ...]
    normalise: Callable[[np.ndarray], np.ndarray]
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> Metric:
        """The metric called ``name`` for this task; other tasks' metrics are named in the message."""
        return self.metrics.get(name)

    @property
    def probabilistic(self) -> bool:
        """Whether predictions are probabilities (classification, multi-label) rather than values."""
        return self.activation != "identity"


TASKS: Registry[Task] = Registry("task")
