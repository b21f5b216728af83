"""How a fold reads its rows: the image reader, the loaders (seeded order, seeded loader workers, under DDP
each rank's share) and the batches an epoch has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

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


def epoch_batches(n_rows: int, batch_size: int, world: int, mixing: bool, max_steps: int | None) -> tuple[bool, int]:
    """(drop_last, steps per epoch) for ``n_rows`` training rows shared by ``world`` ranks."""
    bs = batch_size
    n_local = -(-n_rows // world)  # per rank: a DistributedSampler pads to equal shares
    # mixup pairs rows within a batch; and a last batch of one row breaks BatchNorm's training statistics
    drop_last = (mixing or n_local % bs == 1) and n_local > bs
    n_batches = n_local // bs if drop_last else -(-n_local // bs)
    return drop_last, min(n_batches, max_steps or n_batches)


def make_loader(ds, idx, batch_size, shuffle, seed, num_workers, drop_last, device, dist: Dist = SINGLE) -> DataLoader:
    """Rows ``idx`` of ``ds`` in batches; the order (when shuffled) and every worker's augmentations follow ``seed``."""
    subset = Subset(ds, idx)
    # under DDP every rank permutes the whole set with the same seed and takes its own slice
    sampler: DistributedSampler | None = (
        DistributedSampler(subset, dist.world, dist.rank, shuffle=True, seed=seed) if shuffle and dist.enabled else None
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
