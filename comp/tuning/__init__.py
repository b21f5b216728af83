"""Optuna search through train_folds itself, with fold-aware pruning."""

from comp.tuning._outputs import TuneResult
from comp.tuning._space import parse_space
from comp.tuning._tune import tune

__all__ = ["TuneResult", "parse_space", "tune"]
