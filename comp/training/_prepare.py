"""Before the first fold: check everything that can be checked, then write the run folder's first files
(config, sources of soft targets, folds) or check that an existing run folder was made with the same ones."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from comp.config import Config
from comp.data._augment import pipelines, to_dict, try_pipelines, valid_pipeline
from comp.data._features import FeatureScaler
from comp.data._folds import assign_folds
from comp.data._sample_weights import check_fold_weights
from comp.data._table import TrainTable
from comp.errors import CompError, arg, closest
from comp.metrics import check_config as check_metric
from comp.metrics import get_metric
from comp.run import RunDir, clear_run, data_inputs
from comp.training._distributed import Dist
from comp.training._engine import resolve_device
from comp.training._losses import build_loss
from comp.training._losses import check_config as check_losses
from comp.training._models import create_model, normalization
from comp.training._targets import TrainingTargets, check_and_record, load_training_targets
from comp.training._weights import check_hub_weights

log = logging.getLogger(__name__)


def _diff_keys(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in dict.fromkeys([*a, *b]):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def trained_anything(run: RunDir) -> bool:
    """Whether any fold of any model has a checkpoint or a partly trained state: only then does the run
    folder hold work that a changed config or training table would invalidate."""
    if not run.models_root.is_dir():
        return False
    return any(run.models_root.glob("*/fold*.pt"))


def prepare_run(cfg: Config, run: RunDir) -> None:
    """Save the resolved config, or check that an existing run folder was made with the same one.

    A run that trained nothing yet (e.g. the last attempt stopped on a bad image) takes the new config:
    the fix of a refused command is never refused itself."""
    if run.config.is_file() and trained_anything(run):
        # compared after validation, so a key added to comp since (with its default) is not a difference
        diff = [k for k in _diff_keys(run.load_config().to_dict(), cfg.to_dict()) if not k.startswith("track")]
        if diff:
            raise CompError(
                f"run folder {run.root} was made with a different config (keys differ: {', '.join(diff[:5])}); "
                "use the same config to continue it, pass another "
                + arg(
                    "run_dir, or exist_ok='overwrite' to start it again",
                    "--run-dir, or --exist-ok overwrite to start it again",
                )
            )
        return
    run.save_config(cfg)


def plan_folds(cfg: Config, run: RunDir, table: TrainTable, *, fresh: bool = False) -> tuple[np.ndarray, bool]:
    """(fold of every training row, whether folds.csv must be written): the saved assignment when it fits,
    else a new one (always a new one when ``fresh``: the run folder is about to be started again). Computed
    before anything is written, so an impossible split is refused first."""
    id_col = cfg.data.id_column
    ids = table.df[id_col].to_numpy()
    if run.folds.is_file() and not fresh:
        try:
            saved = run.fold_of(id_col)
        except CompError:
            saved = None
        fits = saved is not None and len(saved) == len(ids) and set(saved.index) == set(ids)
        if fits:
            return saved.loc[ids].to_numpy(np.int64), False
        if trained_anything(run):
            raise CompError(
                f"{run.folds} does not match {cfg.data.train_csv} (ids differ) and folds were trained "
                "on it; restore the training table or use a fresh --run-dir"
            )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds = assign_folds(table.targets, table.groups, cfg.folds.n_splits, cfg.folds.seed, task=cfg.task)
    for w in caught:
        warnings.warn(str(w.message), UserWarning, stacklevel=2)
    return folds, True


def ensure_folds(cfg: Config, run: RunDir, table: TrainTable) -> np.ndarray:
    """Fold of every training row: read ``folds.csv`` if it fits, else assign and write it."""
    folds, new = plan_folds(cfg, run, table)
    if new:
        run.write_folds(table.df[cfg.data.id_column].to_numpy(), folds, cfg.data.id_column)
    return folds


def preflight(cfg: Config, table: TrainTable) -> None:
    """Everything that can be checked before the first write: the device, every model (timm name, arguments,
    local weights), every transform and its arguments, the eval transform's serialisation, class weights,
    and every training image's header. A mistake found here leaves the run folder untouched."""
    from comp.data._table import check_images, load_image

    check_metric(cfg)  # the registry names this stage uses, first (config checks only their shape)
    check_losses(cfg)
    get_metric(cfg.metric, cfg.task).check_columns(list(table.classes))
    resolve_device(cfg.device)
    k = len(table.classes)
    if isinstance(cfg.loss.class_weights, list) and len(cfg.loss.class_weights) != k:
        raise CompError(
            f"config key 'loss.class_weights' must list {k} numbers (one per class: "
            f"{', '.join(table.classes[:6])}{'...' if k > 6 else ''}), got {len(cfg.loss.class_weights)}"
        )
    # a tower's shape only (each fold fits its own scaler on its training part)
    scaler = FeatureScaler.fit(table.features) if table.features is not None else None
    for i, entry in enumerate(cfg.models):
        tcfg = cfg.train_for(entry)
        if entry.pretrained is True:
            check_hub_weights(entry.name)  # fetched, or found in the cache offline, before anything is written
        if isinstance(entry.pretrained, str):
            model = create_model(
                entry, k, tcfg, scheme=table.scheme, scaler=scaler
            )  # loads and checks the local weights file
        else:
            with torch.device("meta"):  # architecture and arguments only: no memory, no download
                model = create_model(
                    dataclasses.replace(entry, pretrained=False), k, tcfg, scheme=table.scheme, scaler=scaler
                )
        if tcfg.freeze_epochs:
            from comp.training._models import head_parameters

            head_parameters(model)
        mean, std = normalization(model, entry.in_chans)
        pipelines(cfg.augment, entry.hw, mean, std, normalize=False)
        valid = valid_pipeline(cfg.augment, entry.hw, mean, std)
        from comp.data._augment import from_dict

        try:
            from_dict(to_dict(valid))
        except Exception as exc:  # noqa: BLE001 - any failure means the checkpoint could not be written later
            raise CompError(
                f"augment.valid cannot be saved in a checkpoint ({type(exc).__name__}); "
                f"use serialisable albumentations transforms (models[{i}])"
            ) from None
        build_loss(cfg.loss, table.targets, k, cfg.task)
    if table.features is not None and cfg.data.test_csv:  # the test table's metadata, before anything is trained
        from comp.data._features import read_test_features

        read_test_features(cfg.data, table.features.levels)
    check_images(table.paths, cfg.data.train_csv)
    first = load_image(table.paths[0])  # every transform runs once on a real image: errors that need a run
    for entry in cfg.models:
        try_pipelines(cfg.augment, entry.hw, first, str(table.paths[0]))


EXIST_OK = ("resume", "overwrite", "error")


def check_exist_ok(exist_ok: str) -> str:
    if exist_ok not in EXIST_OK:
        raise CompError(
            f"{arg('exist_ok', '--exist-ok')} must be one of {', '.join(EXIST_OK)}, got {exist_ok!r}"
            f"{closest(exist_ok, EXIST_OK)}"
        )
    return exist_ok


def start_over(cfg: Config, run: RunDir, exist_ok: str) -> bool:
    """What an existing run folder becomes: continued (``resume``: a changed config is refused later), emptied
    of comp's own files (``overwrite``: a user's files there stay), or refused (``error``).

    Returns whether the folder must be emptied; nothing is deleted here. The caller clears it (``clear_run``)
    only after every other check has passed, so a command refused for bad input keeps the old run intact."""
    if not run.root.is_dir() or not (run.config.is_file() or run.models_root.is_dir()):
        return False
    if exist_ok == "error":
        raise CompError(
            f"run folder {run.root} already exists; pass another {arg('run_dir', '--run-dir')}, or "
            f"{arg('exist_ok=' + repr('resume'), '--exist-ok resume')} to continue it, or "
            f"{arg('exist_ok=' + repr('overwrite'), '--exist-ok overwrite')} to start it again"
        )
    if exist_ok != "overwrite":
        return False
    for what, path in [*data_inputs(cfg.data), ("the teacher loss.distill.teacher", _teacher(cfg))]:
        if path and Path(path).resolve().is_relative_to(run.root.resolve()):
            raise CompError(
                f"{arg('exist_ok=' + repr('overwrite'), '--exist-ok overwrite')} would start {run.root} again, "
                f"which holds {what} ({path}) this run reads; pass another {arg('run_dir', '--run-dir')}"
            )
    return True


def _teacher(cfg: Config) -> str | None:
    distill = getattr(cfg.loss, "distill", None)
    return getattr(distill, "teacher", None) if distill is not None else None


def set_up_run(
    cfg: Config, run: RunDir, table: TrainTable, dist: Dist, exist_ok: str = "resume"
) -> tuple[np.ndarray, TrainingTargets | None]:
    """(fold of every training row, pseudo rows and teacher) on every rank. Rank 0 checks everything, then
    writes the config, ``sources.json`` and ``folds.csv``; the other ranks read what it wrote."""
    if dist.is_main:
        preflight(cfg, table)  # everything checkable is checked before the first write
        fresh = start_over(cfg, run, exist_ok)
        if cfg.data.cache == "disk":  # an unwritable data.cache_dir fails here, before the run folder is written
            from comp.data._cache import disk_cache_dir

            disk_cache_dir(cfg.data, run.root)
        fold_ids, new_folds = plan_folds(cfg, run, table, fresh=fresh)
        if table.weights is not None and cfg.data.weight_column:
            check_fold_weights(table.weights, fold_ids, cfg.data.weight_column)
        soft = load_training_targets(cfg, table, fold_ids, run)  # pseudo rows and teacher, checked before writing
        towers = [m.model_id for m in cfg.models if m.metadata is not None]
        if soft is not None and towers:
            raise CompError(
                f"model '{towers[0]}' has a metadata tower, which cannot train on pseudo labels or a teacher's "
                "targets yet (their rows have no training-table metadata); drop models[].metadata or the pseudo/"
                "distill source"
            )
        if fresh:  # every check above passed: only now does the old run go (a live fold lock still stops it)
            gone = clear_run(run.root)
            log.info("%s: started again (deleted %d files and folders comp had written there)", run.root, len(gone))
        prepare_run(cfg, run)
        check_and_record(soft, run, trained_anything(run))
        if new_folds:
            run.write_folds(table.df[cfg.data.id_column].to_numpy(), fold_ids, cfg.data.id_column)
    dist.barrier()
    if not dist.is_main:
        fold_ids = ensure_folds(cfg, run, table)  # reads the folds.csv rank 0 wrote
        soft = load_training_targets(cfg, table, fold_ids, run)
    return fold_ids, soft
