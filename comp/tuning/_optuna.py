"""The one module that reaches past Optuna's public API: its heartbeat protocol, trial ids and a study's storage.

Optuna keeps the heartbeat machinery (``optuna.storages._heartbeat``) and a trial's storage id (``_trial_id``)
private, yet a worker that beats for its own trials and fails a dead worker's trial needs both. Every such name
is used here and only here (a test fails on one anywhere else in comp), behind small functions, so an Optuna
release that moves them breaks one file. Its experimental retry API is wrapped here too, warnings silenced.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

STALE_KEY = "comp:heartbeat"  # a journal trial's last heartbeat (unix time), as a system attribute


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of ``trial`` (not its number): what heartbeat and state calls take."""
    return trial._trial_id


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (for RDB URLs, Optuna's cached wrapper around it)."""
    return study._storage


def record_heartbeat(storage: Any, trial: optuna.Trial | FrozenTrial) -> None:
    """One heartbeat for ``trial`` on a storage that speaks Optuna's heartbeat protocol."""
    storage.record_heartbeat(trial_id(trial))


def fail_stale(study: optuna.Study) -> None:
    """Optuna's own check: fail the RUNNING trials whose heartbeat is older than the grace period."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_and_retry(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail a RUNNING trial and hand it to the storage's stale-trial callback (which queues it again), as
    ``fail_stale`` does for a stale one; False when it had finished meanwhile (another worker failed it first)."""
    storage: Any = storage_of(study)
    try:
        failed = storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    if failed:
        try:
            storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(trial_id(trial)))
        except UpdateFinishedTrialError:
            pass
    return bool(failed)


def retry_callback(max_retry: int) -> Callable[..., None]:
    """Optuna's stale-trial callback that queues a failed trial's parameters again, at most ``max_retry`` times."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the trials ``trial`` retries, the original first (empty for a trial that is no retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


class JournalWithHeartbeat(JournalStorage, BaseHeartbeat):
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
                stale.append(trial_id(t))
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None]:
        return self._callback
