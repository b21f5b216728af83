"""Out-of-fold predictions: each fold's part as it finishes, and once every fold of a model is done its whole
``oof.csv`` and ``metrics.json``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from comp.config import Config
from comp.data._attributes import attribute_f1
from comp.data._table import TrainTable
from comp.metrics import get_metric
from comp.run import Metrics, Predictions, RunDir
from comp.training._distributed import Dist
from comp.training._results import FoldResult, ModelResult
from comp.training._targets import TrainingTargets

if TYPE_CHECKING:
    from comp.training._fold import FoldContext

log = logging.getLogger(__name__)


def oof_predictions(ctx: FoldContext, idx: np.ndarray, probs: np.ndarray) -> Predictions:
    """Rows ``idx`` of the training table as OOF predictions: id, fold, target (class name), probabilities."""
    id_col = ctx.cfg.data.id_column
    return Predictions(
        ctx.table.df[id_col].to_numpy(dtype=object)[idx],
        list(ctx.table.classes),
        probs,
        ctx.folds[idx],
        np.asarray(ctx.table.classes, dtype=object)[ctx.table.targets[idx]],
        id_col,
    )


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
    metric = get_metric(cfg.metric)
    assert oof.folds is not None
    fold_scores = [metric(table.targets[oof.folds == k], oof.probs[oof.folds == k]) for k in range(n)]
    result = Metrics(
        metric.name,
        metric.greater_is_better,
        metric(table.targets, oof.probs),
        fold_scores,
        float(np.mean(fold_scores)),
        float(np.std(fold_scores)),
        dict(extra or {}),
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
