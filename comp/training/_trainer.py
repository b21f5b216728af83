"""``train_folds(cfg)``: check and set up the run folder, train every unfinished (model, fold), assemble each
model's OOF and metrics. The parts are modules of their own, as a Lightning Trainer's loops and connectors are:

- ``_prepare``: preflight, config and folds check, the run folder's first files;
- ``_schedule``: who trains which fold (the fold locks, this process, or one worker per device);
- ``_fold``: one model on one fold, resumable at epoch boundaries (``_engine`` runs the steps; ``_loaders``,
  ``_optim`` and ``_soft`` build its loaders, optimizer and schedule, and soft-target training part);
- ``_assemble``: OOF parts, ``oof.csv`` and ``metrics.json``; ``_results``: what the call returns;
- ``_seeding``: every seed derived from (seed, model, fold, epoch), so that a resumed run equals an
  uninterrupted one and a fold trained by any worker equals the same fold trained alone.

Three ways to use more than one device, all through the same fold loop:
- ``devices=[...]``: one worker process per device, each taking the next unfinished (model, fold) through
  the fold locks (``_parallel``);
- under ``torchrun``: every rank trains each fold together with DistributedDataParallel (``_distributed``);
- several boxes sharing the run folder, with ``folds=`` or ``devices=`` on each: the same locks;
- ``ray=``: one Ray task per (model, fold) on a cluster, no shared folder needed (``_ray_folds``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from comp._progress import EpochBoard
from comp.config import Config
from comp.data._table import load_train_table
from comp.errors import CompError, arg
from comp.metrics import get_metric
from comp.run import RunDir, check_output, data_inputs, run_files
from comp.training._assemble import model_results
from comp.training._distributed import Dist, rank_device, session
from comp.training._parallel import WorkerExit, raise_failures, resolve_devices
from comp.training._prepare import check_exist_ok, set_up_run
from comp.training._ray import ray_session, task_shape
from comp.training._ray_folds import train_on_ray
from comp.training._results import EpochEvent, TrainResult  # comp.tuning imports EpochEvent from here
from comp.training._schedule import train_here, train_on_workers
from comp.training._seeding import set_deterministic
from comp.training._tracking import tracked


def _both(first: Callable[[EpochEvent], None], then: Callable[[EpochEvent], None] | None):
    def call(ev: EpochEvent) -> None:
        first(ev)
        if then is not None:
            then(ev)

    return call


@tracked  # cfg.track: the trackers see every epoch and the final artifacts
def train_folds(
    cfg: Config,
    run_dir: str | Path,
    *,
    folds: list[int] | None = None,
    resume: bool = False,
    exist_ok: str = "resume",
    progress: bool = True,
    on_epoch: Callable[[EpochEvent], None] | None = None,
    devices: str | Sequence[str | int] | None = None,
    ray: str | bool | None = None,
    ray_cpus: int | None = None,
) -> TrainResult:
    """Train every model entry of ``cfg`` on the chosen folds (all by default) into ``run_dir``.

    ``on_epoch(event)`` is called after every epoch's validation and once more when a fold finishes
    (``event.fold_done``); ``comp tune`` reports to its pruner through it and may raise to stop a trial.

    ``devices`` (``"0,1"``, ``["cuda:0", "cuda:1"]``, ``"all"``, ``["cpu", "cpu"]``) runs one worker process per
    device, each with a fair share of the CPU threads, each taking the next unfinished (model, fold) through the
    fold locks; OOF and metrics are assembled once every fold is done. A fold gives the same result on any worker
    as in a single process with the same threads per process. A worker that dies leaves its fold resumable, the
    others go on, and the call then raises ``WorkerError``. ``on_epoch`` is called here as workers report.

    ``ray`` (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``; ``True`` for RAY_ADDRESS or a fresh cluster on
    this box; an open ``ray.init`` session is used as it is) runs every unfinished (model, fold) as a Ray task
    with ``ray_cpus`` CPUs (torch threads) and, when the cluster has GPUs, one GPU each. Tasks need no shared
    filesystem: the driver ships each its inputs and commits the files it sends back; the images must be
    readable at the same paths on every node. A task whose process or node dies is run again by Ray; a fold
    gives the same result as in a local process with the same threads on the same device type.

    Under ``torchrun`` (WORLD_SIZE > 1) every process calls this, and each fold trains with
    DistributedDataParallel across them: rank 0 writes the artifacts and every rank returns the same result.

    ``exist_ok`` says what an existing run folder becomes: ``"resume"`` (the default) continues it (finished
    folds are kept; a changed config is refused), ``"overwrite"`` deletes what comp wrote there and trains
    afresh (your own files there stay), ``"error"`` refuses it.

    Example::

        result = comp.train_folds(cfg, "runs/exp", devices="all")   # one worker per GPU
        result = comp.train_folds(cfg, "runs/exp", ray="auto")      # one Ray task per fold on a running cluster
        result = comp.train_folds(cfg.replace(**{"train.lr": 3e-4}), "runs/exp", exist_ok="overwrite")
    """
    dist = Dist.from_env()
    device_list = resolve_devices(devices) if devices is not None else None
    if dist.enabled and device_list is not None:
        raise CompError("--devices cannot be combined with torchrun / --ddp (each rank already has its GPU); use one")
    use_ray = ray is not None and ray is not False
    if use_ray and (dist.enabled or device_list is not None):
        raise CompError(
            f"{arg('ray=', '--ray')} places folds on a Ray cluster; it cannot be combined with "
            f"{'torchrun / --ddp' if dist.enabled else arg('devices=', '--devices')}; use one"
        )
    device = rank_device(cfg.device, dist) if dist.enabled else (device_list[0] if device_list else None)
    if dist.enabled and any(cfg.train_for(e).sync_bn for e in cfg.models) and device == "cpu":
        raise CompError(
            "train.sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); set train.sync_bn=false "
            "for DDP on the CPU"
        )
    check_exist_ok(exist_ok)
    board = EpochBoard.maybe(get_metric(cfg.metric, cfg.task).name, progress and not dist.enabled)
    if board is not None:  # a notebook: a live per-epoch table per fold, and a summary as folds end
        on_epoch = _both(board, on_epoch)
    run = RunDir(run_dir)
    for label, path in run_files(run.root):  # the run's own files never replace the data they describe
        check_output(path, data_inputs(cfg.data), option="--run-dir", label=label)
    table = load_train_table(cfg.data, task=cfg.task)
    n = cfg.folds.n_splits
    if folds is not None and not len(folds):
        raise CompError(
            f"{arg('folds=', '--folds')} names no fold; pass some of 0..{n - 1}, or leave it out to train them all"
        )
    if folds is not None and any(not 0 <= k < n for k in folds):
        raise CompError(
            f"{arg('folds=', '--folds ')}{','.join(map(str, folds))}: folds are numbered 0..{n - 1} (folds.n_splits={n})"
        )
    fold_list = list(folds) if folds is not None else list(range(n))
    exits: list[WorkerExit] = []
    while_training: Callable[[WorkerExit], str] | None = None
    ray_failures: Callable[[], None] | None = None
    with session(dist, device or "cpu"), ExitStack() as stack:
        shape = None
        if use_ray:  # connected and sized before the first write: a wrong address or --ray-cpus leaves nothing
            cluster = stack.enter_context(ray_session(ray))
            shape = task_shape(cluster, cfg, ray_cpus, len(cfg.models) * len(fold_list))
        fold_ids, soft = set_up_run(
            cfg, run, table, dist, exist_ok
        )  # everything checkable is checked before the first write
        set_deterministic(cfg)
        if shape is not None:
            done, ray_failures = train_on_ray(
                cluster,
                shape,
                cfg,
                run,
                table,
                fold_ids,
                fold_list,
                resume=resume,
                progress=progress,
                on_epoch=on_epoch,
                soft=soft,
            )
        elif device_list is not None and len(device_list) > 1:
            done, exits, while_training = train_on_workers(
                cfg, run, fold_list, device_list, resume=resume, progress=progress, on_epoch=on_epoch
            )
        else:
            done = train_here(
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
        models = model_results(cfg, run, table, done, soft, dist)
    if ray_failures is not None:
        ray_failures()
    raise_failures(
        exits,
        while_training or (lambda ex: ""),
        f"the other workers' folds are kept; rerun the same command with {arg('resume=True', '--resume')} to finish",
    )
    return TrainResult(run, get_metric(cfg.metric, cfg.task).name, models)
