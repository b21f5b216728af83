"""``train_folds(ray=...)``: one Ray task per unfinished (model, fold), no shared filesystem needed.

The driver checks and sets up the run folder as for any run, takes each fold's lock (so a local worker or another
box on the same folder never trains it twice), and submits one task per fold with the checked table, the fold
split and, with ``resume``, the fold's resumable state. A task trains its fold exactly as a local worker does
(``train_fold`` in a scratch run folder on its node: the same seeds, bit-identical results on the same device type
and threads) and returns the files a finished fold leaves; the driver commits them as one set through ``RunDir``,
so a driver killed later keeps every fold committed before. Ray retries a task whose process or node dies; the
retry starts the fold again from what it was given. OOF and metrics are assembled once at the end, as always.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from comp.config import Config
from comp.data._table import TrainTable
from comp.errors import CompError, arg
from comp.run import RunDir
from comp.training._context import FoldContext
from comp.training._fold import train_fold
from comp.training._ray import (
    Relay,
    TaskShape,
    exit_once_hook,
    raise_failed,
    scratch,
    task_setup,
    wait_all,
)
from comp.training._results import EpochEvent, FoldResult
from comp.training._schedule import claim, done_before
from comp.training._seeding import set_deterministic
from comp.training._targets import TrainingTargets

log = logging.getLogger(__name__)


@dataclass
class FoldTask:
    """What one fold's task is given besides the table and the pseudo rows/teacher (shared object-store refs)."""

    cfg: Config
    model_id: str
    fold: int
    folds: np.ndarray
    threads: int
    device: str
    progress: bool
    level: int
    key: str  # the task's scratch folder name on its node
    state: bytes | None = None  # the fold's resumable state (fold<k>.state.pt), with resume


def label(model_id: str, fold: int) -> str:
    return f"{model_id} fold {fold}"


def fold_task(job: FoldTask, table: TrainTable, soft: TrainingTargets | None, relay: Any) -> dict[str, Any]:
    """On a node: train one fold in a scratch run folder; return its result and the files it wrote, by name."""
    send = task_setup(relay, label(job.model_id, job.fold), job.threads, job.device, job.level)
    send(("start",))
    set_deterministic(job.cfg)
    root = scratch(job.key)
    try:
        run = RunDir(root)
        resume = job.state is not None
        if job.state is not None:
            run.model_dir(job.model_id).mkdir(parents=True)
            run.state(job.model_id, job.fold).write_bytes(job.state)

        def on_epoch(ev: EpochEvent) -> None:
            send(("epoch", ev))
            if not ev.fold_done:
                best = "" if ev.best_score is None else f", best {ev.best_score:.4f}"
                send(("status", f"epoch {ev.epoch + 1}/{ev.epochs} done{best}"))
                exit_once_hook()

        entry = next(e for e in job.cfg.models if e.model_id == job.model_id)
        ctx = FoldContext(
            job.cfg,
            entry,
            table,
            job.folds,
            job.fold,
            run,
            progress=job.progress,
            on_epoch=on_epoch,
            device=job.device,
            soft=soft,
        )
        result = train_fold(ctx, resume)
        files = {p.name: p.read_bytes() for p in run.fold_files(job.model_id, job.fold)}
        return {"result": result, "files": files}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _key(run: RunDir, model_id: str, fold: int) -> str:
    where = f"{socket.gethostname()}:{run.root.resolve()}"
    return f"{hashlib.sha256(where.encode()).hexdigest()[:12]}-{model_id}-fold{fold}"


def train_on_ray(
    ray: Any,
    shape: TaskShape,
    cfg: Config,
    run: RunDir,
    table: TrainTable,
    fold_ids: np.ndarray,
    fold_list: list[int],
    *,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[EpochEvent], None] | None,
    soft: TrainingTargets | None,
) -> tuple[dict[str, dict[int, FoldResult]], Callable[[], None]]:
    """Every unfinished (model, fold) as a Ray task of ``shape`` on the connected ``ray``; returns the fold results and a function that raises for the
    tasks that failed for good (called once what finished is assembled)."""
    done: dict[str, dict[int, FoldResult]] = {e.model_id: {} for e in cfg.models}
    with ExitStack() as locks:
        todo: list[tuple[str, int, bytes | None]] = []  # (model, fold, resumable state)
        for entry in cfg.models:
            mid = entry.model_id
            for k in fold_list:
                verdict, why = claim(run, mid, k, locks)  # held until the fold is committed or the run ends
                if verdict == "done":
                    done[mid][k] = done_before(run, mid, k)
                elif verdict == "held":
                    log.info("%s: %s; another process trains it", label(mid, k), why)
                elif run.state(mid, k).is_file() and not resume:  # refused before any task starts
                    raise CompError(
                        f"{run.state(mid, k)} holds a partly trained fold; pass {arg('resume=True', '--resume')} "
                        "to continue it or delete the file"
                    )
                else:
                    todo.append((mid, k, run.state(mid, k).read_bytes() if run.state(mid, k).is_file() else None))
        if not todo:
            return _sorted(done), lambda: None
        log.info("%d fold%s as Ray tasks: %s", len(todo), "s" if len(todo) > 1 else "", shape.describe())

        heard: dict[str, int] = {}  # the last epoch passed on per fold: a retried task repeats the same epochs

        def on_message(who: str, msg: tuple) -> None:
            if msg[0] != "epoch" or on_epoch is None:
                return
            ev = msg[1]
            if ev.fold_done or ev.epoch > heard.get(who, -1):
                heard[who] = ev.epoch
                on_epoch(ev)

        relay = Relay(ray, on_message)
        task = ray.remote(fold_task).options(**shape.options())
        table_ref, soft_ref = ray.put(table), ray.put(soft)
        level = logging.getLogger("comp").getEffectiveLevel()
        refs = {}
        for mid, k, state_bytes in todo:
            job = FoldTask(
                cfg, mid, k, fold_ids, shape.num_cpus, shape.device, progress, level, _key(run, mid, k), state_bytes
            )
            refs[task.remote(job, table_ref, soft_ref, relay.queue)] = label(mid, k)
        by_label = {label(mid, k): (mid, k) for mid, k, _ in todo}

        def commit(who: str, value: dict[str, Any]) -> None:
            mid, k = by_label[who]
            run.commit_fold_files(mid, k, value["files"])
            done[mid][k] = value["result"]

        try:
            failed = wait_all(ray, refs, relay, commit)
        finally:
            relay.close(ray)
    fix = f"the other folds are kept; rerun the same command with {arg('resume=True', '--resume')} to finish"
    return _sorted(done), lambda: raise_failed(failed, fix)


def _sorted(done: dict[str, dict[int, FoldResult]]) -> dict[str, dict[int, FoldResult]]:
    return {mid: dict(sorted(res.items())) for mid, res in done.items()}
