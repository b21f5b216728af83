"""Benchmark: epoch-2 input-pipeline images/s with no cache, the disk cache and the memory cache.

Writes ~1500 Fashion-MNIST images upscaled to 128 px as JPEGs into a temp folder, then for each reader
runs three passes (epoch 1 fills the cache) of decode -> resize -> train augmentation -> collated batch
and reports the best of passes 2-3 (shared CPUs are noisy), with ratios against decoding every epoch. num_workers=0 (the memory cache
is per process; workers restart each epoch).

Usage: python benchmarks/bench_data.py [--n 1500] [--size 128] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.augment import pipelines  # noqa: E402
from comp.cache import make_reader  # noqa: E402
from comp.data import ImageDataset  # noqa: E402
from comp.diagnostics.bench_data import loader_images_per_s  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def fashion_images(n: int) -> np.ndarray:
    with gzip.open(FASHION, "rb") as fh:
        raw = fh.read()
    count, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    hw = (args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="comp-bench-data-") as tmp:
        img_dir = Path(tmp) / "train"
        img_dir.mkdir()
        paths = []
        for i, img in enumerate(fashion_images(args.n)):
            p = img_dir / f"{i:05d}.jpg"
            Image.fromarray(img).convert("RGB").resize(hw, Image.BILINEAR).save(p, quality=90)
            paths.append(p)
        targets = np.zeros(len(paths), dtype=np.int64)
        aug = {"train": [{"name": "HorizontalFlip", "p": 0.5}], "valid": []}
        train_tf, _ = pipelines(aug, hw, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        print(f"{len(paths)} JPEGs {args.size}x{args.size}, batch {args.batch_size}, num_workers=0, "
              f"train aug HorizontalFlip+Normalize; epoch-2+ images/s (best of 2 passes)")
        results = {}
        for mode in ("none", "disk", "memory"):
            reader = make_reader({"cache": mode, "image_dir": str(img_dir), "cache_dir": f"{tmp}/cache"}, hw)
            ds = ImageDataset(paths, targets, train_tf, reader=reader)
            t0 = time.perf_counter()
            results[mode] = loader_images_per_s(ds, range(len(paths)), args.batch_size, 0, passes=3)
            print(f"  {mode:<7} {results[mode]:8.0f} img/s   x{results[mode] / results.get('none', results[mode]):.2f} "
                  f"vs decode every epoch   (all passes {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
