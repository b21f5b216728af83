"""``tune(ray=...)``: tuning workers as Ray tasks on the study's storage, no shared filesystem needed.

Each task is a tuning worker as a ``--devices`` worker is (``work``: trials until the study holds n_trials, the
heartbeat, reaping a dead worker's trial), with its trials' run folders in a scratch folder on its node; it ships
the ``trials/`` folder back and the driver writes it into the tuning folder. The storage is what the tasks share,
so it must be reachable from every node: the default SQLite file (and any ``sqlite:`` or ``journal:`` path) only
on a one-box cluster; a PostgreSQL or MySQL URL across boxes. A task whose process or node dies is run again by
Ray; its trial is failed and queued again by the heartbeat rules (at once on the same box, after the grace
period from another).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from comp.run import atomic_write
from comp.training._ray import Relay, TaskShape, read_tree, scratch, task_setup, wait_all
from comp.tuning._study import Plan, open_study
from comp.tuning._trials import quiet_optuna, work

log = logging.getLogger(__name__)


def tune_task(plan: Plan, key: str, name: str, threads: int, device: str, level: int, relay: Any) -> dict[str, bytes]:
    """On a node: one tuning worker on the shared study; returns its ``trials/`` files by relative path."""
    send = task_setup(relay, name, threads, device, level)
    send(("start",))
    root = scratch(key)
    try:
        local = replace(plan, out_dir=root)  # the storage is a URL: only the trials' run folders go here
        with quiet_optuna():
            study, storage = open_study(local, shared=True)
            work(local, study, storage, device)
        trials = root / "trials"
        return read_tree(trials) if trials.is_dir() else {}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _writer(data: bytes) -> Callable[[Path], int]:
    return lambda tmp: tmp.write_bytes(data)


def tune_on_ray(ray: Any, shape: TaskShape, plan: Plan) -> dict[str, BaseException]:
    """As many tuning tasks as the cluster runs at once (at most n_trials); each one's trial folders written under
    the tuning folder as it ends. Returns the tasks that failed for good."""
    n = max(1, min(plan.n_trials, shape.slots))
    log.info("%d tuning worker%s as Ray tasks: %s", n, "s" if n > 1 else "", shape.describe())
    where = hashlib.sha256(f"{socket.gethostname()}:{plan.out_dir.resolve()}".encode()).hexdigest()[:12]
    level = logging.getLogger("comp").getEffectiveLevel()
    relay = Relay(ray)
    task = ray.remote(tune_task).options(**shape.options())
    refs = {}
    for i in range(n):
        name = f"tune worker {i}"
        refs[task.remote(plan, f"tune-{where}-{i}", name, shape.num_cpus, shape.device, level, relay.queue)] = name

    def write(name: str, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
                raise RuntimeError(f"{name} sent a file outside its trials folder: {rel!r}")
            path = plan.out_dir / "trials" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, _writer(data))

    try:
        return wait_all(ray, refs, relay, write)
    finally:
        relay.close(ray)
