"""What a study leaves in the tuning folder: trials.csv, best_config.yaml and plots, and the TuneResult."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import TrialState

from comp._tables import Rendered, table_frame
from comp.config import Config, dump
from comp.run import read_table, save_figure, write_csv, write_text
from comp.tuning._space import apply_params
from comp.tuning._trials import retry_of


def trials_frame(study) -> pd.DataFrame:
    """One row per trial: number, state, value, duration, fail reason, one column per parameter."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried = retry_of(trials)
    for t in trials:
        dur = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        reason = t.user_attrs.get("fail_reason", "")
        if t.state == TrialState.FAIL and not reason:  # failed by the heartbeat check or a dead-worker check
            reason = "worker died" + (f"; retried as trial {retried[t.number]}" if t.number in retried else "")
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "duration_s": dur,
                "last_step": t.last_step,
                "fail_reason": reason,
                **t.params,
            }
        )
    return pd.DataFrame(rows)


def _save_plot(draw, path: Path) -> Path | None:
    """Save the figure an optuna matplotlib plot draws (through pyplot, inside ``_pyplot_scope``) and close it."""
    import matplotlib.pyplot as plt

    try:
        ax = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None  # e.g. importances need two finished trials with two or more parameters
    fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
    fig.set_size_inches(8, 5)
    try:
        save_figure(path, fig, dpi=100)
    finally:
        plt.close(fig)
    return path


@dataclass(repr=False)
class TuneResult(Rendered):
    """A study's outcome: counts per state, the best trial and where its config and the tables went."""

    out_dir: Path
    n_trials: int
    states: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    best_config: Path | None
    best_number: int | None
    plots: list[Path]
    direction: str

    def trials(self) -> pd.DataFrame:
        """One row per trial (trials.csv)."""
        return read_table(self.out_dir / "trials.csv", "trials table", allow_empty=True)

    empty_text = "no finished trial yet"

    def title(self) -> str:
        best = (
            "no finished trial" if self.best_value is None else f"best {self.best_value:.4f} (trial {self.best_number})"
        )
        return f"TuneResult: {self.n_trials} trials in {self.out_dir}, {best}"

    def table(self, top: int = 5) -> pd.DataFrame:
        """The best finished trials, best first for the study's direction."""
        trials = self.trials()
        if not len(trials):
            return table_frame([])
        trials["value"] = pd.to_numeric(trials["value"], errors="coerce")
        done = (
            trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=self.direction == "minimize").head(top)
        )
        cols = [c for c in trials.columns if c not in ("duration_s", "last_step", "fail_reason")]
        return done[cols].reset_index(drop=True)


def write_outputs(study, cfg: Config, space: dict, out_dir: Path) -> TuneResult:
    """best_config.yaml, trials.csv, history.png, importances.png; returns a summary."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    trials = trials_frame(study)
    write_csv(out_dir / "trials.csv", trials)
    complete = trials[trials["state"] == "COMPLETE"] if len(trials) else trials
    result = TuneResult(
        out_dir,
        len(trials),
        trials["state"].value_counts().to_dict() if len(trials) else {},
        None,
        None,
        None,
        None,
        [],
        study.direction.name.lower(),
    )
    if len(complete):
        best = study.best_trial
        best_cfg = apply_params(cfg, best.params)
        write_text(
            out_dir / "best_config.yaml",
            f"# comp tune: best of {len(trials)} trials, "
            f"{cfg.metric} = {best.value:.6f} (trial {best.number})\n" + dump(best_cfg),
        )
        result.best_value, result.best_params = best.value, best.params
        result.best_config, result.best_number = out_dir / "best_config.yaml", best.number
    with warnings.catch_warnings(), _pyplot_scope():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        plots = [_save_plot(lambda: ovm.plot_optimization_history(study), out_dir / "history.png")]
        if len(space) > 1:
            plots.append(_save_plot(lambda: ovm.plot_param_importances(study), out_dir / "importances.png"))
    result.plots = [p for p in plots if p]
    return result


@contextmanager
def _pyplot_scope() -> Iterator[None]:
    """Optuna's plots draw through pyplot: give them the non-interactive Agg backend and restore the caller's."""
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("Agg")
    try:
        yield
    finally:
        plt.switch_backend(before)
