"""The ledger: ``RUNS/ledger.csv`` (runs and blends) and ``RUNS/ledger-submissions.csv`` (submissions and
uploads), rebuilt from the run folders on every call.

CSV rather than SQLite: the ledger is a view of the run folders, not a store of its own, so each call rewrites
it whole; a whole-file rewrite is what an atomic rename does best, and a CSV opens in a spreadsheet, in pandas
and in a diff. Two processes rebuilding at once take turns on a lock file; a reader sees the old file or the
new one, never half of either. Deleting it loses nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from filelock import FileLock

from comp.ledger._collect import collect, run_folders
from comp.run import write_csv

RUNS_FILE = "ledger.csv"
SUBMISSIONS_FILE = "ledger-submissions.csv"


def ledger_paths(runs_dir: str | Path) -> tuple[Path, Path]:
    root = Path(runs_dir)
    return root / RUNS_FILE, root / SUBMISSIONS_FILE


def rebuild(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every run folder and write both ledger files atomically; returns (runs, submissions)."""
    runs_path, subs_path = ledger_paths(runs_dir)
    run_folders(runs_dir)  # a missing runs folder is an error, not something the lock file creates
    with FileLock(str(Path(runs_dir) / ".ledger.lock"), timeout=120):
        runs, subs = collect(runs_dir)
        write_csv(runs_path, runs)
        write_csv(subs_path, subs)
    return runs, subs


def runs(runs_dir: str | Path = "runs", *, sync: bool = False, competition: str | None = None) -> pd.DataFrame:
    """Every run and blend under ``runs_dir`` as a DataFrame (one row per run and model): when, task, metric,
    folds done, CV and fold std, the config keys that differ from the first run, wall time, submissions and
    the latest public/private leaderboard scores. ``sync`` first fetches the scores from Kaggle.

    Example::

        table = comp.runs("runs")
        table.sort_values("cv").tail()
    """
    if sync:
        from comp.ledger._sync import sync_scores

        sync_scores(runs_dir, competition=competition)
    return rebuild(runs_dir)[0]


def submissions(runs_dir: str | Path = "runs") -> pd.DataFrame:
    """Every submission file written from a run under ``runs_dir``, one row per upload (scores where known)."""
    return rebuild(runs_dir)[1]
