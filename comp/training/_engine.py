"""Train one epoch / evaluate: loops only, no files, no CLI."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from comp.errors import CompError


@dataclass
class StepConfig:
    """What one optimisation step needs besides the model and batch."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip: float | None = None
    max_steps: int | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None  # timm ModelEmaV3
    scheduler: Any = None  # timm scheduler (step_update)
    progress: Any = None  # comp._progress.Progress
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = (
        None  # e.g. augment.DeviceNormalize, for loaders that yield uint8 batches
    )
    accum_steps: int = 1  # micro-batches per optimizer step
    on_step: Callable[[int], None] | None = None  # after every optimizer step (its global number), e.g. an SWA LR


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CompError("config key 'device' is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    if name.startswith("cuda:"):  # checked here, in preflight, not at the first tensor moved after writing
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(name.split(":", 1)[1]) >= n:
            have = f"cuda:0..cuda:{n - 1}" if n else "no CUDA device"
            raise CompError(
                f"config key 'device' is {name!r} but this machine has {have}; use device: auto, cuda or cpu"
            )
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 on CUDA when supported, fp16 on older CUDA, off on CPU; explicit values are honoured."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def to_device(x: torch.Tensor, sc: StepConfig) -> torch.Tensor:
    """A loader's batch on ``sc.device``, normalised there when the loader yields uint8, in the step's layout."""
    x = x.to(sc.device, non_blocking=True)
    if sc.normalize is not None:
        x = sc.normalize(x)
    return x.contiguous(memory_format=torch.channels_last if sc.channels_last else torch.contiguous_format)


def train_one_epoch(
    model: nn.Module, loader, optimizer, loss_fn, mixer, epoch: int, sc: StepConfig, step0: int = 0
) -> dict:
    """One pass over ``loader``; returns mean loss, images/s and the number of optimizer steps taken.

    With ``sc.accum_steps`` = k, every k micro-batches make one optimizer step: each micro-batch's loss is
    divided by the number of micro-batches in its group (the last group of an epoch may be shorter), the
    gradient is clipped once on the accumulated sum, and the optimizer, scheduler and EMA step once per group.
    Under DDP the gradient all-reduce runs on the group's last micro-batch only (``no_sync`` before it).
    ``sc.max_steps`` counts optimizer steps. A loader that yields (x, y, w) trains on sample weights: the
    mixer mixes them with the images (``mixer.mix``) and the loss takes them as its third argument."""
    model.train()
    accum = max(1, sc.accum_steps)
    n_micro = len(loader)
    if sc.max_steps:
        n_micro = min(n_micro, sc.max_steps * accum)
    total, n_seen, steps, micro = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for batch in loader:
        x, y = batch[0], batch[1]
        first = micro - micro % accum
        group = min(accum, n_micro - first)  # micro-batches in this optimizer step
        last = micro - first == group - 1
        x, y = to_device(x, sc), y.to(sc.device, non_blocking=True)
        if len(batch) > 2:  # sample weights (data.weight_column), mixed with the images
            x, soft, w = mixer.mix(x, y, epoch, batch[2].to(sc.device, non_blocking=True))
            with autocast(sc.device, sc.amp_dtype):
                logits = model(x)
            loss = loss_fn(logits.float(), soft, w)
        else:
            x, soft = mixer(x, y, epoch)
            with autocast(sc.device, sc.amp_dtype):
                logits = model(x)
            loss = loss_fn(logits.float(), soft)
        loss_value = loss.item()  # the one host sync of the step: the finiteness check and the running mean share it
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"loss became {loss_value} at epoch {epoch} step {steps}; lower train.lr or enable train.grad_clip"
            )
        part = loss / group if group > 1 else loss
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if no_sync is not None and not last else nullcontext():
            if sc.scaler is not None:
                sc.scaler.scale(part).backward()
            else:
                part.backward()
        micro += 1
        total += loss_value * len(x)
        n_seen += len(x)
        if last:
            if sc.scaler is not None:
                sc.scaler.unscale_(optimizer)
            if sc.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), sc.grad_clip)
            if sc.scaler is not None:
                sc.scaler.step(optimizer)
                sc.scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if sc.scheduler is not None:
                sc.scheduler.step_update(step0 + steps)
            if sc.ema is not None:
                sc.ema.update(model, step=step0 + steps)
            if sc.on_step is not None:
                sc.on_step(step0 + steps)
            if sc.progress is not None:
                sc.progress.update(1)
                sc.progress.set_postfix(loss=f"{total / n_seen:.4f}", ips=f"{n_seen / (time.perf_counter() - t0):.0f}")
        if micro >= n_micro:
            break
    dt = time.perf_counter() - t0
    return {"loss": total / max(n_seen, 1), "images_per_s": n_seen / dt if dt > 0 else math.nan, "steps": steps}


@torch.no_grad()
def predict_probs(model: nn.Module, loader, sc: StepConfig, head: nn.Module | None = None) -> np.ndarray:
    """Predictions (float32, N x K) over ``loader`` in order: ``head(logits)`` (an ``OutputHead``: softmax rows,
    sigmoid labels, regression values in the target's units), softmax rows without one."""
    model.eval()
    out = []
    for batch in loader:
        x = batch[0]
        with autocast(sc.device, sc.amp_dtype):
            logits = model(to_device(x, sc))
        z = logits.float()
        out.append((head(z) if head is not None else torch.softmax(z, dim=1)).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
