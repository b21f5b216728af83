"""Progress for long loops: a live bar on a terminal or in a notebook, occasional plain log lines otherwise.

A run piped to a file gets one line every ``interval`` seconds instead of redrawn bars (a 25-minute
train-folds once left ~100 kB of them). ``enabled=False`` (``--quiet``) shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("comp")
T = TypeVar("T")
_PLAIN_INTERVAL: float | None = None  # set in worker processes: bars of several processes on one terminal garble


def plain_lines(interval: float) -> None:
    """In this process, show progress as log lines every ``interval`` seconds, never as live bars.

    Worker processes call it: their lines reach the parent's terminal through its logging, prefixed with the worker.
    """
    global _PLAIN_INTERVAL
    _PLAIN_INTERVAL = interval


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _live() -> bool:
    if _PLAIN_INTERVAL is not None:
        return False
    try:
        return _in_notebook() or sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """``update``/``set_postfix``/``close`` like tqdm, whatever the output is."""

    def __init__(
        self, total: int | None, desc: str, *, enabled: bool = True, interval: float = 30.0, leave: bool = False
    ):
        self.total, self.desc, self.n = total, desc, 0
        self.interval, self.postfix = _PLAIN_INTERVAL or interval, ""
        self.bar: Any = None
        self.enabled = enabled
        self._last = time.monotonic()
        if enabled and _live():
            if _in_notebook():
                from tqdm.auto import tqdm
            else:
                from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=leave, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            of = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s%s", self.desc, self.n, of, f" ({self.postfix})" if self.postfix else "")

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], desc: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Iterate with progress (see :class:`Progress`)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.update(1)
