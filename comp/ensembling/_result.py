"""What a blend returns: its members' scores, the saved blend (one method or several compared), and a validated
submission waiting for the blend folder to be written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from comp._tables import Rendered, table_frame
from comp.tasks import Decision


@dataclass
class MemberScore:
    """One member of a blend: its model folder, its own OOF score and its weight (None: not a weighted mean)."""

    name: str  # <run>/<model_id>
    path: Path
    cv: float
    weight: float | None


@dataclass(repr=False)
class BlendResult(Rendered):
    """A saved blend: honest (nested) and in-sample CV, its members, and its run folder and submission."""

    name: str
    method: str
    metric: str
    direction: str  # "maximize" or "minimize"
    cv: float  # nested CV: every OOF row scored by a blend fitted without its fold
    cv_in_sample: float  # fitted and scored on all OOF rows
    folds: list[float]  # the nested CV per fold
    members: list[MemberScore]
    weights: list[float] | None
    bias: dict[str, float] | None  # per-class log-probability offsets (--bias)
    notes: list[str]
    attribute_f1: dict[str, float] | None  # OOF macro F1 per attribute, when the classes are attributes
    run_dir: Path
    model_dir: Path
    submission: Path | None = None
    task: str = "classification"
    decision: Decision | None = None  # thresholds or cut-points fitted on the honest blend OOF (the submission's)
    per_column: dict[str, float] | None = None  # the honest blend's score per label or target
    metadata: list[str] | None = None  # a stack's inputs beside the predictions: data.features (+ "groups")
    gbdt_params: dict | None = None  # --gbdt-param: the LightGBM parameters set over the stack's defaults

    def rows(self) -> list[dict]:
        """Every member, then the blend (in-sample and nested CV)."""
        rows = [{"model": m.name, "weight": m.weight, "cv": m.cv, "cv_in_sample": None} for m in self.members]
        rows.append({"model": f"{self.name} (blend)", "weight": None, "cv": self.cv, "cv_in_sample": self.cv_in_sample})
        return rows

    def title(self) -> str:
        return f"BlendResult: {self.name} ({self.method}), {self.metric} nested CV {self.cv:.4f}, in {self.run_dir}"

    def table(self) -> pd.DataFrame:
        return table_frame(self.rows(), ["model", "weight", "cv", "cv_in_sample"])


@dataclass(repr=False)
class CompareResult(Rendered):
    """Several blend methods on the same members; the submission came from ``best`` (the best nested CV)."""

    results: list[BlendResult]
    best: BlendResult

    def title(self) -> str:
        return f"CompareResult: best {self.best.method} (nested CV {self.best.cv:.4f})"

    def table(self) -> pd.DataFrame:
        rows = [
            {"method": r.method, "cv": r.cv, "cv_in_sample": r.cv_in_sample, "blend": r.model_dir} for r in self.results
        ]
        return table_frame(rows)


@dataclass
class PendingSubmission:
    """A validated submission frame waiting to be written once the blend folder is saved."""

    df: pd.DataFrame
    path: Path
    sample: str
