"""What one fold's training is given: the config, the model entry, the table, the folds and where to write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from comp.config import Config, ModelConfig
from comp.data._table import TrainTable
from comp.run import RunDir
from comp.training._distributed import SINGLE, Dist
from comp.training._results import EpochEvent
from comp.training._targets import TrainingTargets


@dataclass
class FoldContext:
    cfg: Config
    entry: ModelConfig
    table: TrainTable
    folds: np.ndarray
    fold: int
    run: RunDir
    _: KW_ONLY  # the optional parts are named at every call site (positional ones got mixed up in a merge)
    progress: bool = True
    on_epoch: Callable[[EpochEvent], None] | None = None  # may raise (e.g. optuna.TrialPruned) to stop the run
    device: str | None = None  # a worker's or rank's own device; cfg.device otherwise (cfg stays as saved)
    dist: Dist = field(default=SINGLE)
    soft: TrainingTargets | None = None  # pseudo-labelled rows and a teacher (data.extra_train, loss.distill)

    @property
    def model_id(self) -> str:
        return self.entry.model_id
