"""``comp tune``: Optuna search over the training config, through exactly the code path of train-folds.

Every trial is ``train_folds`` on a sampled config in its own run folder under the tuning folder, so the
best config reproduces its score. Studies live in a storage (SQLite file by default, PostgreSQL or a
journal file to share one study between workers), so a killed study resumes without losing a trial.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from comp.config import Config, build_config
from comp.errors import CompError, ConfigError
from comp.metrics import get_metric
from comp.tuning._outputs import TuneResult, write_outputs
from comp.tuning._space import parse_space
from comp.tuning._storage import shared_url
from comp.tuning._study import Plan, open_study
from comp.tuning._trials import counted, quiet_optuna, work

log = logging.getLogger(__name__)


def _tune_worker(plan: Plan, device: str, send: Callable[[tuple], None]) -> None:
    """A device worker of ``tune(devices=...)``: one process, one device, the shared study."""
    with quiet_optuna():
        study, storage = open_study(plan, shared=True)
        work(plan, study, storage, device)


def tune(
    cfg: Config,
    out_dir: str | Path,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    folds: list[int] | None = None,
    epochs: int | None = None,
    pruner: str | None = None,
    seed: int | None = None,
    keep_trials: bool = False,
    devices: str | list[str | int] | None = None,
    heartbeat: int = 60,
    ray: str | bool | None = None,
    ray_cpus: int | None = None,
) -> TuneResult:
    """Run (or resume) a study until it holds ``n_trials`` trials; write the best config, trials.csv and plots.

    ``devices`` (``"0,1"``, ``"all"``, ``["cpu", "cpu"]``) runs one worker process per device on the study.
    Workers record a heartbeat every ``heartbeat`` seconds; the trial of a worker silent for twice that is
    failed and run again by another worker (at once when the dead worker was on this box), so a killed worker
    never leaves a trial counted forever. Workers on other boxes share the study through ``storage``.

    ``ray`` (an address, ``"auto"``, or ``True``; see ``train_folds``) runs the workers as Ray tasks with
    ``ray_cpus`` CPUs and, on a cluster with GPUs, one GPU each, as many as the cluster runs at once (at most
    ``n_trials``); their trial folders come back into ``out_dir``. Across boxes the storage must be a database
    server (``postgresql://...``): a SQLite or journal file serves a one-box cluster only.
    """
    out_dir = Path(out_dir)
    space = parse_space(cfg)
    block = cfg.tune
    assert block is not None  # parse_space checked it
    if n_trials is not None and n_trials < 1:
        raise ConfigError(f"--n-trials must be >= 1, got {n_trials}")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}")
    from comp.training._distributed import Dist
    from comp.training._parallel import raise_failures, resolve_devices, run_workers

    if Dist.from_env().enabled:
        raise CompError("comp tune does not run under torchrun / --ddp; use --devices for one worker per GPU")
    device_list = resolve_devices(devices) if devices is not None else None
    use_ray = ray is not None and ray is not False
    if use_ray and device_list is not None:
        raise CompError("--ray and --devices are two ways to run several tuning workers; pass one of them")
    n_trials = n_trials or block.n_trials or 20
    pruner = pruner or block.pruner or "median"
    folds = folds if folds is not None else block.folds or list(range(cfg.folds.n_splits))
    if not folds or any(not 0 <= k < cfg.folds.n_splits for k in folds):
        raise ConfigError(f"--folds: folds are numbered 0..{cfg.folds.n_splits - 1}")
    epochs = epochs or block.epochs
    base = cfg
    if epochs:
        raw = cfg.to_dict()
        raw["train"]["epochs"] = int(epochs)
        for entry in raw["models"]:
            entry.pop("epochs", None)
        base = build_config(raw)
    metric = get_metric(cfg.metric, cfg.task)
    max_epochs = max(base.train_for(e).epochs for e in base.models)
    plan = Plan(
        base,
        space,
        out_dir,
        storage,
        study_name or "comp",
        block.direction or metric.direction,
        pruner,
        len(folds) * len(base.models) * max_epochs,
        n_trials,
        folds,
        keep_trials,
        timeout,
        heartbeat,
        cfg.seed if seed is None else seed,
    )
    with quiet_optuna(), ExitStack() as stack:
        shape = None
        if use_ray:  # connected and sized before the first write
            from comp.training._ray import ray_session, task_shape

            cluster = stack.enter_context(ray_session(ray))
            shape = task_shape(cluster, cfg, ray_cpus, n_trials)
            plan = replace(plan, storage=shared_url(storage, out_dir))
        shared = storage is not None or use_ray
        study, store = open_study(plan, shared=shared)  # creates the study before any worker races to
        fix = "the study keeps its finished trials; run the same command to go on"
        if shape is not None:
            from comp.training._ray import raise_failed
            from comp.tuning._ray import tune_on_ray

            failed = tune_on_ray(cluster, shape, plan)
            raise_failed(failed, fix)
            if counted(study.get_trials(deepcopy=False)) < n_trials:
                raise CompError(f"the study holds fewer than {n_trials} trials after the Ray tasks ended; {fix}")
        elif device_list is not None and len(device_list) > 1:
            exits = run_workers(_tune_worker, [plan] * len(device_list), device_list)
            for ex in exits:
                if not ex.ok and ex.error is None:
                    log.warning("[%s] %s; another worker ran its trial again", ex.name, ex.describe())
            if any(e.error is not None for e in exits) or counted(study.get_trials(deepcopy=False)) < n_trials:
                raise_failures(exits, lambda ex: "", fix)
        else:
            work(plan, study, store, device_list[0] if device_list else None)
        return write_outputs(study, cfg, space, out_dir)
