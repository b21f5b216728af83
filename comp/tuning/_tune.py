"""``comp tune``: Optuna search over the training config, through exactly the code path of train-folds.

Every trial is ``train_folds`` on a sampled config in its own run folder under the tuning folder, so the
best config reproduces its score. Studies live in a storage (SQLite file by default, PostgreSQL or a
journal file to share one study between workers), so a killed study resumes without losing a trial.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from comp.config import Config, build_config
from comp.errors import CompError, ConfigError
from comp.metrics import get_metric
from comp.tuning._outputs import TuneResult, write_outputs
from comp.tuning._space import parse_space
from comp.tuning._study import Plan, open_study
from comp.tuning._trials import counted, reap, run_one

log = logging.getLogger(__name__)


def _work(plan: Plan, study, storage, device: str | None = None) -> None:
    """Run trials until the study holds n_trials; then stay while other workers' trials run, so that the retry
    of one whose worker dies still finds a worker."""
    t0 = time.monotonic()
    waiting = False
    while plan.timeout is None or time.monotonic() - t0 < plan.timeout:
        reap(study, study.get_trials(deepcopy=False))
        trials = study.get_trials(deepcopy=False)
        if counted(trials) < plan.n_trials:
            run_one(
                study,
                plan.base,
                plan.space,
                plan.out_dir,
                plan.folds,
                plan.pruner,
                plan.n_trials,
                plan.keep_trials,
                storage=storage,
                heartbeat=plan.heartbeat,
                device=device,
            )
            continue
        running = [t.number for t in trials if t.state == TrialState.RUNNING]
        if not running:
            return
        if not waiting:
            log.info(
                "the study holds %d trials; waiting for trial%s %s of other workers to end (one whose worker dies "
                "is run again here)",
                plan.n_trials,
                "s" if len(running) > 1 else "",
                ", ".join(map(str, running)),
            )
            waiting = True
        time.sleep(min(plan.heartbeat, 2.0))


def _tune_worker(plan: Plan, device: str, send: Callable[[tuple], None]) -> None:
    """A device worker of ``tune(devices=...)``: one process, one device, the shared study."""
    with _quiet_optuna():
        study, storage = open_study(plan, shared=True)
        _work(plan, study, storage, device)


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
) -> TuneResult:
    """Run (or resume) a study until it holds ``n_trials`` trials; write the best config, trials.csv and plots.

    ``devices`` (``"0,1"``, ``"all"``, ``["cpu", "cpu"]``) runs one worker process per device on the study.
    Workers record a heartbeat every ``heartbeat`` seconds; the trial of a worker silent for twice that is
    failed and run again by another worker (at once when the dead worker was on this box), so a killed worker
    never leaves a trial counted forever. Workers on other boxes share the study through ``storage``.
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
    with _quiet_optuna():
        study, store = open_study(plan, shared=storage is not None)  # creates the study before any worker races to
        if device_list is not None and len(device_list) > 1:
            exits = run_workers(_tune_worker, [plan] * len(device_list), device_list)
            for ex in exits:
                if not ex.ok and ex.error is None:
                    log.warning("[%s] %s; another worker ran its trial again", ex.name, ex.describe())
            if any(e.error is not None for e in exits) or counted(study.get_trials(deepcopy=False)) < n_trials:
                raise_failures(
                    exits, lambda ex: "", "the study keeps its finished trials; run the same command to go on"
                )
        else:
            _work(plan, study, store, device_list[0] if device_list else None)
        return write_outputs(study, cfg, space, out_dir)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines off while comp tunes, and the caller's verbosity restored afterwards."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
