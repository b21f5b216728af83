"""The inference engines' registry: how ``comp predict`` turns a model's fold checkpoints into runners.

A runner is a callable: a float32 NCHW batch (numpy) in, predictions in the task's units (numpy, rows x
output columns: class or label probabilities, target values) out.
TTA views, merging and fold averaging happen around runners, so every engine shares them. An engine is one
module that subclasses ``Engine`` and registers it, e.g. ``@ENGINES.register("onnx")``, imported by
``comp/inference/__init__.py``; predict asks the registry and never names an engine. The config's
``predict.engine`` Literal (which ``--engine`` offers) lists the same names; a test keeps them equal.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from comp._registry import Registry

if TYPE_CHECKING:
    from comp.config import Config
    from comp.run import Checkpoint, RunDir

# images (and, for a metadata tower, its raw metadata rows as a second argument) -> predictions
Runner = Callable[..., np.ndarray]


class Engine(ABC):
    """One way to run fold models, with its options (a dataclass of its own module) read from ``predict``."""

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Config, run: RunDir, *, batch_size: int) -> Engine:
        """The engine with its options from the config's ``predict`` block (``batch_size`` already resolved)."""

    def prepare(self, run: RunDir, model_id: str, cfg: Config) -> None:
        """Make what this engine's runners of ``model_id`` need (nothing by default), before any is built."""
        return None

    @abstractmethod
    def runner(self, run: RunDir, model_id: str, fold: int, ckpt: Checkpoint) -> Runner:
        """A runner for one fold's checkpoint."""

    def fused(self, run: RunDir, model_id: str, folds: list[int], tta: list[str], merge: str) -> Runner | None:
        """One runner doing every fold and TTA view at once (its output already merged), or None (the default)."""
        return None


ENGINES: Registry[type[Engine]] = Registry("inference engine")
