"""Decoded-image cache: decode once, resize to the model's input size, reuse the uint8 array.

``make_reader(data_cfg, hw)`` returns a picklable reader (a path -> RGB uint8 array of size ``hw``)
that ``ImageDataset`` calls instead of ``load_image``:

- ``disk``: one ``.npy`` per image under ``data.cache_dir`` (default ``<image_dir parent>/.comp_cache/<h>x<w>``),
  keyed by a hash of the path, its mtime and size and ``hw`` (an edited image gets a new entry). Files are
  written through a temporary name and ``os.replace`` so concurrent DataLoader workers never read a half file.
- ``memory``: a dict inside the process. DataLoader workers are recreated every epoch, so with
  ``data.num_workers > 0`` each worker's dict is thrown away at the end of the epoch and nothing is reused;
  the memory cache pays off only with ``num_workers=0`` (use ``disk`` with workers).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from comp.data import load_image
from comp.errors import CompError


def decode_resized(path, hw: tuple[int, int]) -> np.ndarray:
    """``load_image`` then resize to ``hw`` (height, width) with INTER_AREA; RGB uint8."""
    img = load_image(path)
    h, w = int(hw[0]), int(hw[1])
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.uint8)


class MemoryReader:
    """Decode + resize once per process; keep the array in a dict (see module docstring for workers)."""

    def __init__(self, hw):
        self.hw = (int(hw[0]), int(hw[1]))
        self.store: dict[str, np.ndarray] = {}

    def __call__(self, path) -> np.ndarray:
        key = str(path)
        img = self.store.get(key)
        if img is None:
            img = decode_resized(path, self.hw)
            self.store[key] = img
        return img

    def __getstate__(self):
        return {"hw": self.hw, "store": {}}  # workers start empty rather than copying the parent's arrays


class DiskReader:
    """Decode + resize once; keep one ``.npy`` per image under ``cache_dir``, shared by processes and runs."""

    def __init__(self, cache_dir, hw):
        self.hw = (int(hw[0]), int(hw[1]))
        self.cache_dir = Path(cache_dir)

    def key(self, path) -> str:
        st = os.stat(path)
        text = f"{Path(path).resolve()}|{st.st_mtime_ns}|{st.st_size}|{self.hw[0]}x{self.hw[1]}"
        return hashlib.sha1(text.encode()).hexdigest()

    def entry(self, path) -> Path:
        k = self.key(path)
        return self.cache_dir / k[:2] / f"{k}.npy"

    def __call__(self, path) -> np.ndarray:
        try:
            target = self.entry(path)
        except FileNotFoundError:
            raise CompError(f"image {path} not found; check data.image_dir") from None
        if target.is_file():
            try:
                return np.load(target, allow_pickle=False)
            except (OSError, ValueError):
                pass  # a damaged entry is rewritten below
        img = decode_resized(path, self.hw)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, img, allow_pickle=False)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return img


def default_cache_dir(data_cfg: dict, hw) -> Path:
    return Path(data_cfg["image_dir"]).resolve().parent / ".comp_cache" / f"{int(hw[0])}x{int(hw[1])}"


def make_reader(data_cfg: dict, hw):
    """The reader for ``data.cache`` ('memory' or 'disk'); 'none' gives a plain decode + resize reader."""
    mode = data_cfg.get("cache", "none")
    if mode == "memory":
        return MemoryReader(hw)
    if mode == "disk":
        cache_dir = Path(data_cfg["cache_dir"]) if data_cfg.get("cache_dir") else default_cache_dir(data_cfg, hw)
        return DiskReader(cache_dir, hw)
    if mode == "none":
        return ResizeReader(hw)
    raise CompError(f"config key 'data.cache' must be one of none, memory, disk, got {mode!r}")


class ResizeReader:
    """No cache: decode and resize every call (the baseline the benchmark compares against)."""

    def __init__(self, hw):
        self.hw = (int(hw[0]), int(hw[1]))

    def __call__(self, path) -> np.ndarray:
        return decode_resized(path, self.hw)
