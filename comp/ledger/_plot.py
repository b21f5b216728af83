"""``comp runs --plot``: CV against the public leaderboard score of every scored submission, with their
correlation, so a competitor sees whether CV tracks the leaderboard before choosing final submissions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from comp.errors import CompError
from comp.run import save_figure

PLOT_FILE = "ledger-cv-vs-public.png"


def correlation(subs: pd.DataFrame) -> tuple[pd.DataFrame, float, float]:
    """(the scored rows with a CV, Pearson r, Spearman rho)."""
    scored = subs.dropna(subset=["cv", "public"]).drop_duplicates(subset=["run", "file", "public"])
    if len(scored) < 2:
        raise CompError(
            f"{len(scored)} submission(s) have both a CV and a public score; at least 2 are needed for the plot "
            "(upload with comp submit, then comp runs --sync)"
        )
    cv, pub = scored["cv"].to_numpy(float), scored["public"].to_numpy(float)
    pearson = float(np.corrcoef(cv, pub)[0, 1]) if cv.std() and pub.std() else float("nan")
    rank = pd.Series(cv).rank().to_numpy(), pd.Series(pub).rank().to_numpy()
    spearman = float(np.corrcoef(*rank)[0, 1]) if rank[0].std() and rank[1].std() else float("nan")
    return scored, pearson, spearman


def plot_cv_public(subs: pd.DataFrame, out: str | Path) -> tuple[Path, float, float]:
    """Draw CV against public score (a point per scored submission, labelled by run) into ``out``."""
    from matplotlib.figure import Figure

    scored, pearson, spearman = correlation(subs)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    cv, pub = scored["cv"].to_numpy(float), scored["public"].to_numpy(float)
    ax.scatter(cv, pub, s=30)
    for x, y, run in zip(cv, pub, scored["run"]):
        ax.annotate(str(run), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if cv.std():
        slope, icpt = np.polyfit(cv, pub, 1)
        xs = np.linspace(cv.min(), cv.max(), 2)
        ax.plot(xs, slope * xs + icpt, lw=1, color="grey")
    ax.set_xlabel("CV (mean of the submission's models)")
    ax.set_ylabel("public leaderboard")
    ax.set_title(f"CV vs public: Pearson r = {pearson:.3f}, Spearman rho = {spearman:.3f} (n = {len(scored)})")
    return save_figure(out, fig), pearson, spearman
