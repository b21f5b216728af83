"""Sets of files committed together (:class:`FileSet`), and finishing the commits of killed writers without
trusting what their journals say (:func:`recover`).

A journal lies in a folder comp does not own alone: a run folder may be downloaded, shared with other users
or boxes, or written by another comp process right now. So a journal is read, never obeyed:

- only a dead writer's journal is finished: one of this host whose pid is gone, or one of another host
  (whose processes cannot be checked) older than an hour; a live writer finishes its own;
- each rename must move a comp-named temporary (``.<target>.<host>-<pid>.<random>.tmp``, a regular file, not a
  link) onto the target it was named for, in the same folder;
- that folder must be the journal's own or below it, or hold the journal's witness: the copy ``FileSet``
  writes beside a target outside its root (predict's submission) before the journal itself.

A journal that asks for anything else is left alone and named in a warning; none of its renames run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from comp._files import write_error
from comp.errors import RunFolderError
from comp.run import _io
from comp.run._io import _OLD_TMP_NAME, _TMP_NAME, _host_tag, _temporary_beside, _writer_gone, write_json

log = logging.getLogger(__name__)
JOURNAL_PREFIX = ".commit-"
WITNESS_PREFIX = ".witness-"
JOURNAL_FORMAT = "comp.commit/2"
OTHER_HOST_AFTER_S = 3600.0  # a commit takes milliseconds: another box's journal this old is a dead writer's


def witness_name(journal_name: str) -> str:
    """``.commit-<pid>-<ns>.json`` -> ``.witness-<pid>-<ns>.json``: never read as a journal itself."""
    return WITNESS_PREFIX + journal_name[len(JOURNAL_PREFIX) :]


class FileSet:
    """Files that belong together (a model's test.csv and oof_tta.csv and the submission; a blend's tables and
    metrics; a report's figures) are committed as one unit.

    Every file is first written completely to a temporary beside its target; nothing is renamed until all
    of them exist. Then a journal listing the renames, and naming this host and process, is written
    atomically in ``root``, the renames run, and the journal is deleted. A process killed during the renames
    leaves the journal behind, and :func:`recover` (called by every reader of a run folder) finishes them once
    the writer is dead, so a reader sees either the whole old set or the whole new one, never a mix. Killed
    before the journal: only temporaries remain, which :func:`~comp.run._io.clean_temporaries` removes.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)

    def add(self, path: str | Path, write: Callable[[Path], Any]) -> Path:
        """Write ``path``'s content now, to a temporary; it replaces ``path`` at :meth:`commit`."""
        path = Path(path)
        tmp = _temporary_beside(path)
        try:
            write(tmp)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            self.discard()
            found = write_error(path, exc) if isinstance(exc, (OSError, RuntimeError)) else None
            if found is not None:  # a full disk, quota or unwritable folder: one line, nothing half-written
                raise found from None
            raise
        self._staged.append((tmp, path))
        return path

    def csv(self, path: str | Path, df: pd.DataFrame) -> Path:
        return self.add(path, lambda p: _io.to_csv(df, p, Path(path).name))

    def json(self, path: str | Path, obj: Any) -> Path:
        return self.add(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))

    def text(self, path: str | Path, text: str) -> Path:
        return self.add(path, lambda p: p.write_text(text))

    def discard(self) -> None:
        """Drop every staged temporary (nothing was committed)."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()

    def commit(self) -> list[Path]:
        """Rename every staged file into place, as one unit (see the class docstring). A staged file that
        vanished (removed by someone else) fails the commit, before anything is renamed if it can."""
        if not self._staged:
            return []
        gone = [(t, p) for t, p in self._staged if not t.is_file()]
        if gone:
            self.discard()
            raise RunFolderError(
                f"the staged file for {gone[0][1]} ({gone[0][0]}) vanished before the commit (another process "
                "removed it); nothing was committed; run the command again"
            )
        moves = [[str(t.resolve()), str(p.parent.resolve() / p.name)] for t, p in self._staged]
        name = f"{JOURNAL_PREFIX}{os.getpid()}-{time.time_ns()}.json"
        journal = self.root / name
        record = {
            "format": JOURNAL_FORMAT,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "journal": str(journal.resolve()),
            "moves": moves,
        }
        root = self.root.resolve()
        outside = sorted({Path(t).parent for _, t in moves if not Path(t).parent.is_relative_to(root)})
        witnesses = []
        for folder in outside:  # before the journal: recovery finds the witness whenever it finds the journal
            drop_stale_witnesses(folder)
            _io.clean_temporaries(folder)
            witnesses.append(write_json(folder / witness_name(name), record))
        write_json(journal, record)
        try:
            _io._apply(moves)  # looked up on the module, so a test can stop a commit half-way
        except FileNotFoundError as exc:
            raise RunFolderError(
                f"{exc.filename} vanished while its set was being committed (another process removed it); "
                f"the set in {self.root} is incomplete; run the command again"
            ) from None
        journal.unlink(missing_ok=True)
        for w in witnesses:
            w.unlink(missing_ok=True)
        done = [p for _, p in self._staged]
        self._staged.clear()
        return done

    def __enter__(self) -> FileSet:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


# ---------------------------------------------------------------- recovery


def read_record(path: Path) -> Any:
    """A journal's or witness's content, or None when it is not a regular file or not JSON (being written)."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def writer_state(record: Any, path: Path) -> tuple[list[Any], str | None]:
    """(its renames, None) for a journal that may be finished now; else ([], why not): "live" while its writer
    runs, or what is wrong with it."""
    if isinstance(record, list):  # written before journals named their writer; its renames are checked all the same
        return record, None
    if (
        not isinstance(record, dict)
        or record.get("format") != JOURNAL_FORMAT
        or not isinstance(record.get("moves"), list)
    ):
        return [], "it is not a comp commit journal"
    host, pid = record.get("host"), record.get("pid")
    if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return [], "it does not name its writer"
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return [], "live"  # gone meanwhile: its writer (or another recovery) finished it
    if not _writer_gone(_host_tag(host), str(pid), mtime, OTHER_HOST_AFTER_S):
        return [], "live"
    return record["moves"], None


def _move_problem(move: Any, root: Path, journal: Path, record: Any) -> str | None:
    """Why one rename of a journal may not run (None: it may, or its temporary is already gone)."""
    if not (isinstance(move, list) and len(move) == 2 and all(isinstance(m, str) and os.path.isabs(m) for m in move)):
        return f"{move!r} is not a pair of absolute paths"
    tmp, target = Path(move[0]), Path(move[1])
    named = _TMP_NAME.match(tmp.name) or _OLD_TMP_NAME.match(tmp.name)
    if named is None or named["name"] != target.name:
        return f"{tmp} is not a comp temporary of {target.name}"
    try:
        st = tmp.lstat()
    except FileNotFoundError:
        return None  # renamed already (by the writer, or an earlier interrupted recovery): nothing to do
    except OSError as exc:
        return f"{tmp} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return f"{tmp} is not a regular file"
    folder = tmp.parent.resolve()
    if target.parent.resolve() != folder:
        return f"{tmp} and {target} are in different folders"
    if folder.is_relative_to(root):
        return None
    if isinstance(record, dict) and read_record(folder / witness_name(journal.name)) == record:
        return None
    return f"it would replace {target}, outside {root}, and that folder holds no witness of the journal"


def _finish(moves: list[list[str]]) -> None:
    """Rename what is still staged; a temporary gone meanwhile (another recovery took it) is skipped."""
    for tmp, target in moves:
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            continue


def recover(root: str | Path) -> int:
    """Finish the renames of any set a killed process left half-committed in ``root``; returns how many.
    Journals of live writers are left to them; a journal that asks for a rename comp would not do is left
    alone with a warning (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        return 0
    resolved = root.resolve()
    n = 0
    for journal in sorted(root.glob(f"{JOURNAL_PREFIX}*.json")):
        record = read_record(journal)
        if record is None:
            continue  # still being written: its renames never started
        moves, why = writer_state(record, journal)
        if why == "live":
            continue
        if why is None:
            why = next((p for m in moves if (p := _move_problem(m, resolved, journal, record)) is not None), None)
        if why is not None:
            log.warning(
                "ignored the commit journal %s: %s; delete it if no comp command is writing there", journal, why
            )
            continue
        _finish(moves)
        journal.unlink(missing_ok=True)
        for folder in {Path(target).parent for _, target in moves}:
            if not folder.resolve().is_relative_to(resolved):
                (folder / witness_name(journal.name)).unlink(missing_ok=True)
        n += 1
    return n


def drop_stale_witnesses(folder: str | Path) -> int:
    """Remove the witnesses in ``folder`` of dead writers whose journal is gone (finished, or never written
    because the writer died first); returns how many. A witness renames nothing by itself."""
    n = 0
    for w in Path(folder).glob(f"{WITNESS_PREFIX}*.json"):
        record = read_record(w)
        if not isinstance(record, dict) or not isinstance(record.get("journal"), str):
            continue
        _, why = writer_state(record, w)
        if why is None and not os.path.lexists(record["journal"]):
            w.unlink(missing_ok=True)
            n += 1
    return n
