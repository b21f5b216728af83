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
_SLOTS: dict[str, Any] = {}  # notebook widget bars by slot ("eff fold 0"), reused epoch after epoch


def plain_lines(interval: float) -> None:
    """In this process, show progress as log lines every ``interval`` seconds, never as live bars.

    Worker processes call it: their lines reach the parent's terminal through its logging, prefixed with the worker.
    """
    global _PLAIN_INTERVAL
    _PLAIN_INTERVAL = interval


def _in_notebook() -> bool:
    """Inside a Jupyter kernel: IPython's running shell has one. A process that merely imported ipykernel (a test
    run, a library that probes for it) is not a notebook."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def _widgets() -> bool:
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def _live() -> bool:
    """Live bars on a terminal, or in a notebook with ipywidgets (a widget updates in place). A notebook without
    them gets the plain lines: tqdm's text bars there write one stream message per redraw (thousands a fold)."""
    if _PLAIN_INTERVAL is not None:
        return False
    try:
        return (_in_notebook() and _widgets()) or (not _in_notebook() and sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


class _NotEpochLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "comp_epoch_line", False)


def notebook_logging() -> None:
    """In a notebook, show comp's INFO lines as plain text (no ``INFO:comp...`` prefix) without the caller
    configuring logging: one handler on the ``comp`` logger only, none when the caller gave it one. Per-epoch
    lines are left to the fold's live table (``EpochBoard``)."""
    logger = logging.getLogger("comp")
    if not _in_notebook() or any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_NotEpochLines())
    handler._comp_notebook = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler the caller adds later would print every line twice


class EpochBoard:
    """In a notebook, one live table per (model, fold), updated in place after every epoch (loss, metric, best,
    images/s, time), and a summary table of every fold when they end: a handful of display messages in all."""

    def __init__(self, metric: str):
        from IPython.display import display

        self.metric, self.display = metric, display
        self.rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.handles: dict[tuple[str, int], Any] = {}
        self.last = time.monotonic()  # folds train one after another here: an epoch began when the last ended
        self.summary: Any = None

    @classmethod
    def maybe(cls, metric: str, enabled: bool) -> EpochBoard | None:
        if not (enabled and _in_notebook() and _PLAIN_INTERVAL is None):
            return None
        try:
            return cls(metric)
        except ImportError:
            return None

    def __call__(self, ev: Any) -> None:
        import pandas as pd
        from IPython.display import HTML

        key = (ev.model_id, ev.fold)
        now = time.monotonic()
        if ev.fold_done:
            self._summarise()
            return
        rows = self.rows.setdefault(key, [])
        since, self.last = self.last, now
        rows.append(
            {
                "epoch": f"{ev.epoch + 1}/{ev.epochs}",
                "loss": ev.loss,
                self.metric: ev.score,
                "best": ev.best_score,
                "img/s": ev.images_per_s,
                "time_s": round(now - since, 1),
            }
        )
        html = HTML(f"<b>{ev.model_id} fold {ev.fold}</b>" + pd.DataFrame(rows).to_html(index=False, border=0))
        handle = self.handles.get(key)
        if handle is not None:
            handle.update(html)
        else:  # display() hands back None where nothing can update in place; a later epoch displays anew
            self.handles[key] = self.display(html, display_id=True)

    def _summarise(self) -> None:
        import pandas as pd
        from IPython.display import HTML

        table = [
            {"model": m, "fold": k, "epochs": len(r), self.metric: r[-1]["best"], "time_s": sum(x["time_s"] for x in r)}
            for (m, k), r in self.rows.items()
        ]
        html = HTML("<b>folds</b>" + pd.DataFrame(table).to_html(index=False, border=0))
        if self.summary is None:
            self.summary = self.display(html, display_id=True)
        else:
            self.summary.update(html)


def _slot_bar(slot: str, total: int | None, desc: str) -> Any:
    """The notebook widget bar of ``slot``, made (and displayed) the first time, reset for every later epoch: one
    widget per fold that stays on screen, instead of one display message per epoch's bar."""
    bar = _SLOTS.get(slot)
    if bar is None:
        from tqdm.notebook import tqdm as notebook_tqdm

        bar = _SLOTS[slot] = notebook_tqdm(total=total, desc=desc, leave=True)
    else:
        bar.reset(total=total)
        bar.set_description(desc, refresh=True)
    return bar


def release_slot(slot: str) -> None:
    """Close the notebook bar of ``slot`` (a fold that ended or failed); it stays on screen as it last was."""
    bar = _SLOTS.pop(slot, None)
    if bar is not None:
        bar.close()


class Progress:
    """``update``/``set_postfix``/``close`` like tqdm, whatever the output is.

    ``slot`` names a bar that successive loops share in a notebook (a fold's epochs): its widget is reused, and
    ``release_slot`` closes it."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        enabled: bool = True,
        interval: float = 30.0,
        leave: bool = False,
        slot: str | None = None,
    ):
        self.total, self.desc, self.n = total, desc, 0
        self.interval, self.postfix = _PLAIN_INTERVAL or interval, ""
        self.bar: Any = None
        self.enabled = enabled
        self.slot = None
        self._last = time.monotonic()
        if enabled and _live():
            if _in_notebook() and slot is not None:
                self.bar, self.slot = _slot_bar(slot, total, desc), slot
                return
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
        if self.bar is not None and self.slot is None:
            self.bar.close()
        elif self.bar is not None:
            self.bar.refresh()  # the slot's widget stays for the next loop; show where this one ended

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
