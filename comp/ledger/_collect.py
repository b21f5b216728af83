"""Reading every run folder under a runs folder into two tables: runs (one row per run and model, blends
included) and submissions (one row per submission file and upload). Everything comes from the run folders:
config.yaml, metrics.json, fold checkpoints and histories, and submissions.json."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.errors import CompError
from comp.run import RunDir
from comp.run._submissions import read_submissions

log = logging.getLogger(__name__)

RUN_COLUMNS = [
    "when", "run", "model", "kind", "task", "metric", "folds", "cv", "fold_std", "changed", "wall_s",
    "submissions", "public", "private",
]  # fmt: skip
SUBMISSION_COLUMNS = [
    "written", "run", "models", "file", "sha256", "cv", "competition", "message", "uploaded", "status",
    "public", "private",
]  # fmt: skip
SHOWN_CHANGES = 6


def run_folders(runs_dir: str | Path) -> list[Path]:
    """``runs_dir`` itself when it is a run folder, else its sub-folders holding a config.yaml."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise CompError(f"runs folder {root} not found; pass the folder holding your run folders (default: runs)")
    if (root / "config.yaml").is_file():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: value}; lists of mappings (models) by index."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


def changed_keys(config: dict[str, Any], first: dict[str, Any]) -> str:
    """``key=value`` for every key whose value differs from the first run's (and keys only one of them has)."""
    a, b = flatten(config), flatten(first)
    diff = [f"{k}={a.get(k)}" for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)]
    shown = "; ".join(diff[:SHOWN_CHANGES])
    return shown + (f"; +{len(diff) - SHOWN_CHANGES} more" if len(diff) > SHOWN_CHANGES else "")


def _when(run: RunDir) -> str:
    stamp = run.config.stat().st_mtime
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="seconds")


def _wall_s(run: RunDir, model_id: str) -> float | None:
    total, seen = 0.0, False
    for path in sorted(run.model_dir(model_id).glob("fold*.history.csv")):
        try:
            hist = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        if "epoch_s" in hist:
            total += float(hist["epoch_s"].sum())
            seen = True
    return round(total, 1) if seen else None


def _score(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def collect(runs_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, submissions) tables of every run folder under ``runs_dir``."""
    runs: list[dict[str, Any]] = []
    subs: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}  # run name -> config
    first: tuple[str, str] | None = None  # (when, run name) of the earliest trained run
    for folder in run_folders(runs_dir):
        run = RunDir(folder)
        try:
            config = run.config_dict()
            records = read_submissions(folder)
        except CompError as exc:
            log.warning("skipping %s: %s", folder, exc)
            continue
        when = _when(run)
        cvs: dict[str, float] = {}
        for mid in run.model_folders():
            row = _model_row(run, mid, config, when)
            if row is None:
                continue
            cvs[mid] = row["cv"]
            runs.append(row)
            if row["kind"] == "train":
                configs[folder.name] = config
                first = min(first or (when, folder.name), (when, folder.name))
        for rec in records:
            models = [m for m in rec.get("models", []) if m in cvs]
            cv = float(np.mean([cvs[m] for m in models])) if models else None
            base = {
                "written": rec.get("time"),
                "run": folder.name,
                "models": "+".join(rec.get("models", [])),
                "file": rec.get("file"),
                "sha256": str(rec.get("sha256", ""))[:12],
                "cv": cv,
            }
            ups = rec.get("uploads") or [{}]
            for up in ups:
                subs.append(
                    {
                        **base,
                        "competition": up.get("competition"),
                        "message": up.get("message"),
                        "uploaded": up.get("time"),
                        "status": up.get("status"),
                        "public": _score(up.get("public")),
                        "private": _score(up.get("private")),
                    }
                )
    runs_df = pd.DataFrame(runs, columns=RUN_COLUMNS)
    subs_df = pd.DataFrame(subs, columns=SUBMISSION_COLUMNS)
    if first is not None:
        for i, row in runs_df.iterrows():
            if row["kind"] == "train":
                runs_df.at[i, "changed"] = changed_keys(configs[row["run"]], configs[first[1]])
    for i, row in runs_df.iterrows():  # each model's submissions and their latest leaderboard scores
        mine = subs_df[
            (subs_df["run"] == row["run"]) & subs_df["models"].str.split("+").map(lambda ms, m=row["model"]: m in ms)
        ]
        runs_df.at[i, "submissions"] = int(mine["file"].nunique())
        scored = mine.dropna(subset=["public"]).sort_values("uploaded")
        if len(scored):
            runs_df.at[i, "public"] = scored.iloc[-1]["public"]
            runs_df.at[i, "private"] = scored.iloc[-1]["private"]
    return runs_df.sort_values(["when", "run", "model"]).reset_index(drop=True), subs_df.sort_values(
        "written"
    ).reset_index(drop=True)


def _model_row(run: RunDir, mid: str, config: dict[str, Any], when: str) -> dict[str, Any] | None:
    n_splits = int((config.get("folds") or {}).get("n_splits", 5))
    metrics = None
    if run.metrics(mid).is_file():
        try:
            metrics = run.read_metrics(mid)
        except CompError as exc:
            log.warning("skipping %s: %s", run.metrics(mid), exc)
    blend = metrics.extra if metrics is not None and "method" in metrics.extra else None
    done = len(run.fold_checkpoints(mid))
    if metrics is None and not done:
        return None
    folds = metrics.folds if metrics is not None else []
    std = (
        metrics.fold_std
        if metrics is not None and metrics.fold_std is not None
        else (float(np.std(folds)) if folds else None)
    )
    changed = ""
    if blend is not None:
        members = "+".join(Path(str(m)).name for m in blend.get("members", []))
        changed = f"method={blend.get('method')}; members={members}"
    return {
        "when": when,
        "run": run.root.name,
        "model": mid,
        "kind": "blend" if blend is not None else "train",
        "task": config.get("task", "classification"),
        "metric": metrics.metric if metrics is not None else config.get("metric"),
        "folds": f"{len(folds)}" if blend is not None else f"{done}/{n_splits}",
        "cv": metrics.cv if metrics is not None else None,
        "fold_std": std,
        "changed": changed,
        "wall_s": _wall_s(run, mid) if blend is None else None,
        "submissions": 0,
        "public": None,
        "private": None,
    }
