"""``comp predict``: fold models (run by an ``ENGINES`` entry) + TTA -> per-model ``test.csv``, TTA OOF, a submission.

Every table is in the task's units: class probabilities, label probabilities, or target values (each fold
through its own target scaling, then the mean of the folds). The submission is rendered by the task
(``make_submission``): argmax classes, tags at the metric's fitted thresholds, values or QWK grades.
Images are decoded once per batch and fed to every fold, so k folds cost one pass over the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from comp._progress import track
from comp._tables import Rendered, table_frame
from comp.config import Config, load_config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table, read_csv
from comp.errors import CompError
from comp.inference._engines import ENGINES, Engine, Runner
from comp.inference._export import select_models
from comp.inference._tta import check_merge, merge_probs, parse_tta, views
from comp.metrics import get_metric
from comp.run import (
    Checkpoint,
    FileSet,
    Predictions,
    RunDir,
    check_output,
    data_inputs,
    image_trees,
    load_checkpoint,
    run_files,
    run_tree,
)
from comp.submission._format import make_submission, validate_submission
from comp.submission._record import record_submission
from comp.tasks import Decision, Metric, nested_score
from comp.training._engine import resolve_device
from comp.training._tower import test_metadata, train_metadata

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """One fold's model, ready to run."""

    fold: int
    ckpt: Checkpoint
    runner: Runner


def load_folds(
    run: RunDir,
    model_id: str,
    cfg: Config,
    engine: Engine,
    *,
    expect_folds: int | None = None,
) -> list[Fold]:
    """Every fold of a model as a runner of ``engine``, after the engine prepared what it needs (the onnx
    engine exports, with its parity check, graphs that are missing or were exported from other checkpoints)."""
    by_fold = run.fold_checkpoints(model_id)
    if expect_folds is not None and len(by_fold) != expect_folds:
        have = sorted(by_fold)
        missing = sorted(set(range(expect_folds)) - set(have))
        raise CompError(
            f"{run.model_dir(model_id)} has checkpoints for folds {have} of {expect_folds}; train the rest "
            f"(comp train-folds --folds {','.join(map(str, missing))}) or pass --allow-missing-folds"
        )
    engine.prepare(run, model_id, cfg)
    out = []
    for k, p in by_fold.items():
        ckpt = load_checkpoint(p)
        out.append(Fold(k, ckpt, engine.runner(run, model_id, k, ckpt)))
    sizes = {(f.ckpt.meta.image_size, tuple(f.ckpt.meta.classes)) for f in out}
    if len(sizes) > 1:
        raise CompError(
            f"folds of {run.model_dir(model_id)} disagree on image size or classes; retrain them with one config"
        )
    return out


def run_views(
    runners: list,
    paths: list[Path],
    transform,
    tta: list[str],
    merge: str,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "",
    task: str = "classification",
    reader=None,
    meta: np.ndarray | None = None,
    *,
    runner_mean: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(plain, merged-TTA) predictions, each (runners, N, C), decoding every image once for all runners
    (``reader`` maps a path to an RGB uint8 array: images in memory plug in here; ``meta``: a metadata
    tower's raw metadata rows, one per path, passed beside every view).

    ``runner_mean``: each (1, N, C), the mean over runners (the folds' average) taken batch by batch, the same
    numbers as ``.mean(0)`` of the full arrays without holding every fold's predictions of every row."""
    loader: DataLoader = DataLoader(
        ImageDataset(paths, transform=transform, reader=reader, meta=meta),  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=num_workers,
    )
    slots = 1 if runner_mean else len(runners)
    plain: list[list[np.ndarray]] = [[] for _ in range(slots)]
    merged: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for batch in track(loader, desc, enabled=bool(desc)):
        x, extra = batch[0], ((batch[-1].numpy(),) if meta is not None else ())
        xs = [v.float().numpy() for v in views(x.float(), tta)]
        batch_plain, batch_merged = [], []
        for run in runners:
            probs = np.stack([run(v, *extra) for v in xs])
            batch_plain.append(probs[0])
            batch_merged.append(merge_probs(probs, merge, task))
        if runner_mean:  # a mean over axis 0 is elementwise: per batch it equals the whole array's
            batch_plain, batch_merged = [np.stack(batch_plain).mean(0)], [np.stack(batch_merged).mean(0)]
        for i in range(slots):
            plain[i].append(batch_plain[i])
            merged[i].append(batch_merged[i])
    return np.stack([np.concatenate(p) for p in plain]), np.stack([np.concatenate(m) for m in merged])


def model_outputs(
    engine: Engine,
    run: RunDir,
    model_id: str,
    folds: list[Fold],
    paths: list[Path],
    *,
    tta: list[str],
    merge: str,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "",
    task: str = "classification",
    reader=None,
    meta: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """One model's predictions of ``paths``: each fold with its TTA views merged, then the mean of the folds
    (the engine's fused runner where it offers one). Returns them and whether the fused runner ran."""
    fused = engine.fused(run, model_id, [f.fold for f in folds], tta, merge)
    if fused is not None:  # one call per batch does every fold and TTA view
        runners, views_tta = [fused], []
    else:
        runners, views_tta = [f.runner for f in folds], tta
    _, merged = run_views(
        runners,
        paths,
        from_dict(folds[0].ckpt.meta.eval_transform),
        views_tta,
        merge,
        batch_size,
        num_workers,
        desc,
        task,
        reader,
        meta,
        runner_mean=True,
    )
    return merged[0], fused is not None


def _check_sample(data, test_ids: pd.Series) -> Path | None:
    """The sample submission path after checking it lists exactly the test ids (None when the config has none)."""
    if not data.sample_submission:
        return None
    path = Path(data.sample_submission)
    sample = read_csv(path, "sample submission")
    id_col = data.id_column if data.id_column in sample.columns else sample.columns[0]
    want, got = set(sample[id_col]), set(test_ids)
    if want != got:
        first = next(iter(sorted(want - got) or sorted(got - want)))
        raise CompError(
            f"{path}: {len(want - got)} ids missing from and {len(got - want)} extra in the test ids "
            f"(first: {first!r}); point data.sample_submission and data.test_csv at the same competition"
        )
    return path


def oof_tta(
    run: RunDir,
    model_id: str,
    cfg: Config,
    folds: list[Fold],
    tta: list[str],
    merge: str,
    batch_size: int,
    progress: bool,
) -> tuple[Predictions, float, float]:
    """Each fold's model with TTA on its own validation rows: (OOF with TTA, CV without, CV with TTA), scored by
    the task's metric; a metric with a fitted decision (thresholds, cut-points) by nested CV over the folds,
    as train-folds scores it."""
    data = cfg.data
    table = load_train_table(data, task=cfg.task)
    id_col = data.id_column
    fold_of = run.fold_of(id_col).reindex(table.df[id_col]).to_numpy()
    if pd.isna(fold_of).any():
        raise CompError(f"{run.folds} lacks some ids of {data.train_csv}; the training table changed since train-folds")
    classes, tower = folds[0].ckpt.meta.classes, folds[0].ckpt.meta.tower
    raw = train_metadata(data, tower, table.df) if tower else None
    plain = np.full((len(table.df), len(classes)), np.nan)
    merged = plain.copy()
    for f in folds:
        idx = np.flatnonzero(fold_of == f.fold)
        p, m = run_views(
            [f.runner],
            [table.paths[i] for i in idx],
            from_dict(f.ckpt.meta.eval_transform),
            tta,
            merge,
            batch_size,
            data.num_workers,
            f"{model_id} oof fold {f.fold}" if progress else "",
            cfg.task,
            meta=None if raw is None else raw[idx],
        )
        plain[idx], merged[idx] = p[0], m[0]
    done = ~np.isnan(merged[:, 0])
    metric = get_metric(cfg.metric, cfg.task)
    fold_of = fold_of.astype(np.int64)
    pred = Predictions(
        table.df[id_col].to_numpy(dtype=object),
        list(classes),
        merged,
        fold_of,
        table.target_labels(),
        id_col,
    ).take(done)
    y, k = table.targets[done], fold_of[done]
    return pred, nested_score(metric, y, plain[done], k)[0], nested_score(metric, y, merged[done], k)[0]


def resolve_options(cfg: Config, engine, tta, tta_merge, batch_size) -> tuple[str, list[str], str, int]:
    """Call options over the config's ``predict`` block, validated."""
    p = cfg.predict
    engine = ENGINES.check(engine or p.engine)
    batch_size = p.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise CompError(f"--batch-size must be >= 1, got {batch_size}")
    resolve_device(cfg.device)  # a device this machine lacks fails here, whichever engine runs
    merge = check_merge(tta_merge or p.tta_merge, cfg.task)  # a merge that does not fit the task: before any write
    return engine, parse_tta(p.tta if tta is None else tta), merge, batch_size


def _columns(pred: Predictions, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) of an OOF table with its columns in the order of ``classes``."""
    order = [pred.classes.index(c) for c in classes]
    y = pred.y[:, order] if pred.matrix_targets else pd.Index(classes).get_indexer(pred.targets)
    return y, pred.probs[:, order]


def fitted_decision(
    run: RunDir,
    model_ids: list[str],
    metric: Metric,
    classes: list[str],
    *,
    weights: list[float] | None = None,
    id_column: str | None = None,
) -> Decision | None:
    """The decision a submission of the (weighted) mean of ``model_ids``' predictions applies: per-label
    thresholds (F-metrics) or QWK cut-points, or None for a metric that fits none.

    One model: the decision its ``metrics.json`` recorded for this metric (fitted on all its OOF rows).
    Several models averaged: the metric's decision fitted on the same average of their OOF predictions, row for
    row; each model's own decision was fitted on its own predictions, not on the mean that is submitted."""
    if not metric.fitted:
        return None
    if len(model_ids) == 1 and run.metrics(model_ids[0]).is_file():
        recorded = run.read_metrics(model_ids[0])
        if recorded.metric == metric.name and recorded.extra.get("decision") is not None:
            return dict(recorded.extra["decision"])
    oofs = [run.read_oof(mid, id_column=id_column) for mid in model_ids]
    ids = oofs[0].ids
    for mid, o in zip(model_ids[1:], oofs[1:]):
        if set(o.ids) != set(ids):
            raise CompError(
                f"{run.oof(mid)} and {run.oof(model_ids[0])} hold different rows; the submission's "
                f"{metric.name} decision is fitted on the mean of their OOF predictions row for row, so "
                "retrain the models on the same folds.csv"
            )
    parts = [_columns(o.reorder(ids), classes) for o in oofs]
    w = np.ones(len(parts)) if weights is None else np.asarray(weights, np.float64)
    mean = np.tensordot(w / w.sum(), np.stack([p for _, p in parts]), axes=1)
    return metric.decide(parts[0][0], mean)


@dataclass
class ModelPrediction:
    model_id: str
    folds: int
    test: Path
    fused: bool
    cv: float | None = None  # with --oof: CV without and with the TTA
    cv_tta: float | None = None
    oof_tta: Path | None = None


@dataclass(repr=False)
class PredictResult(Rendered):
    """Per-model test predictions (``RUN/models/<id>/test.csv``) and the submission, if one was written."""

    run: RunDir
    engine: str
    tta: list[str]
    tta_merge: str
    models: dict[str, ModelPrediction]
    submission: Path | None
    decision: Decision | None = None  # the thresholds or cut-points the submission applied

    def test(self, model_id: str) -> pd.DataFrame:
        """A model's test predictions (id, one column per class, label or target, in the task's units)."""
        return self.run.read_test(model_id).frame()

    def title(self) -> str:
        return f"PredictResult: {self.run.root}, submission {self.submission or '(none)'}"

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "model": m.model_id,
                "folds": m.folds,
                "engine": self.engine,
                "tta": ",".join(self.tta) or "none",
                "cv": m.cv,
                "cv_tta": m.cv_tta,
            }
            for m in self.models.values()
        ]
        return table_frame(rows, ["model", "folds", "engine", "tta", "cv", "cv_tta"])


def predict_run(
    run_dir: str | Path,
    *,
    models: list[str] | None = None,
    engine: str | None = None,
    tta: list[str] | str | None = None,
    tta_merge: str | None = None,
    overrides: list[str] | dict | tuple = (),
    out: str | Path | None = None,
    oof: bool = False,
    batch_size: int | None = None,
    allow_missing_folds: bool = False,
    progress: bool = True,
) -> PredictResult:
    """Predict the test set with every chosen model of a run; write test.csv per model and the submission."""
    run = RunDir(run_dir)
    mids = select_models(run, models)
    cfg = load_config(run.load_config(), overrides=overrides)
    engine, tta_views, merge, bs = resolve_options(cfg, engine, tta, tta_merge, batch_size)
    runs_with = ENGINES[engine].from_config(cfg, run, batch_size=bs)
    data = cfg.data
    test_df, paths = load_test_table(data)
    sample = _check_sample(data, test_df[data.id_column])
    out_path = Path(out) if out else Path("submissions") / f"{run.root.resolve().name}.csv"
    if sample is not None:  # the submission never replaces the table, sample or run file it was made from
        check_output(
            out_path, [*data_inputs(data), *run_files(run.root)], trees=[run_tree(run.root), *image_trees(data)]
        )
    results: dict[str, ModelPrediction] = {}
    probs_by_model, classes = [], None
    files = FileSet(run.root)  # every model's test.csv (and oof_tta.csv) and the submission land together
    try:
        for mid in mids:
            folds = load_folds(
                run, mid, cfg, runs_with, expect_folds=None if allow_missing_folds else cfg.folds.n_splits
            )
            ck = folds[0].ckpt.meta
            if classes is not None and ck.classes != classes:
                raise CompError(
                    f"{mid} predicts classes {ck.classes} but {mids[0]} predicts {classes}; predict them separately"
                )
            classes = ck.classes
            probs, fused = model_outputs(
                runs_with,
                run,
                mid,
                folds,
                paths,
                tta=tta_views,
                merge=merge,
                batch_size=bs,
                num_workers=data.num_workers,
                desc=f"{mid} test" if progress else "",
                task=cfg.task,
                meta=test_metadata(data, ck.tower) if ck.tower else None,
            )
            test_pred = Predictions(
                test_df[data.id_column].to_numpy(dtype=object), list(classes), probs, id_column=data.id_column
            )
            info = ModelPrediction(mid, len(folds), run.test_pred(mid), fused)
            if oof:
                pred, info.cv, info.cv_tta = oof_tta(run, mid, cfg, folds, tta_views, merge, bs, progress)
                info.oof_tta = run.write_oof(mid, pred, tta=True, into=files)
            run.write_test(mid, test_pred, into=files)
            results[mid] = info
            probs_by_model.append(probs)
        result = PredictResult(run, engine, tta_views, merge, results, None)
        if sample is None:
            log.warning(
                "no data.sample_submission in the config: wrote test.csv only (set it with --set data.sample_submission=FILE)"
            )
        else:
            assert classes is not None
            metric = get_metric(cfg.metric, cfg.task)
            result.decision = fitted_decision(run, mids, metric, list(classes), id_column=data.id_column)
            sub = make_submission(
                test_df[data.id_column],
                np.mean(probs_by_model, axis=0),
                classes,
                sample,
                data.id_column,
                task=cfg.task,
                decision=result.decision,
            )
            validate_submission(sub, sample, classes, data.id_column, task=cfg.task)
            result.submission = files.csv(out_path, sub)
    except BaseException:
        files.discard()  # nothing of this call is committed
        raise
    files.commit()
    record_submission(run.root, result.submission, models=list(results))
    return result
