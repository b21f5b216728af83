"""What differs between kinds of competition target, in one object per kind (``TASKS``): classification,
multilabel, regression. Plain numpy and scikit-learn; no torch."""

from comp.tasks._base import TASKS, Decision, Metric, Task, nested_score
from comp.tasks._classification import CLASSIFICATION
from comp.tasks._multilabel import MULTILABEL
from comp.tasks._regression import REGRESSION
from comp.tasks._weighted import has_weighted, weighted_score

__all__ = [
    "CLASSIFICATION",
    "MULTILABEL",
    "REGRESSION",
    "TASKS",
    "Decision",
    "Metric",
    "Task",
    "get_task",
    "has_weighted",
    "nested_score",
    "weighted_score",
]


def get_task(name: str) -> Task:
    """The task called ``name``; unknown names list the valid ones."""
    return TASKS.get(name)
