"""Ray, for ``train_folds(ray=...)`` and ``tune(ray=...)``: connecting to a cluster, what one task asks for, and
the relay that brings a task's log lines and epochs back to the driver.

Ray is an optional extra imported only here and only when asked. Tasks need no shared filesystem: the driver
ships what a task needs (the config, the checked training table, the fold split, a resumable state) and the
task ships its artifacts back as bytes. The competition's images are read by each task at the paths in the
table, so they must be readable at the same paths on every node (a shared or synced data folder, or the same
image on every box); nothing is ever written there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comp.config import Config
from comp.errors import CompError

log = logging.getLogger(__name__)
INSTALL = 'pip install "comp[ray]"'
RETRIES = 3  # a task whose process or node dies is run again this often (Ray's max_retries) before the run fails
STATUS_INTERVAL = 10.0  # seconds between the driver's lines listing every running task
# a test hook: the first task to finish an epoch with this set creates the file it names and kills its process,
# as a lost node would (Ray then retries the task)
EXIT_ONCE_ENV = "COMP_RAY_TEST_EXIT_ONCE"


def import_ray() -> Any:
    """The ray module, or a one-line error naming the install command."""
    try:
        import ray
    except ImportError:
        raise CompError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


@contextmanager
def ray_session(address: str | bool | None) -> Iterator[Any]:
    """Ray, connected: the caller's session when one is open; else ``address`` ("auto", "ray://host:10001",
    "host:6379"; True or "" for RAY_ADDRESS or a fresh cluster on this box), disconnected again afterwards."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    where = address if isinstance(address, str) and address else None
    try:
        ray.init(address=where, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompError(
            f"--ray {where}: cannot connect to a Ray cluster ({first}); start one with `ray start --head` "
            "or pass its address (host:6379, ray://host:10001)"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class TaskShape:
    """What each task asks of the cluster and how it runs: CPUs (torch threads too), a GPU or not, its device."""

    num_cpus: int
    num_gpus: int
    device: str
    slots: int  # how many such tasks the cluster runs at once

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_retries": RETRIES}

    def describe(self) -> str:
        gpu = ", 1 GPU" if self.num_gpus else ""
        return f"{self.num_cpus} CPU{'s' if self.num_cpus > 1 else ''}{gpu} each, {self.slots} at a time"


def task_shape(ray: Any, cfg: Config, cpus: int | None, n_tasks: int) -> TaskShape:
    """One GPU per task when the config may use one and the cluster has some (then its CPUs shared per GPU);
    else CPUs only, the cluster's CPUs shared among the tasks. ``cpus`` (``--ray-cpus``) overrides the CPUs."""
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1):
        raise CompError(f"--ray-cpus must be a whole number >= 1, got {cpus!r}")
    alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total_cpu = int(sum(r.get("CPU", 0) for r in alive))
    total_gpu = int(sum(r.get("GPU", 0) for r in alive))
    node_cpu = int(max((r.get("CPU", 0) for r in alive), default=0))
    use_gpu = cfg.device != "cpu" and total_gpu > 0
    if cfg.device.startswith("cuda") and not use_gpu:
        raise CompError(
            f"config key 'device' is {cfg.device!r} but the Ray cluster has no GPU; use device: auto or cpu, "
            "or add GPU nodes"
        )
    if cpus is None:
        share = total_cpu // total_gpu if use_gpu else total_cpu // max(1, min(n_tasks, total_cpu))
        cpus = max(1, min(share, node_cpu or 1))
    if cpus > node_cpu:
        raise CompError(
            f"--ray-cpus {cpus}: no node of the Ray cluster has that many CPUs (the largest has {node_cpu}); "
            "ask for fewer"
        )
    slots = min(total_gpu, total_cpu // cpus) if use_gpu else total_cpu // cpus
    return TaskShape(cpus, 1 if use_gpu else 0, "cuda:0" if use_gpu else "cpu", max(1, slots))


# ---------------------------------------------------------------- the task's side


def task_setup(relay: Any, label: str, threads: int, device: str, level: int) -> Callable[[tuple], None]:
    """In a task: comp's logging to the driver through ``relay``, ``threads`` torch threads, the task's GPU; returns
    the function that sends a message (prefixed with ``label``) to the driver."""
    import torch

    from comp.training._parallel import relay_logging

    def send(msg: tuple) -> None:
        relay.put((label, *msg))

    relay_logging(send, level)
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return send


def exit_once_hook() -> None:
    """The test hook of EXIT_ONCE_ENV: kill this process the first time any task gets here."""
    marker = os.environ.get(EXIT_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


def scratch(key: str) -> Path:
    """A task's own folder on its node, emptied first (a retried task starts clean)."""
    path = Path(tempfile.gettempdir()) / "comp-ray" / key
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path (what a task ships back)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- the driver's side


class Relay:
    """The driver's end of the tasks' messages: a Ray queue (an actor without CPUs) that tasks put into and the
    driver drains, re-emitting log lines prefixed with the task and handing other messages to ``on_message``."""

    def __init__(self, ray: Any, on_message: Callable[[str, tuple], None] | None = None):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.on_message = on_message
        self.running: dict[str, str] = {}  # task label -> what it is doing now
        self.starts: dict[str, int] = {}
        self._last_status = time.monotonic()

    def drain(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                batch = self.queue.get_nowait_batch(max(1, min(self.queue.qsize(), 256)))
            except Empty:
                return
            if not batch:
                return
            for msg in batch:
                self._handle(msg)

    def _handle(self, msg: tuple) -> None:
        label, kind = msg[0], msg[1]
        if kind == "log":
            logging.getLogger(msg[3]).log(msg[2], "[%s] %s", label, msg[4])
        elif kind == "start":
            self.starts[label] = self.starts.get(label, 0) + 1
            if self.starts[label] > 1:
                log.warning("[%s] started again (attempt %d): its last process or node died", label, self.starts[label])
            self.running[label] = "starting"
        elif kind == "status":
            self.running[label] = msg[2]
        if self.on_message is not None:
            self.on_message(label, msg[1:])

    def finished(self, label: str) -> None:
        self.running.pop(label, None)

    def status(self, force: bool = False) -> None:
        """Every STATUS_INTERVAL seconds: one line naming every running task and where it is."""
        if not self.running or not (force or time.monotonic() - self._last_status >= STATUS_INTERVAL):
            return
        self._last_status = time.monotonic()
        log.info("running on Ray: %s", "; ".join(f"{k} {v}" for k, v in sorted(self.running.items())))

    def close(self, ray: Any) -> None:
        self.drain()
        ray.kill(self.queue.actor)


def wait_all(
    ray: Any, refs: dict[Any, str], relay: Relay, on_done: Callable[[str, Any], None]
) -> dict[str, BaseException]:
    """Wait for every task, relaying its messages; ``on_done(label, value)`` as each succeeds. Returns the error of
    each task that failed for good. Interrupted, the driver cancels what is left (finished folds stay)."""
    pending = dict(refs)
    failed: dict[str, BaseException] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            relay.drain()
            for ref in ready:
                label = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failed[label] = exc
                else:
                    relay.drain()
                    on_done(label, value)
                relay.finished(label)
            relay.status()
        relay.drain()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return failed


def raise_failed(failed: dict[str, BaseException], fix: str) -> None:
    """One line for the first task that failed for good (a CompError keeps its exit code; a bug its traceback,
    logged here)."""
    if not failed:
        return
    from comp.training._parallel import WorkerError

    label, exc = next(iter(failed.items()))
    more = f" (and {len(failed) - 1} more task{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CompError):
        err = CompError(f"{label}: {cause}{more}")
        err.exit_code = cause.exit_code
        raise err
    if cause is not None:
        log.error("[%s] failed:\n%s", label, str(exc).rstrip())
        raise RuntimeError(f"the Ray task of {label} failed with an error in comp{more} (traceback above)")
    raise WorkerError(
        f"the Ray task of {label} failed {RETRIES + 1} times ({type(exc).__name__}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}){more}; {fix}"
    )
