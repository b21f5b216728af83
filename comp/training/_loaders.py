"""How a fold reads its rows: the image reader, the loaders (seeded order, seeded loader workers, under DDP
each rank's share) and the batches an epoch has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from comp.config import DataConfig
from comp.training._distributed import SINGLE, Dist
from comp.training._seeding import derive_seed, seed_worker


def image_reader(data_cfg: DataConfig, hw: tuple[int, int], paths: Sequence[Path], run_root: Path) -> Callable:
    """Path -> RGB uint8 array: the plain decoder, or the decoded-image cache of ``data.cache``."""
    from comp.data._table import load_image

    if data_cfg.cache == "none":
        return load_image
    from comp.data._cache import make_reader  # the decoded-image cache (comp bench-data)

    return make_reader(data_cfg, hw, paths, run_dir=run_root)


def epoch_batches(
    n_rows: int, batch_size: int, world: int, mixing: bool, max_steps: int | None, accum: int = 1
) -> tuple[bool, int]:
    """(drop_last, optimizer steps per epoch) for ``n_rows`` training rows shared by ``world`` ranks, with
    ``accum`` micro-batches per optimizer step (the last step of an epoch may gather fewer)."""
    bs = batch_size
    n_local = -(-n_rows // world)  # per rank: a DistributedSampler pads to equal shares
    # mixup pairs rows within a batch; and a last batch of one row breaks BatchNorm's training statistics
    drop_last = (mixing or n_local % bs == 1) and n_local > bs
    n_batches = n_local // bs if drop_last else -(-n_local // bs)
    steps = -(-n_batches // accum)
    return drop_last, min(steps, max_steps or steps)


def sampling_weights(sampler: str | list[float], targets: np.ndarray, task: str) -> np.ndarray | None:
    """Per-row sampling weights for ``train.sampler`` (None: plain shuffling), summing to one.

    ``balanced``: every class (classification), every label (multilabel: a row weighs the mean of its labels'
    inverse frequencies; rows without a label count as a class of their own) or every decile of the target
    (regression) is drawn equally often; a list: those shares per class."""
    if isinstance(sampler, str) and sampler == "shuffle":
        return None
    t = np.asarray(targets)
    if task == "multilabel":
        Y = t > 0.5
        share = np.asarray(sampler, np.float64) if isinstance(sampler, list) else np.ones(Y.shape[1])
        freq = np.maximum(Y.sum(0), 1)
        none = ~Y.any(1)
        w = np.where(none, 1.0 / max(none.sum(), 1), (Y * (share / freq)).sum(1) / np.maximum(Y.sum(1), 1))
    else:
        if task == "regression":
            from comp.data._stratify import regression_key

            key = regression_key(t, 1, max_bins=10)
        else:
            key = t.astype(np.int64)
        counts = np.bincount(key, minlength=len(sampler) if isinstance(sampler, list) else 0).astype(np.float64)
        share = np.asarray(sampler, np.float64) if isinstance(sampler, list) else np.ones(len(counts))
        w = share[key] / np.maximum(counts[key], 1)
    total = w.sum()
    return w / total if total > 0 else None


def epoch_weights(sampler: str | list[float], labelled: np.ndarray, task: str, n_rows: int) -> np.ndarray | None:
    """Sampling weights for the training part's ``n_rows`` rows: the labelled rows' ``sampling_weights``, then any
    pseudo-labelled rows (appended after them) at the labelled rows' mean weight."""
    w = sampling_weights(sampler, labelled, task)
    if w is None:
        return None
    extra = n_rows - len(w)
    if extra > 0:
        w = np.concatenate([w, np.full(extra, w.mean())])
    return w / w.sum()


def make_loader(
    ds,
    idx,
    batch_size,
    shuffle,
    seed,
    num_workers,
    drop_last,
    device,
    dist: Dist = SINGLE,
    weights: np.ndarray | None = None,
) -> DataLoader:
    """Rows ``idx`` of ``ds`` in batches; the order (when shuffled) and every worker's augmentations follow ``seed``.

    With ``weights`` (one per row of ``idx``), the epoch's rows are drawn with replacement in proportion to them
    (``train.sampler``), from the same seed on every rank, each rank taking its share."""
    if weights is not None and shuffle:
        rng = np.random.default_rng(seed)
        idx = np.asarray(idx)[rng.choice(len(idx), size=len(idx), replace=True, p=weights)]
        shuffle = False  # already in a random order
    subset = Subset(ds, idx)
    # under DDP every rank permutes the whole set with the same seed and takes its own slice
    sampler: DistributedSampler | None = (
        DistributedSampler(subset, dist.world, dist.rank, shuffle=shuffle, seed=seed) if dist.enabled else None
    )
    gen = torch.Generator().manual_seed(derive_seed(seed, *dist.seed_parts()) if dist.enabled else seed)
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=gen,
        worker_init_fn=seed_worker if num_workers else None,
        pin_memory=device.type == "cuda",
    )
