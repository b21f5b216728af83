"""Benchmark: the decoded-image cache against decoding every epoch, on real images.

Fashion-MNIST training images (real photos of clothes, /usr/share/datasets/fashion-mnist from Debian's
``dataset-fashion-mnist``) are written as JPEGs at a competition-like size (default 512x384, the size
of the face-mask photos), then read as training reads them at the model's size (default 224):

- ``load``: file -> RGB uint8 at the model size (what the cache replaces);
- ``epoch``: file -> train augmentation (flip, light affine, brightness/contrast) -> collated uint8 batch,
  exactly what train-folds' loaders do (normalisation happens on the device, after the loader).

For each cache mode (none, disk, memory) and worker count, three passes over the same images in a
fixed order; pass 1 fills the cache as epoch 1 of training does, and the figure is the best of passes
2-3 (shared CPUs are noisy). Ratios are against ``none`` measured in the same run.

Usage: python benchmarks/bench_data.py [--n 3000] [--src 512x384] [--size 224] [--workers 0,2] [--batch-size 32]
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

from comp._tables import format_table  # noqa: E402
from comp.config import AugmentConfig, DataConfig  # noqa: E402
from comp.data._augment import pipelines  # noqa: E402
from comp.data._cache import make_reader  # noqa: E402
from comp.data._table import ImageDataset  # noqa: E402
from comp.diagnostics._bench_data import loader_images_per_s  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
AUG = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "Affine", "translate_percent": [-0.05, 0.05], "rotate": [-10, 10], "p": 0.5},
    {"name": "RandomBrightnessContrast", "p": 0.5},
]


def fashion_images(n: int) -> np.ndarray:
    if not FASHION.is_file():
        sys.exit(f"{FASHION} not found: apt-get install dataset-fashion-mnist")
    with gzip.open(FASHION, "rb") as fh:
        raw = fh.read()
    count, rows, cols = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, rows, cols)[:n]


class LoadOnly(ImageDataset):
    """The reader alone: path -> uint8 array at the model size, as a tensor-free batch element."""

    def __getitem__(self, i):
        return self.reader(self.paths[i]), 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--src", default="512x384", help="source JPEG size WxH")
    ap.add_argument("--size", type=int, default=224, help="model input size (square)")
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    src_w, src_h = (int(v) for v in args.src.lower().split("x"))
    hw = (args.size, args.size)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="comp-bench-data-") as tmp:
        img_dir = Path(tmp) / "train"
        img_dir.mkdir()
        paths = []
        for i, img in enumerate(fashion_images(args.n)):
            p = img_dir / f"{i:05d}.jpg"
            Image.fromarray(img).convert("RGB").resize((src_w, src_h), Image.BICUBIC).save(p, quality=90)
            paths.append(p)
        targets = np.zeros(len(paths), dtype=np.int64)
        train_tf, _ = pipelines(
            AugmentConfig(train=AUG, valid=[]), hw, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), normalize=False
        )
        print(
            f"{len(paths)} Fashion-MNIST JPEGs at {src_w}x{src_h} -> {hw[0]}x{hw[1]}, batch {args.batch_size}; "
            "images/s over epochs 2-3 (best), pass 1 fills the cache"
        )
        rows = []
        for stage in ("load", "epoch"):
            for w in workers:
                base = None
                for mode in ("none", "disk", "memory"):
                    reader = make_reader(
                        DataConfig(cache=mode, image_dir=str(img_dir), cache_dir=f"{tmp}/cache-{stage}-{w}"), hw, paths
                    )
                    cls = LoadOnly if stage == "load" else ImageDataset
                    ds = cls(paths, targets, train_tf, reader=reader)
                    t0 = time.perf_counter()
                    rate = loader_images_per_s(ds, range(len(paths)), args.batch_size, w, passes=3)
                    base = base or rate
                    rows.append(
                        {
                            "stage": stage,
                            "workers": w,
                            "cache": mode,
                            "img/s": f"{rate:.0f}",
                            "x none": f"{rate / base:.2f}",
                            "all passes s": f"{time.perf_counter() - t0:.1f}",
                        }
                    )
                    print("  " + " ".join(str(c) for c in rows[-1].values()), flush=True)
                    if mode == "memory":
                        reader.file.unlink(missing_ok=True)  # each worker count starts cold
        print()
        print(format_table(rows))
        for stage, what in (
            ("load", "loading (decode -> resized uint8, what the cache replaces)"),
            ("epoch", "whole epochs (loading + train augmentation + batching)"),
        ):
            worst = min(float(r["x none"]) for r in rows if r["stage"] == stage and r["cache"] != "none")
            print(
                f"cached {what} vs decoding every epoch: at least x{worst:.2f} (goal x3: {'met' if worst >= 3 else 'not met'})"
            )


if __name__ == "__main__":
    main()
