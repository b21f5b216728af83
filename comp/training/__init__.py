"""Model creation, losses, the epoch engine, the fold trainer, and the ways to use several devices."""

from comp.training._distributed import launch as launch_ddp
from comp.training._losses import LOSSES, build_loss
from comp.training._models import create_model, model_from_checkpoint, normalization
from comp.training._parallel import WorkerError, resolve_devices
from comp.training._results import EpochEvent, FoldResult, ModelResult, TrainResult
from comp.training._trainer import train_folds
from comp.training._weights import fetch_weights

__all__ = [
    "LOSSES",
    "EpochEvent",
    "FoldResult",
    "ModelResult",
    "TrainResult",
    "WorkerError",
    "build_loss",
    "create_model",
    "fetch_weights",
    "launch_ddp",
    "model_from_checkpoint",
    "normalization",
    "resolve_devices",
    "train_folds",
]
