"""Reproducibility: every seed is derived from names (seed, model, fold, epoch, rank), never drawn.

Every epoch re-seeds torch, numpy, python and the augmentations from (seed, model, fold, epoch), so a run
resumed from its last finished epoch is identical to one that was never interrupted, and a fold trained by
any worker equals the same fold trained alone.
"""

from __future__ import annotations

import random
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Subset

if TYPE_CHECKING:
    from comp.config import Config


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    seed = int(seed) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derive_seed(*parts) -> int:
    """A seed in [0, 2**31) named by ``parts`` (crc32 of their text: the same on every process and version)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) % (2**31)


def seed_worker(worker_id: int) -> None:
    """Each loader worker seeds numpy, random and its albumentations pipeline from torch's per-worker seed."""
    seed = torch.initial_seed() % (2**31)
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    ds: Any = None if info is None else info.dataset
    ds = ds.dataset if isinstance(ds, Subset) else ds
    if getattr(ds, "transform", None) is not None:
        ds.transform.set_random_seed(seed)


def set_deterministic(cfg: Config) -> None:
    """``train.deterministic``: torch's deterministic kernels (warning where there is none) and no cuDNN autotuning."""
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
