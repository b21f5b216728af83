"""One model on one fold: ``FoldTrainer`` builds the model, data, loss and optimizer, runs the epochs (the
steps are ``_engine``'s), keeps the best epoch, and writes the fold's OOF part, history and checkpoint.

Resumable at epoch boundaries: ``fold<k>.state.pt`` holds everything the next epoch needs, and every epoch
re-seeds from (seed, model, fold, epoch) (``_seeding``).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3

from comp._progress import Progress, release_slot
from comp.config import size_schedule
from comp.data._augment import BatchMixer, DeviceNormalize, pipelines, to_dict, valid_pipeline
from comp.data._sample_weights import by_position, training_weights
from comp.data._table import ImageDataset
from comp.errors import CompError, arg
from comp.metrics import get_metric
from comp.run import CheckpointMeta, torch_save
from comp.training._assemble import write_fold
from comp.training._context import FoldContext
from comp.training._engine import StepConfig, model_inputs, predict_probs, resolve_amp, resolve_device, train_one_epoch
from comp.training._heads import attribute_loss
from comp.training._loaders import epoch_batches, epoch_weights, image_reader, make_loader
from comp.training._losses import build_loss
from comp.training._models import create_model, heads_description, normalization, set_backbone_frozen, zero_head
from comp.training._optim import make_optimizer, make_scheduler, set_lr
from comp.training._outputs import OutputHead, output_spec
from comp.training._results import EpochEvent, FoldResult
from comp.training._seeding import derive_seed, seed_everything
from comp.training._soft import TrainingPart, training_part
from comp.training._swa import SWA
from comp.training._tower import fold_metadata, tower_description

log = logging.getLogger(__name__)


class FoldTrainer:
    """Trains one model on one fold, resumable at epoch boundaries."""

    def __init__(self, ctx: FoldContext):
        self.ctx = ctx
        cfg, entry = ctx.cfg, ctx.entry
        self.tcfg = cfg.train_for(entry)
        self.dist = ctx.dist
        self.device = resolve_device(ctx.device or cfg.device)
        self.metric = get_metric(cfg.metric, cfg.task)
        self.seed = derive_seed(cfg.seed, ctx.model_id, ctx.fold)
        self.num_classes = len(ctx.table.classes)
        seed_everything(self.seed)
        train_idx = np.flatnonzero(ctx.folds != ctx.fold)
        self.valid_idx = np.flatnonzero(ctx.folds == ctx.fold)
        # a metadata tower's scaling: fitted on this fold's training part only, every row encoded with it
        self.feature_scaler, meta = fold_metadata(entry, ctx.table.features, train_idx)
        self.model = create_model(
            entry, self.num_classes, self.tcfg, scheme=ctx.table.scheme, scaler=self.feature_scaler
        )
        if cfg.task == "regression":
            zero_head(self.model)  # start at the training part's mean (scaled targets are centred)
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
        table = ctx.table
        # what turns outputs into predictions; regression's target scaling is fitted on the training part only
        self.output = output_spec(cfg.task, cfg.loss.name or "", table.train_targets[train_idx])
        self.head = OutputHead(self.output).to(self.device)
        fit_targets = (
            table.train_targets if table.train_targets.ndim == 1 else self.output.to_model(table.train_targets)
        )
        reader = image_reader(cfg.data, self.hw, table.paths, ctx.run.root)
        self.valid_ds = ImageDataset(table.paths, table.targets, valid_u8, reader=reader, meta=meta)
        heads = entry.heads == "attributes"  # attribute heads smooth their own targets (loss.attributes)
        loss = (
            attribute_loss(cfg.loss, table, train_idx)
            if heads
            else build_loss(cfg.loss, table.train_targets[train_idx], self.num_classes, cfg.task)
        ).to(self.device)
        n_extra = 0 if ctx.soft is None else ctx.soft.n_extra
        # data.weight_column: the training part's weights (pseudo rows weigh 1), scaled to mean 1 over the part
        self.weights = None if table.weights is None else training_weights(table.weights[train_idx], n_extra)
        if ctx.soft is None:
            # models fit the training labels (data.labels' train_bins); validation scores the competition's
            row_w = None if self.weights is None else by_position(self.weights, train_idx, len(table.paths))
            part = TrainingPart(
                ImageDataset(table.paths, fit_targets, train_tf, reader=reader, weights=row_w, meta=meta),
                train_idx,
                BatchMixer(cfg.augment.mixup, self.num_classes, 0.0 if heads else cfg.loss.label_smoothing),
                loss,
            )
        else:  # pseudo rows join the training part only; targets become per-row distributions
            part = training_part(
                ctx.soft,
                paths=ctx.table.paths,
                labels=ctx.table.targets,
                train_idx=train_idx,
                reader=reader,
                transform=train_tf,
                mix_cfg=cfg.augment.mixup,
                smoothing=cfg.loss.label_smoothing,
                loss=loss,
                device=self.device,
                output=self.output,
                weights=self.weights,
            )
        self.train_ds, self.train_idx, self.mixer, self.loss_fn = part.dataset, part.indices, part.mixer, part.loss
        self.labelled_idx = train_idx
        self.plan = size_schedule(self.tcfg, self.hw)  # progressive resizing: [(first epoch, (h, w))]
        self.train_hw = self.hw
        self.sample_w = epoch_weights(self.tcfg.sampler, table.train_targets[train_idx], cfg.task, len(self.train_idx))
        self.optimizer = make_optimizer(self.model, self.tcfg)
        self.drop_last, self.steps_per_epoch = epoch_batches(
            len(self.train_idx),
            self.tcfg.batch_size,
            self.dist.world,
            self.mixer.enabled,
            self.tcfg.max_steps_per_epoch,
            self.tcfg.accum_steps,
        )
        self.scheduler = make_scheduler(self.optimizer, self.tcfg, self.steps_per_epoch)
        self.swa = SWA(self.model, self.tcfg, self.steps_per_epoch) if self.tcfg.swa_start is not None else None
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
            "swa": self.swa.state_dict() if self.swa else None,
        }
        torch_save(self.ctx.run.state(self.ctx.model_id, self.ctx.fold), s)

    def load_state(self, path: Path) -> None:
        s = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(s.pop("model"))
        self.optimizer.load_state_dict(s.pop("optimizer"))
        scaler, ema, swa = s.pop("scaler"), s.pop("ema"), s.pop("swa", None)
        if self.scaler and scaler:
            self.scaler.load_state_dict(scaler)
        if self.ema and ema:
            self.ema.module.load_state_dict(ema)
        if self.swa and swa:
            self.swa.load_state_dict(swa)
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

    def _resize(self, epoch: int) -> None:
        """Progressive resizing: the training images of this epoch at the schedule's size (validation, the
        checkpoint and every later command use the final size, ``image_size``)."""
        hw = [size for first, size in self.plan if first <= epoch][-1]
        if hw == self.train_hw:
            return
        cfg = self.ctx.cfg
        self.train_ds.transform = pipelines(cfg.augment, hw, self.mean, self.std, normalize=False)[0]
        self.train_ds.reader = image_reader(cfg.data, hw, self.train_ds.paths, self.ctx.run.root)
        self.train_hw = hw

    def _start_lr(self, epoch: int, step0: int, frozen: bool) -> bool:
        """Set the epoch's first learning rate; whether SWA's ramp (not the schedule) drives it this epoch."""
        swa_lr = self.swa is not None and self.swa.controls_lr(epoch) and not frozen
        if frozen:
            set_lr(self.optimizer, self.tcfg.freeze_lr or self.tcfg.lr)
        elif self.scheduler is not None:
            self.scheduler.step_update(step0)
        else:
            set_lr(self.optimizer, self.tcfg.lr)
        if swa_lr:
            assert self.swa is not None
            g = self.optimizer.param_groups[0]
            self.swa.set_lr(self.optimizer, step0, g["lr"] / g.get("lr_scale", 1.0))
        return swa_lr

    def run_epoch(self, epoch: int) -> dict:
        t0 = time.perf_counter()
        rank = self.dist.seed_parts()
        self._resize(epoch)
        seed_everything(derive_seed(self.seed, epoch, *rank))
        self.train_ds.transform.set_random_seed(derive_seed(self.seed, epoch, "aug", *rank))
        frozen = self._frozen(epoch)
        set_backbone_frozen(self.model, frozen) if self.tcfg.freeze_epochs else None
        step0 = (epoch - self.tcfg.freeze_epochs) * self.steps_per_epoch
        swa_lr = self._start_lr(epoch, step0, frozen)
        swa = self.swa
        bar = Progress(
            self.steps_per_epoch,
            f"{self.ctx.model_id} fold {self.ctx.fold} epoch {epoch + 1}/{self.tcfg.epochs}",
            enabled=self.ctx.progress and self.dist.is_main,
            slot=self._slot,  # in a notebook: one widget per fold, reset every epoch
        )
        sc = StepConfig(
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.tcfg.channels_last,
            grad_clip=self.tcfg.grad_clip,
            max_steps=self.tcfg.max_steps_per_epoch,
            scaler=self.scaler,
            ema=self.ema,
            scheduler=None if frozen or swa_lr else self.scheduler,
            progress=bar,
            normalize=self.normalize,
            accum_steps=self.tcfg.accum_steps,
            on_step=(lambda step: swa.set_lr(self.optimizer, step, 0.0)) if swa is not None and swa_lr else None,
        )
        loader = make_loader(
            self.train_ds,
            self.train_idx,
            self.tcfg.batch_size,
            True,
            derive_seed(self.seed, epoch, "order"),
            self.ctx.cfg.data.num_workers,
            self.drop_last,
            self.device,
            self.dist,
            weights=self.sample_w,
        )
        stats = train_one_epoch(
            self._train_module(), loader, self.optimizer, self.loss_fn, self.mixer, epoch, sc, step0=max(step0, 0)
        )
        bar.close()
        if swa is not None and swa.active(epoch):  # average this epoch's weights; their BatchNorm statistics anew
            swa.update(self.model)
            swa.update_bn(self._rows_loader(self.labelled_idx), lambda batch: model_inputs(batch, sc))
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
        """The weights evaluated and saved: SWA's average once it holds an epoch, else the EMA, else the model."""
        if self.swa is not None and self.swa.n_averaged > 0:
            return self.swa.module
        return self.ema.module if self.ema else self.model

    def _rows_loader(self, idx: np.ndarray):
        """Rows ``idx`` of the training table through the deterministic eval transform, in order."""
        bs = self.tcfg.eval_batch_size or self.tcfg.batch_size * 2
        return make_loader(self.valid_ds, idx, bs, False, 0, self.ctx.cfg.data.num_workers, False, self.device)

    def evaluate(self) -> np.ndarray:
        """Probabilities of every validation row, in order; under DDP each rank predicts one unpadded shard."""
        model = self.eval_model()
        self.dist.broadcast_module(model)
        loader = self._rows_loader(self.dist.shard(self.valid_idx))
        sc = StepConfig(
            device=self.device,
            amp_dtype=self.amp_dtype,
            channels_last=self.tcfg.channels_last,
            normalize=self.normalize,
        )
        return self.dist.gather_rows(predict_probs(model, loader, sc, self.head))

    @property
    def _slot(self) -> str:
        return f"{self.ctx.model_id} fold {self.ctx.fold}"

    def fit(self) -> FoldResult:
        """Train the remaining epochs (after a resume) and return the fold summary."""
        try:
            return self._fit()
        finally:
            release_slot(self._slot)  # the fold's notebook bar (if any) stays on screen, closed

    def _fit(self) -> FoldResult:
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
            self._notify(
                epoch=epoch, score=row["score"], fold_done=False, loss=row["loss"], images_per_s=row["images_per_s"]
            )
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
                    extra={"comp_epoch_line": True},  # a notebook shows it in the fold's live table instead
                )
            stop = patience and self.state["bad_epochs"] >= patience
            if stop or epoch == self.tcfg.epochs - 1:
                break
            self.save_state()
        return self.finish()

    def _notify(
        self, *, epoch: int, score: float, fold_done: bool, loss: float | None = None, images_per_s: float | None = None
    ) -> None:
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
                    loss=loss,
                    images_per_s=images_per_s,
                )
            )

    def finish(self) -> FoldResult:
        """Write the fold's OOF part, history and self-describing checkpoint; drop the resumable state."""
        ctx, state = self.ctx, self.state
        model = self.eval_model()
        model.load_state_dict(state["best_state"])
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
            epoch=state["best_epoch"],
            score=state["best_score"],
            metric=self.metric.name,
            heads=heads_description(model),
            task=ctx.cfg.task,
            output=self.output.to_dict(),
            tower=tower_description(model, ctx.table.features),
        )
        result = write_fold(ctx, model, meta, state, self.valid_idx)
        self._notify(epoch=state["epoch"], score=state["best_score"], fold_done=True)
        return result


def train_fold(ctx: FoldContext, resume: bool) -> FoldResult:
    """Train (or resume) one fold of one model."""
    state_path = ctx.run.state(ctx.model_id, ctx.fold)
    trainer = FoldTrainer(ctx)
    if state_path.is_file():
        if not resume:
            raise CompError(
                f"{state_path} holds a partly trained fold; pass {arg('resume=True', '--resume')} to continue it or delete the file"
            )
        trainer.load_state(state_path)
        if ctx.dist.is_main:
            log.info("resuming %s fold %d after epoch %d", ctx.model_id, ctx.fold, trainer.state["epoch"] + 1)
    return trainer.fit()
