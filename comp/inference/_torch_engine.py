"""The ``torch`` engine: each fold's checkpoint rebuilt as a timm model and run by PyTorch, optionally compiled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from comp.config import Config
from comp.inference._engines import ENGINES, Engine, Runner
from comp.run import Checkpoint, RunDir
from comp.training._engine import resolve_device
from comp.training._models import model_from_checkpoint
from comp.training._outputs import OutputSpec, Predictor


@dataclass
class TorchOptions:
    """Where and how PyTorch runs the folds; from the config's ``device`` and ``predict.compile``."""

    device: torch.device
    compile: str = "none"  # a torch.compile mode, or "none"

    @classmethod
    def from_config(cls, cfg: Config) -> TorchOptions:
        return cls(resolve_device(cfg.device), cfg.predict.compile)


class TorchRunner:
    """A PyTorch fold model with its checkpoint's output head (the one its ONNX graph ends in): float32 NCHW
    batch (and a metadata tower's raw metadata rows) in, predictions in the task's units out (optionally torch.compile'd)."""

    def __init__(
        self, model: torch.nn.Module, device: torch.device, compile: str = "none", output: OutputSpec | None = None
    ):
        self.model, self.device = Predictor(model, output or OutputSpec()).eval().to(device), device
        if compile != "none":
            self.model = torch.compile(self.model, mode=compile)  # type: ignore[assignment]

    @torch.no_grad()
    def __call__(self, x: np.ndarray, meta: np.ndarray | None = None) -> np.ndarray:
        inputs = [x] if meta is None else [x, meta]
        tensors = [torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.device) for v in inputs]
        return self.model(*tensors).cpu().numpy()


@ENGINES.register("torch")
class TorchEngine(Engine):
    """Eager (or compiled) PyTorch; needs nothing prepared and offers no fused runner."""

    def __init__(self, options: TorchOptions):
        self.options = options

    @classmethod
    def from_config(cls, cfg: Config, run: RunDir, *, batch_size: int) -> TorchEngine:
        return cls(TorchOptions.from_config(cfg))

    def runner(self, run: RunDir, model_id: str, fold: int, ckpt: Checkpoint) -> Runner:
        model, _ = model_from_checkpoint(ckpt)
        output = OutputSpec.from_dict(ckpt.meta.output)  # a format-1 checkpoint: softmax
        return TorchRunner(model, self.options.device, self.options.compile, output)
