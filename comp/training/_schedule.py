"""Which process trains which (model, fold): the fold locks, this process's loop over its folds, and one
worker process per device (``_parallel``) taking folds through the same locks, as other boxes do."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comp.config import Config
from comp.data._table import TrainTable, load_train_table
from comp.errors import CompError, arg
from comp.run import LockHeld, RunDir, exclusive
from comp.training._context import FoldContext
from comp.training._distributed import SINGLE, Dist
from comp.training._fold import train_fold
from comp.training._parallel import WorkerExit, run_workers
from comp.training._prepare import ensure_folds
from comp.training._results import EpochEvent, FoldResult
from comp.training._seeding import set_deterministic
from comp.training._targets import TrainingTargets, load_training_targets

log = logging.getLogger(__name__)


def done_before(run: RunDir, model_id: str, fold: int) -> FoldResult:
    """A fold finished by an earlier call or another process, as its checkpoint describes it."""
    meta = run.read_checkpoint(model_id, fold).meta
    return FoldResult(float("nan") if meta.score is None else meta.score, (meta.epoch or 0) + 1, skipped=True)


def claim(run: RunDir, model_id: str, fold: int, held: ExitStack) -> tuple[str, str]:
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


def train_here(
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
                verdict, why = dist.broadcast(claim(run, mid, k, held) if dist.is_main else None)
                if verdict == "done":
                    done[mid][k] = done_before(run, mid, k)
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


@dataclass
class FoldJob:
    """What a device worker needs: it reads the table and folds.csv that the parent checked and wrote."""

    cfg: Config
    run_dir: Path
    folds: list[int]
    resume: bool
    progress: bool
    forward_epochs: bool


def fold_worker(job: FoldJob, device: str, send: Callable[[tuple], None]) -> None:
    """A device worker: train every (model, fold) nobody else has taken, reporting each start and result."""
    run = RunDir(job.run_dir)
    table = load_train_table(job.cfg.data, task=job.cfg.task)
    fold_ids = ensure_folds(job.cfg, run, table)
    soft = load_training_targets(
        job.cfg, table, fold_ids, run
    )  # pseudo rows and teacher: every worker trains with them
    set_deterministic(job.cfg)
    on_epoch = (lambda ev: send(("epoch", ev))) if job.forward_epochs else None
    done = train_here(
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


def train_on_workers(
    cfg: Config,
    run: RunDir,
    fold_list: list[int],
    devices: list[str],
    *,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[EpochEvent], None] | None,
) -> tuple[dict[str, dict[int, FoldResult]], list[WorkerExit], Callable[[WorkerExit], str]]:
    """One worker process per device over the same fold list; the fold locks share the work out.

    Returns every model's fold results, how each worker ended, and what a failed worker was training."""
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

    def while_training(ex: WorkerExit) -> str:
        return f" while training {current[ex.index][0]} fold {current[ex.index][1]}" if ex.index in current else ""

    def on_exit(ex: WorkerExit) -> None:
        if not ex.ok and ex.error is None:  # killed (errors are reported when they arrive)
            log.warning(
                "[%s] %s%s; that fold stays resumable, the other workers go on",
                ex.name,
                ex.describe(),
                while_training(ex),
            )

    job = FoldJob(cfg, run.root, fold_list, resume, progress, on_epoch is not None)
    exits = run_workers(fold_worker, [job] * len(devices), devices, on_message=on_message, on_exit=on_exit)
    for mid, res in results.items():
        for k in fold_list:
            if k not in res and run.checkpoint(mid, k).is_file():
                res[k] = done_before(run, mid, k)  # finished before this call (or by another box)
        results[mid] = dict(sorted(res.items()))
    left = [(m, k) for m, k in leftover if not run.checkpoint(m, k).is_file()]
    if left and all(e.ok for e in exits):  # as train_fold says in a single process
        raise CompError(
            f"{run.state(*left[0])} holds a partly trained fold; pass {arg('resume=True', '--resume')} to continue it or delete the file"
        )
    return results, exits, while_training
