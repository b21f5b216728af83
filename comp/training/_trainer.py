"""``train_folds(cfg)``: fold assignment, per-model per-fold training, OOF assembly, metrics and resume.

Every epoch re-seeds torch, numpy, python and the augmentations from (seed, model, fold, epoch), so a run
resumed from its last finished epoch is identical to one that was never interrupted, and a fold trained by
any worker equals the same fold trained alone.

Three ways to use more than one device, all through the same fold loop:
- ``devices=[...]``: one worker process per device, each taking the next unfinished (model, fold) through
  the fold locks (``_parallel``);
- under ``torchrun``: every rank trains each fold together with DistributedDataParallel (``_distributed``);
- several boxes sharing the run folder, with ``folds=`` or ``devices=`` on each: the same locks.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, DistributedSampler, Subset

from comp._progress import Progress
from comp._tables import format_table
from comp.config import Config, ModelConfig, TrainConfig
from comp.data._attributes import attribute_f1
from comp.data._augment import BatchMixer, DeviceNormalize, pipelines, to_dict, valid_pipeline
from comp.data._folds import assign_folds
from comp.data._table import ImageDataset, TrainTable, load_train_table
from comp.errors import CompError
from comp.metrics import check_config as check_metric
from comp.metrics import get_metric
from comp.run import (
    CheckpointMeta,
    LockHeld,
    Metrics,
    Predictions,
    RunDir,
    exclusive,
    make_checkpoint,
    torch_save,
    write_csv,
)
from comp.training._distributed import SINGLE, Dist, rank_device, session
from comp.training._engine import StepConfig, predict_probs, resolve_amp, resolve_device, train_one_epoch
from comp.training._heads import attribute_loss
from comp.training._losses import build_loss
from comp.training._losses import check_config as check_losses
from comp.training._models import create_model, heads_description, normalization, set_backbone_frozen
from comp.training._soft import training_part
from comp.training._targets import TrainingTargets, check_and_record, load_training_targets

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    seed = int(seed) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _derive_seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


def _seed_worker(worker_id: int) -> None:
    """Each loader worker seeds numpy, random and its albumentations pipeline from torch's per-worker seed."""
    seed = torch.initial_seed() % (2**31)
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    ds: Any = None if info is None else info.dataset
    ds = ds.dataset if isinstance(ds, Subset) else ds
    if getattr(ds, "transform", None) is not None:
        ds.transform.set_random_seed(seed)


# ---------------------------------------------------------------- run folder


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
        diff = _diff_keys(run.load_config().to_dict(), cfg.to_dict())
        if diff:
            raise CompError(
                f"run folder {run.root} was made with a different config (keys differ: {', '.join(diff[:5])}); "
                "use the same config to continue it, or pass another --run-dir"
            )
        return
    run.save_config(cfg)


def plan_folds(cfg: Config, run: RunDir, table: TrainTable) -> tuple[np.ndarray, bool]:
    """(fold of every training row, whether folds.csv must be written): the saved assignment when it fits,
    else a new one. Computed before anything is written, so an impossible split is refused first."""
    id_col = cfg.data.id_column
    ids = table.df[id_col].to_numpy()
    if run.folds.is_file():
        try:
            saved = run.read_folds(id_col)
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
        folds = assign_folds(table.targets, table.groups, cfg.folds.n_splits, cfg.folds.seed)
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
    from comp.data._table import check_images

    check_metric(cfg)  # the registry names this stage uses, first (config checks only their shape)
    check_losses(cfg)
    resolve_device(cfg.device)
    k = len(table.classes)
    if isinstance(cfg.loss.class_weights, list) and len(cfg.loss.class_weights) != k:
        raise CompError(
            f"config key 'loss.class_weights' must list {k} numbers (one per class: "
            f"{', '.join(table.classes[:6])}{'...' if k > 6 else ''}), got {len(cfg.loss.class_weights)}"
        )
    for i, entry in enumerate(cfg.models):
        tcfg = cfg.train_for(entry)
        if isinstance(entry.pretrained, str):
            model = create_model(entry, k, tcfg, scheme=table.scheme)  # loads and checks the local weights file
        else:
            with torch.device("meta"):  # architecture and arguments only: no memory, no download
                model = create_model(dataclasses.replace(entry, pretrained=False), k, tcfg, scheme=table.scheme)
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
        build_loss(cfg.loss, table.targets, k)
    check_images(table.paths, cfg.data.train_csv)


# ---------------------------------------------------------------- one fold


@dataclass
class FoldContext:
    cfg: Config
    entry: ModelConfig
    table: TrainTable
    folds: np.ndarray
    fold: int
    run: RunDir
    _: KW_ONLY  # the optional parts are named at every call site (positional ones got mixed up in a merge)
    progress: bool = True
    on_epoch: Callable[[EpochEvent], None] | None = None  # may raise (e.g. optuna.TrialPruned) to stop the run
    device: str | None = None  # a worker's or rank's own device; cfg.device otherwise (cfg stays as saved)
    dist: Dist = field(default=SINGLE)
    soft: TrainingTargets | None = None  # pseudo-labelled rows and a teacher (data.extra_train, loss.distill)

    @property
    def model_id(self) -> str:
        return self.entry.model_id


def _loader(ds, idx, batch_size, shuffle, seed, num_workers, drop_last, device, dist: Dist = SINGLE) -> DataLoader:
    subset = Subset(ds, idx)
    # under DDP every rank permutes the whole set with the same seed and takes its own slice
    sampler: DistributedSampler | None = (
        DistributedSampler(subset, dist.world, dist.rank, shuffle=True, seed=seed) if shuffle and dist.enabled else None
    )
    gen = torch.Generator().manual_seed(_derive_seed(seed, *dist.seed_parts()) if dist.enabled else seed)
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=gen,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=device.type == "cuda",
    )


def _scheduler(optimizer, tcfg: TrainConfig, steps_per_epoch: int):
    if tcfg.scheduler == "none":
        return None
    ft_steps = max(1, (tcfg.epochs - tcfg.freeze_epochs) * steps_per_epoch)
    warm = int(round(tcfg.warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(
        optimizer,
        t_initial=ft_steps,
        lr_min=tcfg.lr * tcfg.min_lr_ratio,
        warmup_t=warm,
        warmup_lr_init=tcfg.lr * tcfg.min_lr_ratio,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def _set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


class FoldTrainer:
    """Trains one model on one fold, resumable at epoch boundaries."""

    def __init__(self, ctx: FoldContext):
        self.ctx = ctx
        cfg, entry = ctx.cfg, ctx.entry
        self.tcfg = cfg.train_for(entry)
        self.dist = ctx.dist
        self.device = resolve_device(ctx.device or cfg.device)
        self.metric = get_metric(cfg.metric)
        self.seed = _derive_seed(cfg.seed, ctx.model_id, ctx.fold)
        self.num_classes = len(ctx.table.classes)
        seed_everything(self.seed)
        self.model = create_model(entry, self.num_classes, self.tcfg, scheme=ctx.table.scheme)
        if self.tcfg.sync_bn and self.dist.enabled:
            # timm's converter keeps BatchNormAct2d's activation (torch's would drop it); the state_dict keys stay
            # those of plain BatchNorm, so checkpoints keep their format
            from timm.layers import convert_sync_batchnorm

            self.model = convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        if self.tcfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.hw = entry.hw
        self.mean, self.std = normalization(self.model, entry.in_chans)
        self.valid_tf = valid_pipeline(cfg.augment, self.hw, self.mean, self.std)  # saved in the checkpoint
        # the loaders yield HWC uint8 arrays, normalised on the device (4x fewer bytes through workers and to the GPU)
        train_tf, valid_u8 = pipelines(cfg.augment, self.hw, self.mean, self.std, normalize=False)
        self.normalize = DeviceNormalize(self.mean, self.std, self.device, self.tcfg.channels_last)
        self.train_idx = np.flatnonzero(ctx.folds != ctx.fold)
        self.valid_idx = np.flatnonzero(ctx.folds == ctx.fold)
        # models fit the training labels (data.labels' train_bins); validation scores the competition's
        self.train_ds = ImageDataset(ctx.table.paths, ctx.table.train_targets, train_tf, reader=self._reader())
        self.valid_ds = ImageDataset(ctx.table.paths, ctx.table.targets, valid_u8, reader=self.train_ds.reader)
        heads = entry.heads == "attributes"  # attribute heads smooth their own targets (loss.attributes)
        self.mixer = BatchMixer(cfg.augment.mixup, self.num_classes, 0.0 if heads else cfg.loss.label_smoothing)
        self.loss_fn = (
            attribute_loss(cfg.loss, ctx.table, self.train_idx)
            if heads
            else build_loss(cfg.loss, ctx.table.train_targets[self.train_idx], self.num_classes)
        ).to(self.device)
        if ctx.soft is not None:  # pseudo rows join the training part only; targets become per-row distributions
            self.train_ds, self.train_idx, self.mixer, self.loss_fn = training_part(ctx.soft, self, train_tf)
        self.optimizer = create_optimizer_v2(
            self.model,
            opt=self.tcfg.optimizer,
            lr=self.tcfg.lr,
            weight_decay=self.tcfg.weight_decay,
            **({"momentum": self.tcfg.momentum} if self.tcfg.optimizer == "sgd" else {}),  # type: ignore[arg-type]
        )
        bs = self.tcfg.batch_size
        n_local = -(-len(self.train_idx) // self.dist.world)  # per rank: a DistributedSampler pads to equal shares
        # mixup pairs rows within a batch; and a last batch of one row breaks BatchNorm's training statistics
        self.drop_last = (self.mixer.enabled or n_local % bs == 1) and n_local > bs
        n_batches = n_local // bs if self.drop_last else -(-n_local // bs)
        self.steps_per_epoch = min(n_batches, self.tcfg.max_steps_per_epoch or n_batches)
        self.scheduler = _scheduler(self.optimizer, self.tcfg, self.steps_per_epoch)
        self.amp_dtype = resolve_amp(self.tcfg.amp, self.device)
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.ema = ModelEmaV3(self.model, decay=self.tcfg.ema_decay) if self.tcfg.ema else None
        self.state: dict[str, Any] = {
            "epoch": -1,
            "best_score": None,
            "best_epoch": -1,
            "bad_epochs": 0,
            "history": [],
            "best_state": None,
            "best_probs": None,
        }

    def _reader(self):
        from comp.data._table import load_image

        cache = self.ctx.cfg.data.cache
        if cache == "none":
            return load_image
        from comp.data._cache import make_reader  # the decoded-image cache (comp bench-data)

        return make_reader(self.ctx.cfg.data, self.hw, self.ctx.table.paths, run_dir=self.ctx.run.root)

    # -- state ---------------------------------------------------------------------
    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        s = {
            **self.state,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
        }
        torch_save(self.ctx.run.state(self.ctx.model_id, self.ctx.fold), s)

    def load_state(self, path: Path) -> None:
        s = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(s.pop("model"))
        self.optimizer.load_state_dict(s.pop("optimizer"))
        scaler, ema = s.pop("scaler"), s.pop("ema")
        if self.scaler and scaler:
            self.scaler.load_state_dict(scaler)
        if self.ema and ema:
            self.ema.module.load_state_dict(ema)
        self.state.update(s)

    # -- loop ----------------------------------------------------------------------
    def _frozen(self, epoch: int) -> bool:
        return epoch < self.tcfg.freeze_epochs

    def _train_module(self) -> torch.nn.Module:
        """The model to train: itself, or under torchrun a DDP wrapper, made anew each epoch because freezing
        the backbone changes which parameters DDP must reduce (checkpoints save ``self.model``: no prefixes)."""
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def run_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        rank = self.dist.seed_parts()
        seed_everything(_derive_seed(self.seed, epoch, *rank))
        self.train_ds.transform.set_random_seed(_derive_seed(self.seed, epoch, "aug", *rank))
        frozen = self._frozen(epoch)
        set_backbone_frozen(self.model, frozen) if self.tcfg.freeze_epochs else None
        step0 = (epoch - self.tcfg.freeze_epochs) * self.steps_per_epoch
        if frozen:
            _set_lr(self.optimizer, self.tcfg.freeze_lr or self.tcfg.lr)
        elif self.scheduler is not None:
            self.scheduler.step_update(step0)
        else:
            _set_lr(self.optimizer, self.tcfg.lr)
        bar = Progress(
            self.steps_per_epoch,
            f"{self.ctx.model_id} fold {self.ctx.fold} epoch {epoch + 1}/{self.tcfg.epochs}",
            enabled=self.ctx.progress and self.dist.is_main,
        )
        sc = StepConfig(
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.tcfg.channels_last,
            grad_clip=self.tcfg.grad_clip,
            max_steps=self.tcfg.max_steps_per_epoch,
            scaler=self.scaler,
            ema=self.ema,
            scheduler=None if frozen else self.scheduler,
            progress=bar,
            normalize=self.normalize,
        )
        loader = _loader(
            self.train_ds,
            self.train_idx,
            self.tcfg.batch_size,
            True,
            _derive_seed(self.seed, epoch, "order"),
            self.ctx.cfg.data.num_workers,
            self.drop_last,
            self.device,
            self.dist,
        )
        stats = train_one_epoch(
            self._train_module(), loader, self.optimizer, self.loss_fn, self.mixer, epoch, sc, step0=max(step0, 0)
        )
        bar.close()
        loss, images_per_s = self.dist.epoch_stats(stats["loss"], stats["images_per_s"])
        probs = self.evaluate()
        score = self.metric(self.ctx.table.targets[self.valid_idx], probs)
        return {
            "epoch": epoch,
            "loss": loss,
            "score": score,
            "images_per_s": images_per_s,
            "lr": self.optimizer.param_groups[0]["lr"],
            "frozen": frozen,
            "epoch_s": time.perf_counter() - t0,
            "probs": probs,
        }

    def eval_model(self):
        return self.ema.module if self.ema else self.model

    def evaluate(self) -> np.ndarray:
        """Probabilities of every validation row, in order; under DDP each rank predicts one unpadded shard."""
        model = self.eval_model()
        self.dist.broadcast_module(model)
        bs = self.tcfg.eval_batch_size or self.tcfg.batch_size * 2
        loader = _loader(
            self.valid_ds,
            self.dist.shard(self.valid_idx),
            bs,
            False,
            0,
            self.ctx.cfg.data.num_workers,
            False,
            self.device,
        )
        sc = StepConfig(
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.tcfg.channels_last,
            normalize=self.normalize,
        )
        return self.dist.gather_rows(predict_probs(model, loader, sc))

    def fit(self) -> FoldResult:
        """Train the remaining epochs (after a resume) and return the fold summary."""
        patience = self.tcfg.early_stopping
        for epoch in range(self.state["epoch"] + 1, self.tcfg.epochs):
            row = self.run_epoch(epoch)
            probs = row.pop("probs")
            improved = self.state["best_state"] is None or self.metric.better(row["score"], self.state["best_score"])
            if improved:
                self.state.update(
                    best_score=row["score"],
                    best_epoch=epoch,
                    bad_epochs=0,
                    best_probs=torch.from_numpy(probs),
                    best_state=copy.deepcopy({k: v.cpu() for k, v in self.eval_model().state_dict().items()}),
                )
            else:
                self.state["bad_epochs"] += 1
            self.state["history"].append(row)
            self.state["epoch"] = epoch
            self._notify(epoch=epoch, score=row["score"], fold_done=False)
            if self.dist.is_main:
                log.info(
                    "%s fold %d epoch %d/%d: loss %.4f %s %.4f %.0f img/s%s",
                    self.ctx.model_id,
                    self.ctx.fold,
                    epoch + 1,
                    self.tcfg.epochs,
                    row["loss"],
                    self.metric.name,
                    row["score"],
                    row["images_per_s"],
                    " *" if improved else "",
                )
            stop = patience and self.state["bad_epochs"] >= patience
            if stop or epoch == self.tcfg.epochs - 1:
                break
            self.save_state()
        return self.finish()

    def _notify(self, *, epoch: int, score: float, fold_done: bool) -> None:
        if self.ctx.on_epoch is not None:
            self.ctx.on_epoch(
                EpochEvent(
                    self.ctx.model_id,
                    self.ctx.fold,
                    epoch,
                    self.tcfg.epochs,
                    score,
                    self.state["best_score"],
                    fold_done,
                )
            )

    def finish(self) -> FoldResult:
        """Write the fold's OOF part, history and self-describing checkpoint; drop the resumable state."""
        ctx, run = self.ctx, self.ctx.run
        model = self.eval_model()
        model.load_state_dict(self.state["best_state"])
        meta = CheckpointMeta(
            ctx.entry.name,
            ctx.model_id,
            list(ctx.table.classes),
            self.hw,
            self.mean,
            self.std,
            to_dict(self.valid_tf),
            ctx.cfg.to_dict(),
            in_chans=ctx.entry.in_chans,
            entry=ctx.entry.to_dict(),
            fold=ctx.fold,
            epoch=self.state["best_epoch"],
            score=self.state["best_score"],
            metric=self.metric.name,
            heads=heads_description(model),
        )
        hist = pd.DataFrame(self.state["history"])
        if self.dist.is_main:  # under DDP rank 0 alone writes
            write_csv(run.history(ctx.model_id, ctx.fold), hist)
            run.write_oof_part(
                ctx.model_id, ctx.fold, oof_predictions(ctx, self.valid_idx, self.state["best_probs"].numpy())
            )
            torch_save(run.checkpoint(ctx.model_id, ctx.fold), make_checkpoint(model.state_dict(), meta))
            run.state(ctx.model_id, ctx.fold).unlink(missing_ok=True)
        self._notify(epoch=self.state["epoch"], score=self.state["best_score"], fold_done=True)
        return FoldResult(
            self.state["best_score"], self.state["best_epoch"] + 1, len(hist), float(hist["images_per_s"].mean())
        )


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


def train_fold(ctx: FoldContext, resume: bool) -> FoldResult:
    """Train (or resume) one fold of one model."""
    state_path = ctx.run.state(ctx.model_id, ctx.fold)
    trainer = FoldTrainer(ctx)
    if state_path.is_file():
        if not resume:
            raise CompError(
                f"{state_path} holds a partly trained fold; pass --resume to continue it or delete the file"
            )
        trainer.load_state(state_path)
        if ctx.dist.is_main:
            log.info("resuming %s fold %d after epoch %d", ctx.model_id, ctx.fold, trainer.state["epoch"] + 1)
    return trainer.fit()


# ---------------------------------------------------------------- all models, all folds


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


@dataclass
class EpochEvent:
    """What ``on_epoch`` receives after every epoch's validation, and once more when a fold finishes."""

    model_id: str
    fold: int
    epoch: int
    epochs: int
    score: float
    best_score: float | None
    fold_done: bool


@dataclass
class FoldResult:
    score: float
    best_epoch: int
    epochs: int | None = None
    images_per_s: float | None = None
    skipped: bool = False  # finished by an earlier call


@dataclass
class ModelResult:
    model_id: str
    folds: dict[int, FoldResult]
    cv: float | None  # None until every fold of the model is trained
    attribute_f1: dict[str, float] | None = None  # OOF macro F1 per attribute, when data.labels has attributes


@dataclass
class TrainResult:
    """What ``train_folds`` did: per model, per fold scores and the CV; the run folder holds the rest."""

    run: RunDir
    metric: str
    models: dict[str, ModelResult]

    def oof(self, model_id: str) -> pd.DataFrame:
        """The model's out-of-fold probabilities (id, fold, target, one column per class)."""
        return self.run.read_oof(model_id).frame()

    def table(self) -> str:
        """One row per model and fold, then each model's CV over its whole OOF."""
        rows: list[dict[str, Any]] = []
        for mid, m in self.models.items():
            for k, f in sorted(m.folds.items()):
                rows.append(
                    {
                        "model": mid,
                        "fold": str(k),
                        self.metric: f.score,
                        "best_epoch": f.best_epoch,
                        "img/s": f.images_per_s,
                        "note": "done before" if f.skipped else "",
                    }
                )
            rows.append(
                {
                    "model": mid,
                    "fold": "CV",
                    self.metric: m.cv,
                    "note": "" if m.cv is not None else "folds missing",
                    **{f"f1_{k}": v for k, v in (m.attribute_f1 or {}).items()},
                }
            )
        extra = list(dict.fromkeys(k for r in rows for k in r if k.startswith("f1_")))  # per-attribute OOF macro F1
        return format_table(rows, ["model", "fold", self.metric, *extra, "best_epoch", "img/s", "note"])


def _done_before(run: RunDir, model_id: str, fold: int) -> FoldResult:
    meta = run.read_checkpoint(model_id, fold).meta
    return FoldResult(float("nan") if meta.score is None else meta.score, (meta.epoch or 0) + 1, skipped=True)


def _claim(run: RunDir, model_id: str, fold: int, held: ExitStack) -> tuple[str, str]:
    """Whether to train a fold: ("done", ""), ("held", why) or ("train", ""), the lock then held in ``held``."""
    if run.checkpoint(model_id, fold).is_file():
        return "done", ""
    try:
        held.enter_context(exclusive(run.lock(model_id, fold), f"{model_id} fold {fold}"))
    except LockHeld as exc:
        return "held", str(exc)
    if run.checkpoint(model_id, fold).is_file():  # another process finished it just before we took the lock
        return "done", ""
    return "train", ""


def _train_here(
    cfg: Config,
    run: RunDir,
    table: TrainTable,
    fold_ids: np.ndarray,
    fold_list: list[int],
    *,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[EpochEvent], None] | None,
    device: str | None = None,
    dist: Dist = SINGLE,
    worker: Callable[[tuple], None] | None = None,
    soft: TrainingTargets | None = None,
) -> dict[str, dict[int, FoldResult]]:
    """Train every unfinished (model, fold) in order in this process (every rank of a DDP group).

    A fold locked by a live process stops the run, unless this is a device ``worker`` (its ``send``): then the
    fold is someone else's and the worker moves on, as it does past a partly trained fold without ``resume``
    (left by a dead worker, or by an earlier run: the parent then asks for --resume). Under DDP rank 0 alone
    takes the lock and the others follow its verdict.
    """
    done: dict[str, dict[int, FoldResult]] = {}
    for entry in cfg.models:
        mid = entry.model_id
        done[mid] = {}
        for k in fold_list:
            with ExitStack() as held:
                verdict, why = dist.broadcast(_claim(run, mid, k, held) if dist.is_main else None)
                if verdict == "done":
                    done[mid][k] = _done_before(run, mid, k)
                    continue
                if verdict == "held":
                    if worker is not None:
                        continue
                    raise LockHeld(why)
                if worker is not None:
                    if not resume and run.state(mid, k).is_file():
                        worker(("leftover", mid, k))
                        continue
                    worker(("start", mid, k))
                done[mid][k] = train_fold(
                    FoldContext(
                        cfg,
                        entry,
                        table,
                        fold_ids,
                        k,
                        run,
                        progress=progress,
                        on_epoch=on_epoch,
                        device=device,
                        dist=dist,
                        soft=soft,
                    ),
                    resume,
                )
    return done


def _deterministic(cfg: Config) -> None:
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@dataclass
class _FoldJob:
    """What a device worker needs: it reads the table and folds.csv that the parent checked and wrote."""

    cfg: Config
    run_dir: Path
    folds: list[int]
    resume: bool
    progress: bool
    forward_epochs: bool


def _fold_worker(job: _FoldJob, device: str, send: Callable[[tuple], None]) -> None:
    """A device worker: train every (model, fold) nobody else has taken, reporting each start and result."""
    run = RunDir(job.run_dir)
    table = load_train_table(job.cfg.data)
    fold_ids = ensure_folds(job.cfg, run, table)
    soft = load_training_targets(
        job.cfg, table, fold_ids, run
    )  # pseudo rows and teacher: every worker trains with them
    _deterministic(job.cfg)
    on_epoch = (lambda ev: send(("epoch", ev))) if job.forward_epochs else None
    done = _train_here(
        job.cfg,
        run,
        table,
        fold_ids,
        job.folds,
        resume=job.resume,
        progress=job.progress,
        on_epoch=on_epoch,
        device=device,
        worker=send,
        soft=soft,
    )
    for mid, results in done.items():
        for k, res in results.items():
            if not res.skipped:
                send(("fold", mid, k, res))


def _train_on_workers(
    cfg: Config,
    run: RunDir,
    fold_list: list[int],
    devices: list[str],
    *,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[EpochEvent], None] | None,
):
    """One worker process per device over the same fold list; the fold locks share the work out."""
    from comp.training._parallel import run_workers

    results: dict[str, dict[int, FoldResult]] = {e.model_id: {} for e in cfg.models}
    current: dict[int, tuple[str, int]] = {}
    leftover: list[tuple[str, int]] = []

    def on_message(i: int, msg: tuple) -> None:
        if msg[0] == "leftover":
            leftover.append((msg[1], msg[2]))
        elif msg[0] == "start":
            current[i] = (msg[1], msg[2])
        elif msg[0] == "fold":
            results[msg[1]][msg[2]] = msg[3]
            current.pop(i, None)
        elif msg[0] == "epoch" and on_epoch is not None:
            on_epoch(msg[1])

    def while_training(ex) -> str:
        return f" while training {current[ex.index][0]} fold {current[ex.index][1]}" if ex.index in current else ""

    def on_exit(ex) -> None:
        if not ex.ok and ex.error is None:  # killed (errors are reported when they arrive)
            log.warning(
                "[%s] %s%s; that fold stays resumable, the other workers go on",
                ex.name,
                ex.describe(),
                while_training(ex),
            )

    job = _FoldJob(cfg, run.root, fold_list, resume, progress, on_epoch is not None)
    exits = run_workers(_fold_worker, [job] * len(devices), devices, on_message=on_message, on_exit=on_exit)
    for mid, res in results.items():
        for k in fold_list:
            if k not in res and run.checkpoint(mid, k).is_file():
                res[k] = _done_before(run, mid, k)  # finished before this call (or by another box)
        results[mid] = dict(sorted(res.items()))
    left = [(m, k) for m, k in leftover if not run.checkpoint(m, k).is_file()]
    if left and all(e.ok for e in exits):  # as train_fold says in a single process
        raise CompError(
            f"{run.state(*left[0])} holds a partly trained fold; pass --resume to continue it or delete the file"
        )
    return results, exits, while_training


def train_folds(
    cfg: Config,
    run_dir: str | Path,
    *,
    folds: list[int] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    devices: str | Sequence[str | int] | None = None,
) -> TrainResult:
    """Train every model entry of ``cfg`` on the chosen folds (all by default) into ``run_dir``.

    ``on_epoch(event)`` is called after every epoch's validation and once more when a fold finishes
    (``event.fold_done``); ``comp tune`` reports to its pruner through it and may raise to stop a trial.

    ``devices`` (``"0,1"``, ``["cuda:0", "cuda:1"]``, ``"all"``, ``["cpu", "cpu"]``) runs one worker process per
    device, each with a fair share of the CPU threads, each taking the next unfinished (model, fold) through the
    fold locks; OOF and metrics are assembled once every fold is done. A fold gives the same result on any worker
    as in a single process with the same threads per process. A worker that dies leaves its fold resumable, the
    others go on, and the call then raises ``WorkerError``. ``on_epoch`` is called here as workers report.

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this, and each fold trains with
    DistributedDataParallel across them: rank 0 writes the artifacts and every rank returns the same result.

    Example::

        result = comp.train_folds(cfg, "runs/exp", devices="all")   # one worker per GPU
    """
    from comp.training._parallel import raise_failures, resolve_devices

    dist = Dist.from_env()
    device_list = resolve_devices(devices) if devices is not None else None
    if dist.enabled and device_list is not None:
        raise CompError("--devices cannot be combined with torchrun / --ddp (each rank already has its GPU); use one")
    device = rank_device(cfg.device, dist) if dist.enabled else (device_list[0] if device_list else None)
    if dist.enabled and any(cfg.train_for(e).sync_bn for e in cfg.models) and device == "cpu":
        raise CompError(
            "train.sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); set train.sync_bn=false "
            "for DDP on the CPU"
        )
    run = RunDir(run_dir)
    table = load_train_table(cfg.data)
    n = cfg.folds.n_splits
    if folds is not None and any(not 0 <= k < n for k in folds):
        raise CompError(f"--folds {','.join(map(str, folds))}: folds are numbered 0..{n - 1} (folds.n_splits={n})")
    fold_list = list(folds) if folds is not None else list(range(n))
    exits, while_training = [], None
    with session(dist, device or "cpu"):
        if dist.is_main:
            preflight(cfg, table)  # everything checkable is checked before the first write
            if cfg.data.cache == "disk":  # an unwritable data.cache_dir fails here, before the run folder is written
                from comp.data._cache import disk_cache_dir

                disk_cache_dir(cfg.data, run.root)
            fold_ids, new_folds = plan_folds(cfg, run, table)
            soft = load_training_targets(
                cfg, table, fold_ids, run
            )  # pseudo rows and teacher, checked before the first write
            prepare_run(cfg, run)
            check_and_record(soft, run, trained_anything(run))
            if new_folds:
                run.write_folds(table.df[cfg.data.id_column].to_numpy(), fold_ids, cfg.data.id_column)
        dist.barrier()
        if not dist.is_main:
            fold_ids = ensure_folds(cfg, run, table)  # reads the folds.csv rank 0 wrote
            soft = load_training_targets(cfg, table, fold_ids, run)
        _deterministic(cfg)
        if device_list is not None and len(device_list) > 1:
            done, exits, while_training = _train_on_workers(
                cfg, run, fold_list, device_list, resume=resume, progress=progress, on_epoch=on_epoch
            )
        else:
            done = _train_here(
                cfg,
                run,
                table,
                fold_ids,
                fold_list,
                resume=resume,
                progress=progress,
                on_epoch=on_epoch,
                device=device,
                dist=dist,
                soft=soft,
            )
        models: dict[str, ModelResult] = {}
        for entry in cfg.models:
            mid = entry.model_id
            result = (
                assemble_model(cfg, run, mid, table, soft.record() if soft is not None else None)
                if dist.is_main
                else None
            )
            models[mid] = ModelResult(
                mid,
                done[mid],
                dist.broadcast(result.cv if result else None),
                result.extra.get("attribute_f1") if result else None,
            )
    raise_failures(
        exits,
        while_training or (lambda ex: ""),
        "the other workers' folds are kept; rerun the same command with --resume to finish",
    )
    return TrainResult(run, cfg.metric, models)
