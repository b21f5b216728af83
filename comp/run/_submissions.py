"""``RUN/submissions.json``: every submission file written from a run, its uploads and their leaderboard scores.

The run folder holds everything the runs ledger shows, so the ledger can always be rebuilt from run folders.
Several processes may add to one file (a predict and a submit at once): each change is a read-modify-write under
a lock file, and the file itself is replaced atomically, so a reader never sees half of it.

Format ``comp.submissions/1``::

    {"format": "comp.submissions/1",
     "submissions": [{"file": "demo.csv", "path": "/abs/submissions/demo.csv", "sha256": "...",
                      "time": "2026-01-02T03:04:05+00:00", "kind": "predict", "models": ["byobnet", "effnet"],
                      "uploads": [{"competition": "digits", "message": "...", "time": "...",
                                   "ref": null, "status": null, "public": null, "private": null}]}]}
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from comp.errors import RunFolderError
from comp.run._io import read_json, write_json

FILE = "submissions.json"
FORMAT = "comp.submissions/1"
LOCK_TIMEOUT_S = 60.0


def now() -> str:
    """The current time as ISO 8601 in UTC (what every record stores)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def submissions_path(run_root: str | Path) -> Path:
    return Path(run_root) / FILE


def read_submissions(run_root: str | Path) -> list[dict[str, Any]]:
    """The run's submission records (empty when it has none)."""
    path = submissions_path(run_root)
    if not path.is_file():
        return []
    obj = read_json(path, "submission records")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("submissions"), list):
        raise RunFolderError(f"{path} is not a comp submission record ({FORMAT}); move it aside")
    return obj["submissions"]


def update_submissions(run_root: str | Path, change: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Apply ``change`` to the run's records under the run's lock and write them back atomically."""
    path = submissions_path(run_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{FILE}.lock")), timeout=LOCK_TIMEOUT_S):
        records = read_submissions(run_root)
        change(records)
        write_json(path, {"format": FORMAT, "submissions": records})
    return records
