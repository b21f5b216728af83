"""How fast can the input pipeline feed the model? (``comp bench-data``)

For each (cache, workers, batch size) setting: images/s from reading the file through the train
augmentation to a collated batch, timed on the second pass over the same images (the first pass fills
the cache, as epoch 1 of training does). Next to it the model's own training images/s (forward and
backward on random tensors of that batch shape). Whichever is slower is the bottleneck.

Both caches are shared with DataLoader workers (see ``comp.cache``), so they help at every worker count.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset

from comp._tables import Rendered, table_frame
from comp.config import Config
from comp.data._augment import pipelines
from comp.data._cache import human_bytes, make_reader, slab_bytes
from comp.data._table import ImageDataset, load_train_table
from comp.errors import CompError
from comp.training._engine import resolve_device
from comp.training._models import create_model, normalization

CACHES = ("none", "disk", "memory")


@dataclass(repr=False)
class BenchDataResult(Rendered):
    """Images/s per (cache, workers, batch size) against the model's own training speed, and what to use."""

    rows: list[dict[str, Any]]  # cache, workers, batch_size, data_img_s, model_img_s, bottleneck
    model_img_s: dict[int, float]  # the model's training images/s per batch size
    verdict: list[str]  # the bottleneck and the settings to use, as lines
    device: str
    model_name: str

    floatfmt = ".0f"

    def title(self) -> str:
        return f"BenchDataResult: {self.model_name} on {self.device}"

    def table(self) -> pd.DataFrame:
        return table_frame(self.rows)


def loader_images_per_s(ds, indices, batch_size: int, workers: int, passes: int = 2) -> float:
    """Iterate ``indices`` ``passes`` times in fixed order; best images/s after the first pass (which fills caches)."""
    loader = DataLoader(Subset(ds, list(indices)), batch_size=batch_size, shuffle=False, num_workers=workers)
    rates = []
    for _ in range(max(2, passes)):
        t0 = time.perf_counter()
        n = 0
        for x, _y in loader:
            n += len(x)
        rates.append(n / max(time.perf_counter() - t0, 1e-9))
    return max(rates[1:])


def model_images_per_s(model, batch_size: int, hw, num_classes: int, device, steps: int = 3) -> float:
    """Training throughput of the model alone: SGD steps on random inputs (one untimed warm-up step)."""
    model = model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, *hw, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / max(time.perf_counter() - t0, 1e-9)


def bench_data(
    cfg: Config,
    *,
    workers: Sequence[int] = (0, 2),
    batch_sizes: Sequence[int] = (32,),
    batches: int = 5,
    caches: Sequence[str] = ("none", "disk", "memory"),
    model_steps: int = 3,
) -> BenchDataResult:
    """Measure every setting of the input pipeline and the model's training speed at each batch size."""
    workers, batch_sizes, caches = list(workers), list(batch_sizes), list(caches)
    if not workers or not batch_sizes or not caches:
        raise CompError("--workers, --batch-sizes and --cache each need at least one value")
    if any(w < 0 for w in workers):
        raise CompError(f"--workers values must be >= 0, got {workers}")
    for c in caches:
        if c not in CACHES:
            raise CompError(f"--cache: {c!r} is not one of {', '.join(CACHES)}")
    if batches < 1 or any(b < 1 for b in batch_sizes):
        raise CompError("--batches and --batch-sizes must be >= 1")
    table = load_train_table(cfg.data, task=cfg.task)
    entry = cfg.models[0]
    hw = entry.hw
    model = create_model(entry, len(table.classes))
    mean, std = normalization(model, entry.in_chans)
    train_tf, _ = pipelines(cfg.augment, hw, mean, std, normalize=False)  # as train-folds loads
    device = resolve_device(cfg.device)
    model_rate = {bs: model_images_per_s(model, bs, hw, len(table.classes), device, model_steps) for bs in batch_sizes}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="comp-bench-cache-") as tmp:
        for cache in caches:
            for bs in batch_sizes:
                k = min(len(table.paths), bs * batches)  # cache only the images measured, not the whole set
                paths, targets = table.paths[:k], table.targets[:k]
                idx = np.resize(np.arange(k), bs * batches)
                for w in workers:
                    data_cfg = dataclasses.replace(cfg.data, cache=cache, cache_dir=f"{tmp}/{cache}-{bs}-{w}")  # type: ignore[arg-type]
                    reader = make_reader(data_cfg, hw, paths)
                    ds = ImageDataset(paths, targets, train_tf, reader=reader)
                    rate = loader_images_per_s(ds, idx, bs, w)
                    rows.append(
                        {
                            "cache": cache,
                            "workers": w,
                            "batch_size": bs,
                            "data_img_s": rate,
                            "model_img_s": model_rate[bs],
                            "bottleneck": "data" if rate < model_rate[bs] else "model",
                        }
                    )
    best = max(rows, key=lambda r: r["data_img_s"])
    verdict = []
    if best["data_img_s"] < best["model_img_s"]:
        verdict.append(
            f"bottleneck: data loading ({best['data_img_s']:.0f} img/s at best vs the model's "
            f"{best['model_img_s']:.0f} img/s); more workers, a cache or smaller source images would help"
        )
        pick = best
    else:
        enough = [r for r in rows if r["data_img_s"] >= r["model_img_s"]]
        pick = min(enough, key=lambda r: (r["workers"], CACHES.index(r["cache"]), -r["data_img_s"]))
        verdict.append(f"bottleneck: the model ({pick['model_img_s']:.0f} img/s); the data pipeline keeps up")
    verdict.append(
        f"use: --set data.cache={pick['cache']} --set data.num_workers={pick['workers']} "
        f"(batch size {pick['batch_size']}, {pick['data_img_s']:.0f} img/s)"
    )
    size = slab_bytes(len(table.paths), hw)
    verdict.append(
        f"a cache of all {len(table.paths)} training images at {hw[0]}x{hw[1]} takes {human_bytes(size)} "
        "(RAM in /dev/shm for memory, disk under data.cache_dir for disk)"
    )
    return BenchDataResult(rows, model_rate, verdict, str(device), entry.name)
