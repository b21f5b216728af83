"""Optuna search through train_folds itself, with fold-aware pruning.

``_tune`` (the entry and the worker loop) -> ``_study`` (the plan, the study's key, opening it) -> ``_storage``
(--storage URLs) and ``_trials`` (one trial from ask to tell, counting, reaping) -> ``_space``, ``_pruning``,
``_outputs``; ``_optuna`` is the one module that uses Optuna's private names.
"""

from comp.tuning._outputs import TuneResult
from comp.tuning._space import parse_space
from comp.tuning._tune import tune

__all__ = ["TuneResult", "parse_space", "tune"]
