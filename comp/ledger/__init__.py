"""The runs ledger: every run, blend and submission under a runs folder in one table, leaderboard scores fetched
from Kaggle, and CV against the public score."""

from comp.ledger._collect import RUN_COLUMNS, SUBMISSION_COLUMNS, collect, run_folders
from comp.ledger._ledger import ledger_paths, rebuild, runs, submissions
from comp.ledger._plot import PLOT_FILE, correlation, plot_cv_public
from comp.ledger._sync import sync_scores

__all__ = [
    "PLOT_FILE",
    "RUN_COLUMNS",
    "SUBMISSION_COLUMNS",
    "collect",
    "correlation",
    "ledger_paths",
    "plot_cv_public",
    "rebuild",
    "run_folders",
    "runs",
    "submissions",
    "sync_scores",
]
