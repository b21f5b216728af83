"""One trial from ask to tell: train_folds on its sampled config under a heartbeat, its score, its end (complete,
pruned, failed, or dropped when another worker declared it dead), and the study's count and reaping of trials."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from comp.config import Config
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import RunDir, pid_alive
from comp.tasks import nested_score
from comp.tuning._optuna import fail_and_retry, fail_stale, record_heartbeat, retry_history
from comp.tuning._pruning import FoldReporter
from comp.tuning._space import apply_params, suggest

if TYPE_CHECKING:
    from comp.tuning._study import Plan

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
log = logging.getLogger(__name__)


def trial_score(cfg: Config, run_dir: Path, folds: list[int]) -> float:
    """Mean over models of the metric on the concatenated OOF rows of ``folds``."""
    metric = get_metric(cfg.metric, cfg.task)
    run = RunDir(run_dir)
    scores = []
    for entry in cfg.models:
        parts = [run.read_oof_part(entry.model_id, k, id_column=cfg.data.id_column) for k in folds]
        y = np.concatenate([p.y for p in parts])
        fold_of = np.concatenate([np.full(len(p.ids), k) for p, k in zip(parts, folds)])
        # a metric that fits a decision (thresholds, cut-points) is scored nested over the folds, as CV is
        scores.append(nested_score(metric, y, np.concatenate([p.probs for p in parts]), fold_of)[0])
    return float(np.mean(scores))


def _run_trial(trial, base_cfg, space, out_dir, folds, pruner_name, keep, device=None):
    from comp.training._trainer import train_folds

    params = suggest(trial, space)
    cfg = apply_params(base_cfg, params)
    run_dir = out_dir / "trials" / f"trial_{trial.number:04d}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a retried number: start clean
    metric = get_metric(cfg.metric, cfg.task)
    reporter = FoldReporter(trial, folds, pruner_name == "wilcoxon", metric.greater_is_better)
    try:
        train_folds(cfg, run_dir, folds=folds, progress=False, on_epoch=reporter, devices=[device] if device else None)
        return trial_score(cfg, run_dir, folds)
    finally:
        if not keep:
            shutil.rmtree(run_dir / "models", ignore_errors=True)  # checkpoints of every trial would fill the disk


def _tell(study, trial, value=None, state=None) -> None:
    try:
        study.tell(trial, value, state=state)
    except UpdateFinishedTrialError:
        _declared_dead(trial)


def _declared_dead(trial) -> None:
    log.warning(
        "trial %d was failed by another worker: this one sent no heartbeat for the grace period (a stalled "
        "process or a paused box); its result is dropped and its retry takes its place",
        trial.number,
    )


def _fail(study, trial, reason: str) -> None:
    try:
        trial.set_user_attr("fail_reason", reason[:500])
    except UpdateFinishedTrialError:
        return _declared_dead(trial)
    _tell(study, trial, state=TrialState.FAIL)


@contextmanager
def _heartbeat(storage, trial, interval: int) -> Iterator[None]:
    """Beat for ``trial`` every ``interval`` seconds while the block runs (the storage's public record_heartbeat)."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                record_heartbeat(storage, trial)
            except Exception as exc:  # a storage hiccup must not kill the trial; a long silence fails it
                log.debug("heartbeat of trial %d failed: %s", trial.number, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"comp-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_one(
    study,
    base_cfg,
    space,
    out_dir,
    folds,
    pruner_name,
    n_trials,
    keep=False,
    *,
    storage=None,
    heartbeat: int = 60,
    device: str | None = None,
) -> bool:
    """Ask for a trial and run it; False once the study already holds ``n_trials`` (this one is dropped)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)  # we beat ourselves: see _heartbeat
        trial = study.ask()
    if storage is not None:
        record_heartbeat(storage, trial)  # judged from now on, should this process die before its next beat
    if counted(study.get_trials(deepcopy=False), before=trial.number) >= n_trials:
        _fail(study, trial, "surplus")  # another worker took the last slot between our count and our ask
        return False
    # lets a worker on this box fail the trial at once if this process dies; the number tells this trial's own
    # record from the one a retry inherits from its dead original
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{trial.number}")
    try:
        with _heartbeat(storage, trial, heartbeat) if storage is not None else _nothing():
            value = _run_trial(trial, base_cfg, space, out_dir, folds, pruner_name, keep, device)
    except optuna.TrialPruned:
        _tell(study, trial, state=TrialState.PRUNED)
        log.info("trial %d pruned (%s)", trial.number, _params(trial))
    except UpdateFinishedTrialError:  # reporting to a trial another worker declared dead
        _declared_dead(trial)
    except KeyboardInterrupt:
        _fail(study, trial, "interrupted")
        raise
    except (CompError, RuntimeError, FloatingPointError, ValueError, MemoryError, OSError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log.warning("trial %d failed: %s", trial.number, reason)
        _fail(study, trial, reason)
    else:
        _tell(study, trial, value)
        log.info("trial %d: %.4f (%s)", trial.number, value, _params(trial))
    return True


def _params(trial) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def retry_of(trials: list[FrozenTrial]) -> dict[int, int]:
    """{number of a trial whose worker died: number of the trial that retries it}."""
    history = {t.number: retry_history(t) for t in trials}
    return {h[-1]: number for number, h in history.items() if h}


def counted(trials: list[FrozenTrial], before: int | None = None) -> int:
    """Trials that count towards n_trials: finished or running, not surplus, not a dead worker's (it is retried)."""
    retried = retry_of(trials)
    return sum(
        1
        for t in trials
        if t.state in COUNTED
        and t.user_attrs.get("fail_reason") != "surplus"
        and t.number not in retried
        and (before is None or t.number < before)
    )


def reap(study, trials: list[FrozenTrial]) -> None:
    """Fail the RUNNING trials of dead workers; Optuna's retry callback queues each again.

    Any box: Optuna's heartbeat check (no beat for the grace period). This box, at once: a trial whose worker
    process is gone, as a fold lock of a dead process on this host is taken over.
    """
    fail_stale(study)
    host = socket.gethostname()
    for t in trials:
        w_host, pid, number = (str(t.user_attrs.get("worker", "")).rsplit(":", 2) + ["", "", ""])[:3]
        if t.state != TrialState.RUNNING or w_host != host or number != str(t.number) or pid_alive(pid):
            continue
        if fail_and_retry(study, t):  # False: another worker failed it first
            log.warning("trial %d: its worker (pid %s on this box) is gone; the trial is queued again", t.number, pid)


def work(plan: Plan, study, storage, device: str | None = None) -> None:
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


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines off while comp tunes, and the caller's verbosity restored afterwards."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
