"""Optuna search through train_folds itself, with fold-aware pruning."""

from comp.tuning._tune import TuneResult, parse_space, tune

__all__ = ["TuneResult", "parse_space", "tune"]
