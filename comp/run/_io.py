"""Atomic writes, strict CSV reading and lock files: the primitives every artifact writer goes through.

A killed process never leaves a half-written file that looks complete: each write goes to a temporary
file in the same folder and is renamed over the target. Temporaries are named
``.<name>.<host>-<pid>.<random>.tmp`` after their target and their writer; :func:`clean_temporaries` removes
those of dead writers, one folder at a time, and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp._files import file_mode, file_problem, write_error
from comp.errors import CompError, DataError, RunFolderError

TMP_SUFFIX = ".tmp"


def _unwritable(path: Path, exc: OSError) -> CompError:
    found = write_error(path, exc)
    if found is not None:
        return found
    return CompError(f"cannot write {path} ({exc.strerror or type(exc).__name__}); choose a writable location")


def _host_tag(host: str | None = None) -> str:
    """8 hex digits naming a host in temporary names (a shared run folder may be written by several boxes)."""
    return hashlib.sha256((host or socket.gethostname()).encode()).hexdigest()[:8]


# .<target name>.<host tag>-<pid>.<mkstemp's 8 random characters>.tmp: whose it is, and for which target
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)\.(?P<rand>[a-z0-9_]{8})\.tmp$")
_OLD_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<rand>[a-z0-9_]{8})\.tmp$")  # written before the owner was named


def _temporary_beside(path: Path) -> Path:
    """An empty temporary file in ``path``'s folder (created if needed), named after its target and this
    process (so :func:`clean_temporaries` never takes a live writer's), with the mode a plain new file gets
    under the umask (mkstemp's 0600 would lock out other users of a shared run folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent
        )
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    return Path(tmp)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks: binds graphs to checkpoints and runs to the files they learned from."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Every writer of comp goes through this (CSVs, JSON, checkpoints, ONNX graphs, figures), so a reader
    never sees a partial file. A folder that cannot be created or written is a one-line CompError.
    """
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        found = write_error(path, exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if found is not None:  # a full disk, quota, read-only or unwritable folder: one line, no traceback
            raise found from None
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write JSON (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


CSV_BAR_ROWS = 100_000  # from this many rows a CSV takes seconds to write (500k x 10 floats: ~15 s): show it
CSV_CHUNK = 50_000


def to_csv(df: pd.DataFrame, path: str | Path, what: str = "") -> None:
    """``df.to_csv(path, index=False)``; a long table is written in chunks of rows behind a progress bar (the
    same bytes: pandas formats each row alone)."""
    if len(df) < CSV_BAR_ROWS:
        df.to_csv(path, index=False)
        return
    from comp._progress import Progress

    with open(path, "w", newline="") as f, Progress(len(df), f"writing {what or Path(path).name} (rows)") as bar:
        for lo in range(0, len(df), CSV_CHUNK):
            df.iloc[lo : lo + CSV_CHUNK].to_csv(f, index=False, header=lo == 0)
            bar.update(min(CSV_CHUNK, len(df) - lo))


def write_csv(path: str | Path, df: pd.DataFrame) -> Path:
    """Atomically write a CSV without the index."""
    return atomic_write(path, lambda p: to_csv(df, p, Path(path).name))


def torch_save(path: str | Path, obj: Any) -> Path:
    """Atomically ``torch.save`` an object."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def save_figure(path: str | Path, fig: Any, dpi: int = 90) -> Path:
    """Atomically save a matplotlib Figure as PNG and free it."""
    out = atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    fig.clf()
    return out


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read JSON with one-line errors for a missing or corrupt file."""
    path = Path(path)
    problem = file_problem(path)
    if problem and problem != "not found":
        raise RunFolderError(f"{what} {path} {problem}; regenerate it")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{what} {path} not found") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{what} {path} is unreadable ({type(exc).__name__}); regenerate it") from None


def read_table(path: str | Path, what: str, *, allow_empty: bool = False) -> pd.DataFrame:
    """Read a CSV with every cell as a string: ids and labels such as 'NA', 'null' or 'nan' stay strings
    (only a truly empty cell is missing), so every reader of every artifact sees the same values."""
    path = Path(path)
    problem = file_problem(path)  # a FIFO would block the reader forever, a device never end
    if problem:
        raise DataError(f"{what} {path} {problem}; set the right path")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {path} is empty; it needs a header row and at least one data row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{what} {path} is not a readable CSV: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    if df.empty and not allow_empty:
        raise DataError(f"{what} {path} has a header but no rows; add data rows")
    return df


def read_numeric_table(path: str | Path, what: str, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a table whose columns other than ``text_columns`` hold numbers, parsed as float64 while reading.

    Values equal :func:`read_table`'s after ``pd.to_numeric`` (the same parser, checked bit for bit by a test)
    at a fraction of the memory and time: 100k rows of 10 probabilities hold 1M Python strings as text. A table
    with anything but finite numbers there is read again as text, so its error names the line and the cell."""
    path = Path(path)
    if file_problem(path) is None:
        try:
            header = pd.read_csv(path, nrows=0, dtype=str).columns
            dtypes = {c: (str if c in text_columns else np.float64) for c in header}
            if not header.duplicated().any():
                df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
                numbers = df[[c for c in header if c not in text_columns]].to_numpy(np.float64)
                if len(df) and np.isfinite(numbers).all():
                    return df
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OSError):
            pass  # read as text below: its message says what is wrong and where
    return read_table(path, what)


def _writer_gone(host: str, pid: str, mtime: float, other_host_after_s: float) -> bool:
    """Whether the process that named a temporary or journal is gone: on this host, its pid is not alive; on
    another (whose processes cannot be checked), the file is older than ``other_host_after_s``."""
    if host == _host_tag():
        return int(pid) != os.getpid() and not pid_alive(pid)
    return time.time() - mtime > other_host_after_s


def clean_temporaries(folder: str | Path, older_than_s: float = 3600.0) -> int:
    """Remove the temporaries of killed writes in ``folder`` (not below it); returns how many.

    Only files named by comp's exact temporary pattern are candidates, and only a dead writer's: one of this
    host whose pid is gone, one of another host older than a day, or (the pattern before writers were named)
    one older than ``older_than_s``. A live writer's staged files, a user's ``.draft.tmp`` and anything in a
    subfolder are never touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.glob(f".*{TMP_SUFFIX}"):
        named = _TMP_NAME.match(p.name)
        try:
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            if named is not None:
                gone = _writer_gone(named["host"], named["pid"], st.st_mtime, max(older_than_s, 86400.0))
            else:
                gone = _OLD_TMP_NAME.match(p.name) is not None and time.time() - st.st_mtime > older_than_s
            if gone:
                p.unlink()
                n += 1
        except OSError:
            continue
    return n


# ---------------------------------------------------------------- locks


def pid_alive(pid: object) -> bool:
    """Whether a process with this id exists on this machine (another user's process counts)."""
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    return True


class LockHeld(RunFolderError):
    """A lock held by a live process, or by another host: that work is someone else's right now."""


def _holder(path: Path) -> dict[str, Any]:
    try:
        held = json.loads(path.read_text() or "{}")
        return held if isinstance(held, dict) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold ``path`` as a lock file (O_EXCL create) while the block runs: two processes or machines sharing
    a run folder never train the same fold. A lock left by a dead process on this host is taken over; one
    held by a live process, or by another host (whose processes cannot be checked), is a CompError naming it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(path)
            if held.get("host") == me["host"] and not pid_alive(held.get("pid")):
                # stale: move it aside, and only drop it if what we moved is still that dead holder's lock
                aside = path.with_name(f".{path.name}.{os.getpid()}.stale")
                try:
                    os.replace(path, aside)
                except FileNotFoundError:
                    continue
                if _holder(aside).get("pid") != held.get("pid"):
                    os.replace(aside, path)  # a live process took it meanwhile: put its lock back
                else:
                    aside.unlink(missing_ok=True)
                continue
            who = f"pid {held.get('pid', '?')} on {held.get('host', '?')} since {held.get('since', '?')}"
            raise LockHeld(
                f"{what} is being trained by {who} (lock {path}); train other --folds, "
                f"or delete {path} if that run is dead"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(me))
        break
    else:
        raise RunFolderError(f"could not take the lock {path} for {what}; delete it if no run is training that fold")
    try:
        yield
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- sets of files committed together


def _apply(moves: list[list[str]]) -> None:
    """Rename each staged temporary of a committing :class:`~comp.run._journal.FileSet` over its target; a
    missing one raises FileNotFoundError."""
    for tmp, target in moves:
        os.replace(tmp, target)
