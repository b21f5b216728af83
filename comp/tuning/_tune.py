"""``comp tune``: Optuna search over the training config, through exactly the code path of train-folds.

Every trial is ``train_folds`` on a sampled config in its own run folder under the tuning folder, so the
best config reproduces its score. Studies live in a storage (SQLite file by default, PostgreSQL or a
journal file to share one study between workers), so a killed study resumes without losing a trial.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat  # see _JournalWithHeartbeat
from optuna.trial import FrozenTrial, TrialState

from comp._tables import format_table
from comp.config import TRAIN_KEYS, Config, build_config, dump, set_key
from comp.config._records import _MODEL_FIELDS as MODEL_KEYS
from comp.errors import CompError, ConfigError, closest
from comp.metrics import check_config as check_metric
from comp.metrics import get_metric
from comp.run import RunDir, pid_alive, read_table, save_figure, write_csv, write_text
from comp.training._losses import check_config as check_losses
from comp.training._trainer import EpochEvent

SPACE_TYPES = ("float", "int", "categorical")
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.FAIL)
PRUNERS = ("median", "hyperband", "wilcoxon", "none")
STORAGE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
MAX_RETRY = 2  # a trial whose worker died is run again at most this often (a config that kills workers stops)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the search space


def _key_exists(cfg: Config, dotted: str) -> None:
    parts = dotted.split(".")
    if parts[0] == "models":
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(cfg.models):
            raise ConfigError(
                f"tune.space key '{dotted}': model entries are searched as models.<index>.<key>, "
                f"index below {len(cfg.models)}"
            )
        allowed = [*MODEL_KEYS, *TRAIN_KEYS]
        if parts[2] not in allowed:
            raise ConfigError(f"tune.space key '{dotted}': unknown model key '{parts[2]}'{closest(parts[2], allowed)}")
        return
    node: Any = cfg
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        if isinstance(node, list):  # inside a mapping-valued key, e.g. data.labels.attributes.age.train_bins.1
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"tune.space key '{dotted}': '{part}' is not an index of the {len(node)}-entry list {where}"
                )
            node = node[int(part)]
            continue
        options = (
            [f.name for f in dataclasses.fields(node)]
            if dataclasses.is_dataclass(node)
            else [str(k) for k in node]
            if isinstance(node, dict)
            else []
        )
        if part not in options or part in ("models", "tune") and i == 0:
            raise ConfigError(f"tune.space key '{dotted}': '{part}' is not a key of {where}{closest(part, options)}")
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"tune.space key '{dotted}' is a section; search one of its keys")


def parse_space(cfg: Config) -> dict[str, dict]:
    """Validate ``tune.space`` before the first trial; return {dotted key: spec}."""
    space = cfg.tune.space if cfg.tune is not None else {}
    if not space:
        raise ConfigError(
            "config key 'tune.space' must map config keys to ranges, e.g. "
            "tune: {space: {train.lr: {type: float, low: 1e-4, high: 1e-2, log: true}}}"
        )
    for key, spec in space.items():
        _key_exists(cfg, key)
        if not isinstance(spec, dict) or spec.get("type") not in SPACE_TYPES:
            got = spec.get("type") if isinstance(spec, dict) else spec
            raise ConfigError(f"tune.space.{key}: type must be one of {', '.join(SPACE_TYPES)}, got {got!r}")
        allowed = {"categorical": {"type", "choices"}}.get(spec["type"], {"type", "low", "high", "log", "step"})
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(
                f"tune.space.{key}: unknown key '{extra[0]}' for a {spec['type']} range"
                f"{closest(extra[0], allowed)}; allowed: {', '.join(sorted(allowed))}"
            )
        if spec["type"] == "categorical":
            if not isinstance(spec.get("choices"), list) or not spec["choices"]:
                raise ConfigError(f"tune.space.{key}: categorical needs a non-empty 'choices' list")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
            raise ConfigError(
                f"tune.space.{key}: {spec['type']} needs numeric 'low' and 'high', got low={low!r} high={high!r}"
            )
        assert isinstance(low, int | float) and isinstance(high, int | float)
        if low > high:
            raise ConfigError(f"tune.space.{key}: low ({low}) is above high ({high}); swap them")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"tune.space.{key}: log scale needs low > 0, got {low}")
        if spec["type"] == "int" and not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"tune.space.{key}: int needs whole-number low and high, got {low} and {high}")
        step = spec.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
                raise ConfigError(f"tune.space.{key}: step must be a number > 0, got {step!r}")
            if spec["type"] == "int" and not float(step).is_integer():
                raise ConfigError(f"tune.space.{key}: an int range needs a whole-number step, got {step}")
            if spec.get("log"):
                raise ConfigError(f"tune.space.{key}: log and step cannot be combined (optuna forbids it); drop one")
    for corner in ("low", "high"):  # a config at each corner of the space must pass validation
        corner_cfg = apply_params(cfg, {k: _corner(s, corner) for k, s in space.items()})
        check_metric(corner_cfg)  # and the registry names train_folds' preflight checks, before any write
        check_losses(corner_cfg)
    return space


def _corner(spec: dict, which: str):
    if spec["type"] == "categorical":
        return spec["choices"][0 if which == "low" else -1]
    return int(spec[which]) if spec["type"] == "int" else float(spec[which])


def apply_params(cfg: Config, params: dict) -> Config:
    """A validated copy of ``cfg`` with each dotted key set to its value (model entries as models.<i>.<key>)."""
    raw = cfg.to_dict()
    for key, value in params.items():
        set_key(raw, key, value)
    return build_config(raw)


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """Sample one value per searched key."""
    params = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            params[key] = trial.suggest_categorical(key, spec["choices"])
        elif spec["type"] == "int":
            params[key] = trial.suggest_int(
                key, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=bool(spec.get("log"))
            )
        else:
            params[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=bool(spec.get("log"))
            )
    return params


# ---------------------------------------------------------------- pruning across folds


class FoldReporter:
    """Reports a trial's progress to its pruner in a way that stays comparable across folds.

    Median/Hyperband: one global step per epoch, ``step = (model, fold position) * epochs + epoch``, and the
    value is the mean over the folds seen so far of each fold's best score up to now: a trial is compared
    with others at the same fold and epoch, never with a restarted per-fold curve.
    Wilcoxon (built for k-fold): each finished fold's score is reported at step = its position, and the
    pruner tests whether this trial's per-fold scores are worse than the best trial's.
    """

    def __init__(self, trial: optuna.Trial, fold_order: list[int], wilcoxon: bool, greater_is_better: bool):
        self.trial, self.fold_order, self.wilcoxon = trial, fold_order, wilcoxon
        self.sign = 1.0 if greater_is_better else -1.0
        self.finished: dict[tuple[str, int], float] = {}
        self.models: list[str] = []

    def __call__(self, ev: EpochEvent) -> None:
        if ev.model_id not in self.models:
            self.models.append(ev.model_id)
        pos = self.models.index(ev.model_id) * len(self.fold_order) + self.fold_order.index(ev.fold)
        current = ev.best_score if ev.best_score is not None else ev.score
        if ev.fold_done:
            self.finished[(ev.model_id, ev.fold)] = current
        if self.wilcoxon:
            if ev.fold_done:
                self._report(current, pos)
            return
        if ev.fold_done:
            return
        seen = [v for k, v in self.finished.items() if k != (ev.model_id, ev.fold)] + [current]
        self._report(float(np.mean(seen)), pos * ev.epochs + ev.epoch)

    def _report(self, value: float, step: int) -> None:
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4f}")


def make_pruner(name: str, total_steps: int) -> optuna.pruners.BasePruner:
    """The pruner called ``name``; unknown names list the valid ones."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(total_steps, 1), reduction_factor=3)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CompError(f"unknown pruner '{name}'; choose from {', '.join(PRUNERS)}{closest(name, PRUNERS)}")


STALE_KEY = "comp:heartbeat"  # a journal trial's last heartbeat (unix time), as a system attribute


class _JournalWithHeartbeat(JournalStorage, BaseHeartbeat):
    """A journal file that speaks Optuna's heartbeat protocol, as RDBStorage does.

    Optuna 5 gives journals no heartbeat (optuna#6615), so a worker killed on another box would leave its
    trial RUNNING forever. Heartbeats are written as a trial system attribute; implementing BaseHeartbeat lets
    Optuna's own ``fail_stale_trials`` and ``RetryHeartbeatStaleTrialCallback`` work on it unchanged. Times are
    each writer's clock, so boxes sharing a journal need clocks within the grace period of each other (NTP).
    """

    def __init__(self, backend: Any, interval: int, grace: int, callback: Callable[..., None]):
        super().__init__(backend)
        self._interval, self._grace, self._callback = interval, grace, callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, STALE_KEY, time.time())
        except UpdateFinishedTrialError:
            pass  # finished meanwhile: nothing left to keep alive

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if STALE_KEY not in t.system_attrs:
                continue  # as in RDBStorage: a trial that never beat is not judged
            # a retried trial inherits its dead original's attributes: its own start counts as a beat
            start = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - max(float(t.system_attrs[STALE_KEY]), start) > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None]:
        return self._callback


def _retry_callback() -> Callable[..., None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def make_storage(url: str | None, out_dir: Path, heartbeat: int = 60):
    """The study's storage, with Optuna's heartbeat: a worker that stops beating for ``2 * heartbeat`` seconds has
    its RUNNING trial failed and queued again (up to MAX_RETRY times) by whichever worker notices.

    SQLite file in the tuning folder by default; ``journal:PATH`` for a journal file; any RDB URL otherwise.
    """
    grace = 2 * heartbeat
    if url is not None:
        check_storage_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat is marked experimental
        if url is not None and url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :]).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            return _JournalWithHeartbeat(JournalFileBackend(str(path)), heartbeat, grace, _retry_callback())
        engine_kwargs = None
        if url is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{(out_dir / 'study.db').resolve()}"
        if url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait for its lock
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=_retry_callback(),
            )
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of many types all mean an unusable URL
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if isinstance(exc, (IntegrityError, ProgrammingError)):
                raise  # the table-creation race between workers: _open_study's caller retries
            first = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            raise ConfigError(
                f"--storage {url}: cannot open the study ({type(exc).__name__}: {first}); check the "
                "server, its address and credentials, and that its driver (e.g. psycopg) is installed"
            ) from None


def check_storage_url(url: str) -> None:
    """Refuse a --storage value that cannot work, before anything connects to it."""
    if url.startswith("journal:"):
        path = Path(url[len("journal:") :]).expanduser().resolve()
        if path.is_dir():
            raise ConfigError(
                f"--storage {url}: {path} is a folder; name a journal file, e.g. journal:{path / 'study.log'}"
            )
        return
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme.split("+")[0] not in STORAGE_SCHEMES:
        raise ConfigError(
            f"--storage {url}: unknown kind of storage; use sqlite:///PATH, postgresql://user@host/db, "
            "mysql://user@host/db or journal:PATH"
        )
    if scheme == "sqlite":
        db = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
        if db is None or not str(db):
            raise ConfigError(
                f"--storage {url}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        if not db.parent.is_dir():
            raise ConfigError(f"--storage {url}: folder {db.parent} does not exist; create it or choose another path")


# ---------------------------------------------------------------- the objective


def trial_score(cfg: Config, run_dir: Path, folds: list[int]) -> float:
    """Mean over models of the metric on the concatenated OOF rows of ``folds``."""
    metric = get_metric(cfg.metric)
    run = RunDir(run_dir)
    scores = []
    for entry in cfg.models:
        parts = [run.read_oof_part(entry.model_id, k, id_column=cfg.data.id_column) for k in folds]
        y = np.concatenate([p.y for p in parts])
        scores.append(metric(y, np.concatenate([p.probs for p in parts])))
    return float(np.mean(scores))


def _run_trial(trial, base_cfg, space, out_dir, folds, pruner_name, keep, device=None):
    from comp.training._trainer import train_folds

    params = suggest(trial, space)
    cfg = apply_params(base_cfg, params)
    run_dir = out_dir / "trials" / f"trial_{trial.number:04d}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a retried number: start clean
    metric = get_metric(cfg.metric)
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
                storage.record_heartbeat(trial._trial_id)
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
        storage.record_heartbeat(trial._trial_id)  # judged from now on, should this process die before its next beat
    if _counted(study.get_trials(deepcopy=False), before=trial.number) >= n_trials:
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
    return True


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _retry_of(trials: list[FrozenTrial]) -> dict[int, int]:
    """{number of a trial whose worker died: number of the trial that retries it}."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = {t.number: optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t) for t in trials}
    return {h[-1]: number for number, h in history.items() if h}


def _counted(trials: list[FrozenTrial], before: int | None = None) -> int:
    """Trials that count towards n_trials: finished or running, not surplus, not a dead worker's (it is retried)."""
    retried = _retry_of(trials)
    return sum(
        1
        for t in trials
        if t.state in COUNTED
        and t.user_attrs.get("fail_reason") != "surplus"
        and t.number not in retried
        and (before is None or t.number < before)
    )


def _reap(study, trials: list[FrozenTrial]) -> None:
    """Fail the RUNNING trials of dead workers; Optuna's retry callback queues each again.

    Any box: Optuna's heartbeat check (no beat for the grace period). This box, at once: a trial whose worker
    process is gone, as a fold lock of a dead process on this host is taken over.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    storage = study._storage
    for t in trials:
        w_host, pid, number = (str(t.user_attrs.get("worker", "")).rsplit(":", 2) + ["", "", ""])[:3]
        if t.state != TrialState.RUNNING or w_host != host or number != str(t.number) or pid_alive(pid):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                log.warning(
                    "trial %d: its worker (pid %s on this box) is gone; the trial is queued again", t.number, pid
                )
                storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(t._trial_id))
        except UpdateFinishedTrialError:
            pass  # another worker failed it first


@dataclass
class _Plan:
    """Everything a tuning worker needs (picklable: device workers receive it)."""

    base: Config
    space: dict
    out_dir: Path
    storage: str | None
    study_name: str
    direction: str
    pruner: str
    total_steps: int
    n_trials: int
    folds: list[int]
    keep_trials: bool
    timeout: float | None
    heartbeat: int
    seed: int


def _open_study(plan: _Plan, *, shared: bool):
    """create_study(load_if_exists=True), retried: workers starting together on an empty database race to
    create its tables and one of them loses with a duplicate-object error. Returns the study and its storage."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            storage = make_storage(plan.storage, plan.out_dir, plan.heartbeat)
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                load_if_exists=True,
                direction=plan.direction,  # type: ignore[arg-type]  # validated as maximize/minimize
                pruner=make_pruner(plan.pruner, plan.total_steps),
            )
            break
        except SQLAlchemyError:
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    # a resumed study or another worker must not replay the first samples of the seeded sampler
    offset = len(study.get_trials(deepcopy=False)) + (os.getpid() if shared else 0)
    study.sampler = optuna.samplers.TPESampler(seed=(plan.seed + offset) % 2**31)
    return study, storage


def _work(plan: _Plan, study, storage, device: str | None = None) -> None:
    """Run trials until the study holds n_trials; then stay while other workers' trials run, so that the retry
    of one whose worker dies still finds a worker."""
    t0 = time.monotonic()
    waiting = False
    while plan.timeout is None or time.monotonic() - t0 < plan.timeout:
        _reap(study, study.get_trials(deepcopy=False))
        trials = study.get_trials(deepcopy=False)
        if _counted(trials) < plan.n_trials:
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


def _tune_worker(plan: _Plan, device: str, send: Callable[[tuple], None]) -> None:
    """A device worker of ``tune(devices=...)``: one process, one device, the shared study."""
    with _quiet_optuna():
        study, storage = _open_study(plan, shared=True)
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
    metric = get_metric(cfg.metric)
    max_epochs = max(base.train_for(e).epochs for e in base.models)
    plan = _Plan(
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
        study, store = _open_study(plan, shared=storage is not None)  # creates the study before any worker races to
        if device_list is not None and len(device_list) > 1:
            exits = run_workers(_tune_worker, [plan] * len(device_list), device_list)
            for ex in exits:
                if not ex.ok and ex.error is None:
                    log.warning("[%s] %s; another worker ran its trial again", ex.name, ex.describe())
            if any(e.error is not None for e in exits) or _counted(study.get_trials(deepcopy=False)) < n_trials:
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


# ---------------------------------------------------------------- outputs


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, fail reason, one column per parameter."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried = _retry_of(trials)
    for t in trials:
        dur = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        reason = t.user_attrs.get("fail_reason", "")
        if t.state == TrialState.FAIL and not reason:  # failed by the heartbeat check or a dead-worker check
            reason = "worker died" + (f"; retried as trial {retried[t.number]}" if t.number in retried else "")
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "duration_s": dur,
                "last_step": t.last_step,
                "fail_reason": reason,
                **t.params,
            }
        )
    return pd.DataFrame(rows)


def _save_plot(draw, path: Path) -> Path | None:
    """Save the figure an optuna matplotlib plot draws (through pyplot, inside ``_pyplot_scope``) and close it."""
    import matplotlib.pyplot as plt

    try:
        ax = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None  # e.g. importances need two finished trials with two or more parameters
    fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
    fig.set_size_inches(8, 5)
    try:
        save_figure(path, fig, dpi=100)
    finally:
        plt.close(fig)
    return path


@dataclass
class TuneResult:
    """A study's outcome: counts per state, the best trial and where its config and the tables went."""

    out_dir: Path
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config: Path | None
    best_number: int | None
    plots: list[Path]
    direction: str

    def trials(self) -> pd.DataFrame:
        """One row per trial (trials.csv)."""
        return read_table(self.out_dir / "trials.csv", "trials table", allow_empty=True)

    def table(self, top: int = 5) -> str:
        """The best finished trials, best first for the study's direction."""
        trials = self.trials()
        if not len(trials):
            return "no finished trial yet"
        trials["value"] = pd.to_numeric(trials["value"], errors="coerce")
        done = (
            trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=self.direction == "minimize").head(top)
        )
        cols = [c for c in trials.columns if c not in ("duration_s", "last_step", "fail_reason")]
        return format_table(done[cols].to_dict("records")) if len(done) else "no finished trial yet"


def write_outputs(study, cfg: Config, space: dict, out_dir: Path) -> TuneResult:
    """best_config.yaml, trials.csv, history.png, importances.png; returns a summary."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    trials = trials_frame(study)
    write_csv(out_dir / "trials.csv", trials)
    complete = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    result = TuneResult(
        out_dir,
        len(trials),
        trials["state"].value_counts().to_dict() if len(trials) else {},
        None,
        None,
        None,
        None,
        [],
        study.direction.name.lower(),
    )
    if len(complete):
        best = study.best_trial
        best_cfg = apply_params(cfg, best.params)
        write_text(
            out_dir / "best_config.yaml",
            f"# comp tune: best of {len(trials)} trials, "
            f"{cfg.metric} = {best.value:.6f} (trial {best.number})\n" + dump(best_cfg),
        )
        result.best_value, result.best_params = best.value, best.params
        result.best_config, result.best_number = out_dir / "best_config.yaml", best.number
    with warnings.catch_warnings(), _pyplot_scope():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        plots = [_save_plot(lambda: ovm.plot_optimization_history(study), out_dir / "history.png")]
        if len(space) > 1:
            plots.append(_save_plot(lambda: ovm.plot_param_importances(study), out_dir / "importances.png"))
    result.plots = [p for p in plots if p]
    return result


@contextmanager
def _pyplot_scope() -> Iterator[None]:
    """Optuna's plots draw through pyplot: give them the non-interactive Agg backend and restore the caller's."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("Agg")
    try:
        yield
    finally:
        plt.switch_backend(before)
