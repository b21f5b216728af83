"""An in-process stand-in for the part of Ray's API that comp uses, so the driver's and the tasks' code run in the
default test suite without starting a cluster (tests/test_ray.py also runs the real thing, on request).

Tasks run when submitted, one after the other, in this process, with the logging, progress mode and torch threads
they change restored afterwards. A task that raises ``Died`` is run again up to ``max_retries`` times, as Ray reruns
a task whose process died; after that its result is a ``WorkerCrashedError``.
"""

from __future__ import annotations

import logging
import types
from contextlib import contextmanager
from typing import Any

import torch

import comp._progress


class Died(Exception):
    """A task's process "died" (what os._exit does to a real Ray worker)."""


class RayError(Exception):
    pass


class RayTaskError(RayError):
    def __init__(self, cause: BaseException):
        super().__init__(f"task raised {type(cause).__name__}: {cause}")
        self.cause = cause


class WorkerCrashedError(RayError):
    def __init__(self) -> None:
        super().__init__("The worker died unexpectedly while executing this task.")


class Empty(Exception):
    pass


class Ref:
    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error


class Queue:
    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        self.items: list = []
        self.actor = object()

    def put(self, item: Any) -> None:
        self.items.append(item)

    def qsize(self) -> int:
        return len(self.items)

    def get_nowait_batch(self, n: int) -> list:
        if not self.items:
            raise Empty
        out, self.items = self.items[:n], self.items[n:]
        return out


@contextmanager
def _isolated():
    names = ("comp", "py.warnings")
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in map(logging.getLogger, names)]
    threads, plain = torch.get_num_threads(), comp._progress._PLAIN_INTERVAL
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers, lg.level, lg.propagate = handlers, level, propagate
        logging.captureWarnings(False)
        torch.set_num_threads(threads)
        comp._progress._PLAIN_INTERVAL = plain


class Remote:
    def __init__(self, fn, opts: dict | None = None):
        self.fn, self.opts = fn, opts or {}

    def options(self, **opts: Any) -> Remote:
        return Remote(self.fn, opts)

    def remote(self, *args: Any) -> Ref:
        args = tuple(a.value if isinstance(a, Ref) else a for a in args)  # Ray passes top-level refs' values
        for _ in range(self.opts.get("max_retries", 3) + 1):
            with _isolated():
                try:
                    return Ref(self.fn(*args))
                except Died:
                    continue
                except Exception as exc:
                    return Ref(error=RayTaskError(exc))
        return Ref(error=WorkerCrashedError())


def module(cpus: int = 2) -> dict[str, types.ModuleType]:
    """``sys.modules`` entries for ray, ray.util, ray.util.queue and ray.exceptions."""
    ray = types.ModuleType("ray")
    exceptions = types.ModuleType("ray.exceptions")
    exceptions.RayError, exceptions.RayTaskError = RayError, RayTaskError  # type: ignore[attr-defined]
    exceptions.WorkerCrashedError = WorkerCrashedError  # type: ignore[attr-defined]
    util = types.ModuleType("ray.util")
    queue = types.ModuleType("ray.util.queue")
    queue.Queue, queue.Empty = Queue, Empty  # type: ignore[attr-defined]
    util.queue = queue  # type: ignore[attr-defined]

    def get(ref: Ref) -> Any:
        if ref.error is not None:
            raise ref.error
        return ref.value

    ray.__dict__.update(
        exceptions=exceptions,
        util=util,
        is_initialized=lambda: True,
        nodes=lambda: [{"Alive": True, "Resources": {"CPU": float(cpus)}}],
        remote=Remote,
        put=lambda value: Ref(value),
        get=get,
        wait=lambda refs, num_returns=1, timeout=None: (refs[:num_returns], refs[num_returns:]),
        cancel=lambda ref, force=False: None,
        kill=lambda actor: None,
    )
    return {"ray": ray, "ray.exceptions": exceptions, "ray.util": util, "ray.util.queue": queue}
