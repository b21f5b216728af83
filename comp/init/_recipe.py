"""A first recipe sized to a time budget and a machine, from a timing probe on the competition's own images.

The probe builds the chosen backbone at the chosen size (``pretrained=False``: no download), decodes real
training images, and times a few optimizer steps and an evaluation pass; epochs and folds then follow from the
budget by arithmetic. On CUDA the batch size comes from the probe's peak memory, scaled to the device.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comp.config import ModelConfig
from comp.errors import CompError

# backbones by budget, best first; timm names with pretrained weights (a test checks each one)
GPU_LADDER = [
    (4 * 3600, ["convnext_small", "efficientnet_b3"]),
    (3600, ["convnext_tiny", "efficientnet_b0"]),
    (0, ["efficientnet_b0"]),
]
CPU_LADDER = [(2 * 3600, ["resnet18", "mobilenetv3_large_100"]), (0, ["resnet18"])]
SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)
MIN_EPOCHS, MAX_EPOCHS = 3, 30
FOLD_OVERHEAD_S = 3.0  # per fold: model build, best-state copies, checkpoint and OOF writes (measured ~1-3 s)
RUN_OVERHEAD_S = 15.0  # per command: imports, table and image checks, folds


def parse_budget(text: str) -> float:
    """'2h', '90m', '1h30m', '45s' or a plain number of hours -> seconds."""
    t = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 3600
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
    if not parts or "".join(a + b for a, b in parts) != t:
        raise CompError(f"--budget {text!r}: write a duration such as 2h, 90m, 1h30m or 45s")
    seconds = sum(float(a) * {"h": 3600, "m": 60, "s": 1}[b] for a, b in parts)
    if seconds <= 0:
        raise CompError(f"--budget {text!r} must be longer than zero")
    return seconds


def format_s(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


@dataclass
class Machine:
    device: str  # cpu, cuda, cuda:N
    name: str
    memory_gb: float | None  # the GPU's memory
    cores: int

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")


def machine(device: str = "auto") -> Machine:
    """The device a run will train on, with what limits the recipe (GPU memory, CPU cores)."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise CompError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CompError(f"--device {device}: no CUDA device is visible; use --device cpu or auto")
        props = torch.cuda.get_device_properties(torch.device(device))
        return Machine(device, props.name, props.total_memory / 2**30, cores)
    return Machine("cpu", f"{cores} CPU cores", None, cores)


def backbones(budget_s: float, m: Machine) -> list[str]:
    ladder = GPU_LADDER if m.gpu else CPU_LADDER
    return next(names for floor, names in ladder if budget_s >= floor)


def image_size(heights: list[int], widths: list[int], m: Machine, budget_s: float) -> int | list[int]:
    """The model's input size from the images' median size, capped by the machine (CPU: 224; GPU: 384 or 448)."""
    h, w = float(np.median(heights)), float(np.median(widths))
    cap = 224 if not m.gpu else 448 if budget_s >= 4 * 3600 else 384
    side = min(min(h, w), cap)
    short = max([s for s in SIZES if s <= max(side, SIZES[0])] or [SIZES[0]])
    ratio = w / h
    if abs(math.log(ratio)) < math.log(1.15):
        return short
    long = max(short, int(round(short * max(ratio, 1 / ratio) / 32)) * 32)
    if long == short:
        return short
    return [long, short] if h > w else [short, long]


@dataclass
class Probe:
    """Measured on the competition's images: seconds per training step and per eval batch, decode time."""

    batch_size: int
    step_s: float
    eval_s: float  # one eval batch of 2 x batch_size
    decode_s: float  # per image: read and resize
    peak_gb: float | None

    def epoch_s(self, n_rows: int, n_splits: int, workers: int) -> float:
        """One epoch of one fold: the training part's steps and the validation pass."""
        train = n_rows * (n_splits - 1) / n_splits
        valid = n_rows / n_splits
        steps = max(1, int(train // self.batch_size))
        compute = steps * self.step_s + math.ceil(valid / (2 * self.batch_size)) * self.eval_s
        decode = (train + valid) * self.decode_s
        return max(compute, decode / workers) if workers else compute + decode


def probe(
    entry: ModelConfig,
    n_outputs: int,
    task: str,
    images: list[Path],
    m: Machine,
    batch_size: int,
    *,
    steps: int = 5,
) -> Probe:
    """Time ``steps`` training steps of ``entry`` (weights random, no download) on real images at its size."""
    import torch

    from comp.data._cache import decode_resized
    from comp.training._engine import autocast, resolve_amp
    from comp.training._models import create_model, normalization

    hw = entry.hw
    device = torch.device(m.device)
    picks = [images[i % len(images)] for i in range(min(len(images), 16))]
    t0 = time.perf_counter()
    decoded = [decode_resized(p, hw) for p in picks]
    decode_s = (time.perf_counter() - t0) / len(picks)
    batch = np.stack([decoded[i % len(decoded)] for i in range(batch_size)])
    model = create_model(dataclasses.replace(entry, pretrained=False), n_outputs).to(device)
    if entry.in_chans == 1:
        batch = batch.mean(-1, keepdims=True).astype(np.uint8)
    mean, std = normalization(model, entry.in_chans)
    x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(mean, device=device)[:, None, None]) / torch.tensor(std, device=device)[:, None, None]
    if task == "classification":
        y = torch.randint(0, n_outputs, (batch_size,), device=device)
        loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss()
    else:
        y = torch.rand(batch_size, n_outputs, device=device)
        loss_fn = torch.nn.BCEWithLogitsLoss() if task == "multilabel" else torch.nn.MSELoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = resolve_amp("auto", device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast(device, amp):
            out = model(x)
        loss = loss_fn(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    step()  # warm-up: kernels chosen, memory allocated
    sync()
    times = []
    for _ in range(steps):  # the median step: one slow step (another process, a page fault) does not move it
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    model.eval()
    x2 = torch.cat([x, x])
    with torch.no_grad(), autocast(device, amp):
        model(x2)
        sync()
        t0 = time.perf_counter()
        model(x2)
        sync()
    eval_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Probe(batch_size, step_s, eval_s, decode_s, peak)


def fit_batch(entry: ModelConfig, n_outputs: int, task: str, images: list[Path], m: Machine, n_rows: int) -> Probe:
    """The batch size for the device, then its probe: on CUDA the largest power of two whose memory (scaled from
    a probe at 16) stays within 80% of the device, at most 128; on the CPU 32 (16 from 320 px)."""
    cap = max(2, min(128, n_rows // 8))
    if not m.gpu:
        side = max(entry.hw)
        return probe(entry, n_outputs, task, images, m, max(2, min(cap, 16 if side >= 320 else 32)))
    first = probe(entry, n_outputs, task, images, m, min(16, cap), steps=2)
    per_image = (first.peak_gb or 0) / first.batch_size
    fits = int(0.8 * (m.memory_gb or 0) / per_image) if per_image else cap
    batch = 2 ** int(math.log2(max(2, min(cap, fits))))
    return first if batch == first.batch_size else probe(entry, n_outputs, task, images, m, batch)
