"""Learning from predictions: pseudo-labelled test rows (``comp pseudo``, ``data.extra_train``) and teachers
for distillation (``loss.distill``), both checked so that CV keeps scoring only what no model trained on."""

from comp.pseudo._pseudo import PseudoResult, pseudo_label
from comp.pseudo._select import select_rows
from comp.training._targets import ExtraRows, Teacher, TrainingTargets, load_training_targets

__all__ = [
    "ExtraRows",
    "PseudoResult",
    "Teacher",
    "TrainingTargets",
    "load_training_targets",
    "pseudo_label",
    "select_rows",
]
