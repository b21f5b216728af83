"""One worker process per device on one box, for ``train_folds(devices=...)`` and ``tune(devices=...)``.

Nothing is scheduled here: workers take work through the run folder's fold locks or the study's storage,
exactly as processes on other boxes do, so a box with four GPUs and four boxes with one GPU behave alike.
Each worker is a fresh (spawned) process pinned to its device with a fair share of the CPU threads. It
sends its log lines and results through a pipe of its own (no lock shared between workers, so a killed
worker cannot wedge the others) and the parent re-emits them on its logging, prefixed with the worker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from comp.errors import CompError

log = logging.getLogger(__name__)
Send = Callable[[tuple], None]

# seconds between a worker's plain progress lines (its live bars would garble with the other workers')
PROGRESS_INTERVAL = 10.0


def resolve_devices(spec: str | Sequence[str | int]) -> list[str]:
    """``"0,1"`` or ``[0, 1]`` -> cuda:0, cuda:1; ``"all"`` -> every visible GPU; ``"cpu,cpu"`` -> two CPU workers."""
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = spec if isinstance(spec, str) else ",".join(map(str, spec))
    if text.strip() == "all":
        if not n_gpu:
            raise CompError(
                "--devices all: no CUDA device is visible; list CPU workers instead, e.g. --devices cpu,cpu"
            )
        return [f"cuda:{i}" for i in range(n_gpu)]
    items = [p.strip() for p in text.split(",") if p.strip()]
    if not items:
        raise CompError(f"--devices needs a list such as 0,1 or cpu,cpu or all, got {text!r}")
    out = []
    for item in items:
        index = item[5:] if item.startswith("cuda:") else item
        if item == "cpu":
            out.append("cpu")
        elif index.isdigit():
            if int(index) >= n_gpu:
                seen = f"{n_gpu} CUDA device{'s' if n_gpu != 1 else ''} visible" + (
                    f" (0..{n_gpu - 1})" if n_gpu else ""
                )
                raise CompError(f"--devices {text}: there is no GPU {index} ({seen}); use --devices all, or cpu,cpu")
            out.append(f"cuda:{int(index)}")
        else:
            raise CompError(f"--devices {text}: {item!r} is not a GPU index (0, 1, cuda:1) or cpu")
    return out


def threads_per_worker(n_workers: int) -> int:
    """A fair share of this process's CPU cores for each of ``n_workers`` workers (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // n_workers)


@dataclass
class WorkerExit:
    """How a worker ended: ``error`` is a CompError's line (``user_error``) or a bug's traceback."""

    index: int
    name: str
    exitcode: int | None
    error: str | None = None
    user_error: bool = False
    error_exit_code: int = 1

    @property
    def ok(self) -> bool:
        return self.exitcode == 0 and self.error is None

    def describe(self) -> str:
        if self.error is not None:
            return self.error.strip().splitlines()[-1] if not self.user_error else self.error
        code = self.exitcode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"


# ---------------------------------------------------------------- the worker's side


class _PipeHandler(logging.Handler):
    def __init__(self, send: Send):
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.levelno, record.name, self.format(record)))
        except Exception:  # a log line must never take the worker down
            self.handleError(record)


def relay_logging(send: Send, level: int) -> None:
    """In a worker: comp's log lines and warnings go to ``send`` as ("log", level, logger, text) for the parent
    to re-emit, and progress becomes plain lines every PROGRESS_INTERVAL seconds (live bars would garble)."""
    from comp._progress import plain_lines

    handler = _PipeHandler(send)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("comp", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.captureWarnings(True)
    plain_lines(PROGRESS_INTERVAL)


def _child(
    target: Callable[[Any, str, Send], None], payload: Any, conn: Connection, device: str, threads: int, level: int
) -> None:
    import torch

    lock = threading.Lock()  # Connection.send is not thread-safe (Optuna's heartbeat thread also logs)

    def send(msg: tuple) -> None:
        with lock:
            conn.send(msg)

    relay_logging(send, level)
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    code = 0
    try:
        target(payload, device, send)
    except CompError as exc:
        send(("error", True, exc.exit_code, str(exc)))
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # a bug: its traceback goes to the parent, which logs it
        send(("error", False, 1, traceback.format_exc()))
        code = 1
    finally:
        conn.close()
    sys.exit(code)


# ---------------------------------------------------------------- the parent's side


def worker_name(index: int, device: str) -> str:
    return f"w{index} {device}"


def run_workers(
    target: Callable[[Any, str, Send], None],
    payloads: Sequence[Any],
    devices: Sequence[str],
    *,
    on_message: Callable[[int, tuple], None] | None = None,
    on_exit: Callable[[WorkerExit], None] | None = None,
) -> list[WorkerExit]:
    """Run ``target(payload, device, send)`` in one spawned process per device and wait for all of them.

    Log lines come back prefixed with the worker; other messages go to ``on_message(index, msg)``; ``on_exit``
    hears of each worker as it ends (the others go on). If the parent is interrupted, or ``on_message`` raises,
    the workers are terminated (their folds stay resumable) and the exception propagates.
    """
    ctx = mp.get_context("spawn")  # fork would copy the parent's CUDA context and threads
    threads = threads_per_worker(len(devices))
    level = logging.getLogger("comp").getEffectiveLevel()
    names = [worker_name(i, d) for i, d in enumerate(devices)]
    procs: list[Any] = []
    conns: dict[Connection, int] = {}
    exits: dict[int, WorkerExit] = {}
    try:
        for i, (payload, device) in enumerate(zip(payloads, devices)):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_child, args=(target, payload, writer, device, threads, level), name=f"comp-{names[i]}"
            )
            proc.start()
            writer.close()
            procs.append(proc)
            conns[reader] = i
            exits[i] = WorkerExit(i, names[i], None)
        log.info(
            "%d workers (%s), %d CPU thread%s each", len(devices), ", ".join(names), threads, "s" if threads > 1 else ""
        )
        while conns:
            for reader in wait(list(conns), timeout=1.0):  # type: ignore[assignment]
                i = conns[reader]
                try:
                    msg = reader.recv()
                except (EOFError, OSError):  # the worker ended (or died): its pipe closed
                    del conns[reader]
                    reader.close()
                    procs[i].join()
                    exits[i].exitcode = procs[i].exitcode
                    if on_exit is not None:
                        on_exit(exits[i])
                    continue
                if msg[0] == "log":
                    logging.getLogger(msg[2]).log(msg[1], "[%s] %s", names[i], msg[3])
                elif msg[0] == "error":
                    exits[i].user_error, exits[i].error_exit_code, exits[i].error = msg[1], msg[2], msg[3]
                    if not msg[1]:
                        log.error("[%s] failed:\n%s", names[i], msg[3].rstrip())
                elif on_message is not None:
                    on_message(i, msg)
    except BaseException:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    return [exits[i] for i in range(len(procs))]


class WorkerError(CompError):
    """A worker process died or failed; what the other workers finished is kept."""

    exit_code = 1


def raise_failures(exits: Sequence[WorkerExit], what: Callable[[WorkerExit], str], fix: str) -> None:
    """One line for the first failed worker (and how many others failed); nothing when all succeeded.

    A CompError in a worker keeps its exit code; a bug's traceback was logged when it arrived.
    """
    failed = [e for e in exits if not e.ok]
    if not failed:
        return
    first = failed[0]
    more = f" (and {len(failed) - 1} more worker{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    if first.user_error:
        err = CompError(f"worker {first.name}: {first.error}{more}")
        err.exit_code = first.error_exit_code
        raise err
    if first.error is not None:
        raise RuntimeError(
            f"worker {first.name} failed with an error in comp{more}: {first.describe()} (traceback above)"
        )
    raise WorkerError(f"worker {first.name} {first.describe()}{what(first)}{more}; {fix}")
