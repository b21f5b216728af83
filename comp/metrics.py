"""Metrics by task: ``get_metric(name, task)`` looks a metric up in its task's registry (``comp.tasks``).

A metric that exists for another task is refused with the metrics that fit; an unknown name lists them and
the closest. ``METRICS`` is the classification registry (the names comp had before it had other tasks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comp.errors import ConfigError
from comp.tasks import TASKS, Metric, get_task
from comp.tasks._classification import CLS_METRICS as METRICS

if TYPE_CHECKING:
    from comp.config import Config

__all__ = ["METRICS", "Metric", "check_config", "get_metric"]


def get_metric(name: str | None, task: str = "classification") -> Metric:
    """The metric ``name`` of ``task`` (None: the task's default); a ConfigError naming the metrics that fit
    when it is not one of them."""
    owner = get_task(task)
    if name is None:
        return owner.metrics[owner.default_metric]
    if name in owner.metrics:
        return owner.metrics[name]
    elsewhere = [t for t in TASKS if name in TASKS[t].metrics]
    if elsewhere:
        raise ConfigError(
            f"metric '{name}' does not fit task {task} (it scores {' and '.join(elsewhere)}); "
            f"metrics that fit {task}: {', '.join(owner.metrics)}"
        )
    owner.metrics.check(name, "metric")
    raise AssertionError("unreachable")  # check() raised


def check_config(cfg: Config) -> None:
    """Refuse a config whose ``metric`` does not fit its ``task``; stages that score call it in their preflight."""
    get_metric(cfg.metric, cfg.task)
