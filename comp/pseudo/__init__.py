"""``comp pseudo``: confident test rows of a run, model or blend written as pseudo-labels for
``data.extra_train``, with a selection rule per task (``select_rows``, ``select_labels``, ``select_values``). Training on them (and on a teacher, ``loss.distill``) is the fold trainer's part:
``TrainingTargets`` and its readers live in ``comp.training`` and are re-exported here, where they were first."""

from comp.pseudo._pseudo import PseudoResult, pseudo_label
from comp.pseudo._select import select_labels, select_rows, select_values
from comp.training._targets import ExtraRows, Teacher, TrainingTargets, load_training_targets

__all__ = [
    "ExtraRows",
    "PseudoResult",
    "Teacher",
    "TrainingTargets",
    "load_training_targets",
    "pseudo_label",
    "select_labels",
    "select_rows",
    "select_values",
]
