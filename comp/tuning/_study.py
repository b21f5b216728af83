"""The study a tuning worker works on: everything a worker needs (the plan), and opening the study it names."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from comp.config import Config
from comp.tuning._pruning import make_pruner
from comp.tuning._storage import make_storage


@dataclass
class Plan:
    """Everything a tuning worker needs (picklable: device workers receive it)."""

    base: Config
    space: dict
    out_dir: Path
    storage: str | None
    study_name: str
    direction: str
    pruner: str
    total_steps: int
    n_trials: int
    folds: list[int]
    keep_trials: bool
    timeout: float | None
    heartbeat: int
    seed: int


def open_study(plan: Plan, *, shared: bool):
    """create_study(load_if_exists=True), retried: workers starting together on an empty database race to
    create its tables and one of them loses with a duplicate-object error. Returns the study and its storage."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            storage = make_storage(plan.storage, plan.out_dir, plan.heartbeat)
            study = optuna.create_study(
                study_name=plan.study_name,
                storage=storage,
                load_if_exists=True,
                direction=plan.direction,  # type: ignore[arg-type]  # validated as maximize/minimize
                pruner=make_pruner(plan.pruner, plan.total_steps),
            )
            break
        except SQLAlchemyError:
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    # a resumed study or another worker must not replay the first samples of the seeded sampler
    offset = len(study.get_trials(deepcopy=False)) + (os.getpid() if shared else 0)
    study.sampler = optuna.samplers.TPESampler(seed=(plan.seed + offset) % 2**31)
    return study, storage
