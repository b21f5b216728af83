"""Model creation, losses, the epoch engine and the fold trainer."""

from comp.training._losses import LOSSES, build_loss
from comp.training._models import create_model, model_from_checkpoint, normalization
from comp.training._trainer import EpochEvent, FoldResult, ModelResult, TrainResult, train_folds

__all__ = ["LOSSES", "EpochEvent", "FoldResult", "ModelResult", "TrainResult", "build_loss", "create_model",
           "model_from_checkpoint", "normalization", "train_folds"]
