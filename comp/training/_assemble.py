"""Out-of-fold predictions: each fold's part as it finishes, and once every fold of a model is done its whole
``oof.csv`` and ``metrics.json``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from comp.config import Config
from comp.data._attributes import attribute_f1
from comp.data._table import TrainTable
from comp.metrics import get_metric
from comp.run import CheckpointMeta, Metrics, Predictions, RunDir, make_checkpoint, torch_save, write_csv
from comp.tasks import Metric, nested_score, weighted_score
from comp.training._distributed import Dist
from comp.training._results import FoldResult, ModelResult
from comp.training._targets import TrainingTargets

if TYPE_CHECKING:
    from comp.training._context import FoldContext

log = logging.getLogger(__name__)


def oof_predictions(ctx: FoldContext, idx: np.ndarray, probs: np.ndarray) -> Predictions:
    """Rows ``idx`` of the training table as OOF predictions: id, fold, target (class name or the target
    matrix's row), predictions."""
    id_col = ctx.cfg.data.id_column
    return Predictions(
        ctx.table.df[id_col].to_numpy(dtype=object)[idx],
        list(ctx.table.classes),
        probs,
        ctx.folds[idx],
        ctx.table.target_labels(idx),
        id_col,
    )


def score_oof(
    metric: Metric, y: np.ndarray, pred: np.ndarray, folds: np.ndarray, n_splits: int, classes: list[str]
) -> tuple[float, list[float], dict[str, Any]]:
    """(CV, per-fold scores, what metrics.json adds) of OOF predictions.

    A metric that scores a decision fitted on OOF rows (F-metric thresholds, QWK cut-points) is scored by
    nested CV: each fold's rows take the decision fitted on the other folds; ``cv_in_sample`` and the
    decision fitted on every row (what a submission applies) are recorded beside it."""
    cv, decision, in_sample = nested_score(metric, y, pred, folds)
    fold_scores = [metric(y[folds == k], pred[folds == k], decision) for k in range(n_splits)]
    extra: dict[str, Any] = {}
    if decision is not None:
        extra.update(cv_in_sample=in_sample, decision=decision)
    per = metric.columns(y, pred, decision)
    if per is not None:
        extra["per_column"] = dict(zip(classes, per))
    return cv, fold_scores, extra


def weighted_oof(
    metric: Metric, y: np.ndarray, pred: np.ndarray, folds: np.ndarray, n_splits: int, weights: np.ndarray
) -> dict[str, Any]:
    """``cv_weighted`` and ``fold_scores_weighted``: the OOF score with every row counting its
    ``data.weight_column`` weight (for competitions whose metric weights rows); nothing for a metric without
    a weighted form. The plain CV stays the one that picks epochs and ranks runs."""
    cv = weighted_score(metric, y, pred, weights)
    if cv is None:
        log.info("metric %s has no row-weighted form; metrics.json records the plain CV only", metric.name)
        return {}
    per_fold = [weighted_score(metric, y[folds == k], pred[folds == k], weights[folds == k]) for k in range(n_splits)]
    return {"cv_weighted": cv, "fold_scores_weighted": per_fold}


def assemble_model(
    cfg: Config, run: RunDir, model_id: str, table: TrainTable, extra: dict[str, Any] | None = None
) -> Metrics | None:
    """Once every fold of a model is done: write ``oof.csv`` (training-table order) and ``metrics.json``
    (``extra``: what else the folds trained on, from ``TrainingTargets.record``)."""
    n = cfg.folds.n_splits
    if not all(run.oof_part(model_id, k).is_file() and run.checkpoint(model_id, k).is_file() for k in range(n)):
        return None
    id_col = cfg.data.id_column
    parts = [run.read_oof_part(model_id, k, id_column=id_col) for k in range(n)]
    merged = Predictions(
        np.concatenate([p.ids for p in parts]),
        parts[0].classes,
        np.concatenate([p.probs for p in parts]),
        np.concatenate([p.folds for p in parts if p.folds is not None]),
        np.concatenate([p.targets for p in parts if p.targets is not None]),
        id_col,
    )
    oof = merged.reorder(table.df[id_col].to_numpy(dtype=object))
    metric = get_metric(cfg.metric, cfg.task)
    assert oof.folds is not None
    cv, fold_scores, scored = score_oof(metric, table.targets, oof.probs, oof.folds, n, list(table.classes))
    if table.weights is not None:
        scored.update(weighted_oof(metric, table.targets, oof.probs, oof.folds, n, table.weights))
        scored["weight_column"] = cfg.data.weight_column
    result = Metrics(
        metric.name,
        metric.greater_is_better,
        cv,
        fold_scores,
        float(np.mean(fold_scores)),
        float(np.std(fold_scores)),
        {"task": cfg.task, **scored, **dict(extra or {})},
    )
    if table.scheme is not None and table.attributes is not None:  # labels made of attributes: score each one
        result.extra["attribute_f1"] = attribute_f1(oof.probs, table.attributes.score, table.scheme)
        log.info(
            "%s OOF macro F1 per attribute: %s",
            model_id,
            ", ".join(f"{k} {v:.4f}" for k, v in result.extra["attribute_f1"].items()),
        )
    run.write_oof(model_id, oof)
    run.write_metrics(model_id, result)
    return result


def model_results(
    cfg: Config,
    run: RunDir,
    table: TrainTable,
    done: dict[str, dict[int, FoldResult]],
    soft: TrainingTargets | None,
    dist: Dist,
) -> dict[str, ModelResult]:
    """Every model's fold results and CV: rank 0 assembles the models whose folds are all done, every rank
    gets the same CV."""
    models: dict[str, ModelResult] = {}
    for entry in cfg.models:
        mid = entry.model_id
        result = (
            assemble_model(cfg, run, mid, table, soft.record() if soft is not None else None) if dist.is_main else None
        )
        models[mid] = ModelResult(
            mid,
            done[mid],
            dist.broadcast(result.cv if result else None),
            result.extra.get("attribute_f1") if result else None,
        )
    return models


def write_fold(
    ctx: FoldContext, model: Any, meta: CheckpointMeta, state: dict[str, Any], valid_idx: np.ndarray
) -> FoldResult:
    """Write a trained fold's OOF part, history and trainer-describing checkpoint (``model`` holds its best
    epoch's evaluated weights); drop the resumable state. Under DDP rank 0 alone writes."""
    run = ctx.run
    hist = pd.DataFrame(state["history"])
    if ctx.dist.is_main:
        write_csv(run.history(ctx.model_id, ctx.fold), hist)
        run.write_oof_part(ctx.model_id, ctx.fold, oof_predictions(ctx, valid_idx, state["best_probs"].numpy()))
        torch_save(run.checkpoint(ctx.model_id, ctx.fold), make_checkpoint(model.state_dict(), meta))
        run.state(ctx.model_id, ctx.fold).unlink(missing_ok=True)
    return FoldResult(state["best_score"], state["best_epoch"] + 1, len(hist), float(hist["images_per_s"].mean()))
