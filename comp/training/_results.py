"""What training reports: per-epoch events for ``on_epoch``, and per fold, per model and per call results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from comp._tables import Rendered, table_frame
from comp.run import RunDir


@dataclass
class EpochEvent:
    """What ``on_epoch`` receives after every epoch's validation, and once more when a fold finishes."""

    model_id: str
    fold: int
    epoch: int
    epochs: int
    score: float
    best_score: float | None
    fold_done: bool
    loss: float | None = field(default=None, kw_only=True)  # the epoch's mean training loss (None when a fold ends)
    images_per_s: float | None = field(default=None, kw_only=True)  # the epoch's training speed


@dataclass
class FoldResult:
    score: float
    best_epoch: int
    epochs: int | None = None
    images_per_s: float | None = None
    skipped: bool = False  # finished by an earlier call


@dataclass
class ModelResult:
    model_id: str
    folds: dict[int, FoldResult]
    cv: float | None  # None until every fold of the model is trained
    attribute_f1: dict[str, float] | None = None  # OOF macro F1 per attribute, when data.labels has attributes


@dataclass(repr=False)
class TrainResult(Rendered):
    """What ``train_folds`` did: per model, per fold scores and the CV; the run folder holds the rest."""

    run: RunDir
    metric: str
    models: dict[str, ModelResult]

    def oof(self, model_id: str) -> pd.DataFrame:
        """The model's out-of-fold probabilities (id, fold, target, one column per class)."""
        return self.run.read_oof(model_id).frame()

    def title(self) -> str:
        return f"TrainResult: {self.run.root} ({self.metric})"

    def history(self, model_id: str, fold: int) -> pd.DataFrame:
        """One row per epoch of a fold: loss, score, images per second (``fold<k>.history.csv``)."""
        return self.run.read_history(model_id, fold)

    def table(self) -> pd.DataFrame:
        """One row per model and fold, then each model's CV over its whole OOF."""
        rows: list[dict[str, Any]] = []
        for mid, m in self.models.items():
            for k, f in sorted(m.folds.items()):
                rows.append(
                    {
                        "model": mid,
                        "fold": str(k),
                        self.metric: f.score,
                        "best_epoch": f.best_epoch,
                        "img/s": f.images_per_s,
                        "note": "done before" if f.skipped else "",
                    }
                )
            rows.append(
                {
                    "model": mid,
                    "fold": "CV",
                    self.metric: m.cv,
                    "note": "" if m.cv is not None else "folds missing",
                    **{f"f1_{k}": v for k, v in (m.attribute_f1 or {}).items()},
                }
            )
        extra = list(dict.fromkeys(k for r in rows for k in r if k.startswith("f1_")))  # per-attribute OOF macro F1
        return table_frame(rows, ["model", "fold", self.metric, *extra, "best_epoch", "img/s", "note"])
