"""The last day: runs (the ledger of runs, blends, submissions and leaderboard scores)."""

from __future__ import annotations

import math
from pathlib import Path

import click

from comp.cli._base import main, setup_logging


def _rows(df, columns: list[str]) -> list[dict]:
    rows = []
    for rec in df.to_dict("records"):
        row = {}
        for c in columns:
            v = rec.get(c)
            row[c] = None if isinstance(v, float) and math.isnan(v) else v
        rows.append(row)
    return rows


@main.command("runs")
@click.argument("runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), required=False)
@click.option("--sync", is_flag=True, help="First fetch the leaderboard scores of past uploads from Kaggle.")
@click.option("--competition", default=None, help="With --sync: the competition slug [default: those recorded].")
@click.option("--plot", is_flag=True, help="Draw CV against public score with their correlation (a PNG).")
@click.option("--quiet", is_flag=True, help="Only the file paths.")
def runs_cmd(runs_dir, sync, competition, plot, quiet):
    """One table of every run and blend under RUNS_DIR: CV, fold std, changed keys, wall time, submissions and
    leaderboard scores; written to RUNS_DIR/ledger.csv (rebuilt from the run folders each time).

    Example: comp runs runs
    """
    from comp._tables import format_table
    from comp.ledger import PLOT_FILE, ledger_paths, plot_cv_public, rebuild, sync_scores

    setup_logging(quiet)
    if sync:
        n = sync_scores(runs_dir, competition=competition)
        click.echo(f"synced: {n} upload(s) with a leaderboard status")
    elif competition:
        raise click.UsageError("--competition is for --sync")
    table, subs = rebuild(runs_dir)
    if not quiet:
        shown = table.assign(when=table["when"].str.slice(0, 16).str.replace("T", " "))
        shown["changed"] = shown["changed"].fillna("").str.slice(0, 60)
        cols = [
            "when",
            "run",
            "model",
            "kind",
            "folds",
            "cv",
            "fold_std",
            "wall_s",
            "submissions",
            "public",
            "private",
            "changed",
        ]
        click.echo(format_table(_rows(shown, cols), cols) if len(shown) else f"no run folders under {runs_dir}")
        if len(subs):
            cols = ["written", "run", "file", "cv", "competition", "uploaded", "status", "public", "private"]
            click.echo("")
            click.echo(format_table(_rows(subs, cols), cols))
    runs_file, subs_file = ledger_paths(runs_dir)
    click.echo(f"ledger: {runs_file}  submissions: {subs_file}")
    if plot:
        path, pearson, spearman = plot_cv_public(subs, Path(runs_dir) / PLOT_FILE)
        click.echo(f"CV vs public: Pearson r {pearson:.3f}, Spearman rho {spearman:.3f}; plot: {path}")
