"""Benchmark: a multi-label and a regression competition built from real images, comp's recipe against a plain script.

Both competitions are grids of real Fashion-MNIST garments (Debian's dataset-fashion-mnist), grouped by "shop":
every shop draws its grids from a small pool of garment photos of its own, so two grids of one shop share
garments, and a split that ignores shops puts copies of a training photo in validation.

- multilabel: 2x2 grids, each cell a garment (p=0.75) or empty; the labels are the garment classes present
  (one to four, none when every cell is empty); scored by F2 at thresholds fitted on OOF (Amazon style).
- regression: 3x3 grids, each cell a garment (p=0.5) or empty; the target is the number of upper-body garments
  (T-shirt, pullover, coat, shirt), 0-9; scored by RMSE.

Held-out images come from the official test split (other garments, other shops); their targets never reach comp.

Rows per competition:
- ``comp``: two backbones, 5-fold stratified group k-fold, hflip TTA, hill-climb blend (its honest CV, nested);
- ``plain``: the script a competitor writes first: one backbone, one random 80/20 split that ignores shops, no
  TTA, the score on its own validation part as "CV" (F2 at 0.5 thresholds for the multi-label task).

Columns: CV, held-out score, their gap, and wall time.

    python -m benchmarks.bench_tasks            # the README run
    python -m benchmarks.bench_tasks --quick    # smoke run

Data and runs go to ``.bench/tasks`` (git-ignored); a rerun reuses finished folds and data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from benchmarks.bench_ensemble import FMNIST_CLASSES, FMNIST_DIR, _idx
from comp import run as artifacts
from comp._tables import format_table
from comp.config import load_config
from comp.ensembling import run_ensemble
from comp.inference import predict_run
from comp.metrics import get_metric
from comp.training import train_folds

UPPER = {0, 2, 4, 6}  # T-shirt/top, Pullover, Coat, Shirt
LABELS = [c.replace("/", "-").replace(" ", "_") for c in FMNIST_CLASSES]  # tags hold no spaces


# ---------------------------------------------------------------- the competitions


def _grid(images: np.ndarray, cells: list[int | None], side: int) -> Image.Image:
    out = np.zeros((28 * side, 28 * side), np.uint8)
    for k, src in enumerate(cells):
        if src is not None:
            r, c = divmod(k, side)
            out[28 * r : 28 * r + 28, 28 * c : 28 * c + 28] = images[src]
    return Image.fromarray(out, mode="L")


def make_competition(out: Path, kind: str, n_shops: int, per_shop: int, n_test: int, seed: int = 0) -> Path:
    """train/, test/, train.csv (id, target, shop), sample_submission.csv, test_labels.csv (written last)."""
    if (out / "test_labels.csv").is_file():
        return out
    side, p_fill = (2, 0.75) if kind == "multilabel" else (3, 0.5)
    rng = np.random.default_rng(seed)
    for split, src, shops, per in (("train", "train", n_shops, per_shop), ("test", "t10k", n_test, 1)):
        images = _idx(FMNIST_DIR / f"{src}-images-idx3-ubyte.gz")
        labels = _idx(FMNIST_DIR / f"{src}-labels-idx1-ubyte.gz")
        order = rng.permutation(len(labels))
        (out / split).mkdir(parents=True, exist_ok=True)
        rows, used = [], 0
        for s in range(shops):
            pool = order[used : used + 6]  # the shop's own garment photos
            used += 6
            for v in range(per):
                cells = [int(rng.choice(pool)) if rng.random() < p_fill else None for _ in range(side * side)]
                rid = f"{split[:2]}{s:04d}_{v}"
                _grid(images, cells, side).save(out / split / f"{rid}.png")
                present = [int(labels[c]) for c in cells if c is not None]
                if kind == "multilabel":
                    target = " ".join(LABELS[k] for k in sorted(set(present)))
                else:
                    target = sum(k in UPPER for k in present)
                rows.append({"id": rid, "target": target, "shop": f"{split[:2]}{s:04d}"})
        df = pd.DataFrame(rows)
        if split == "train":
            artifacts.write_csv(out / "train.csv", df)
        else:
            blank = "" if kind == "multilabel" else 0
            artifacts.write_csv(out / "sample_submission.csv", df[["id"]].assign(target=blank))
            artifacts.write_csv(out / "test_labels.csv", df)
    return out


def config(data_dir: Path, kind: str, epochs: int) -> dict:
    task = {"task": "multilabel", "metric": "f2"} if kind == "multilabel" else {"task": "regression", "metric": "rmse"}
    return {
        "seed": 3, **task,
        "data": {"train_csv": "train.csv", "image_dir": "train", "label_column": "target", "group_column": "shop",
                 "image_ext": ".png", "test_image_dir": "test", "sample_submission": "sample_submission.csv",
                 "classes": LABELS if kind == "multilabel" else None},
        "folds": {"n_splits": 5, "seed": 3},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.003, "warmup_epochs": 0.5, "weight_decay": 0.01},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "models": [{"name": "test_efficientnet_gn", "id": "effnet", "image_size": 64},
                   {"name": "test_convnext", "id": "convnext", "image_size": 64, "lr": 0.002}],
        "predict": {"tta": ["hflip"], "engine": "torch"},
    }  # fmt: skip


def held_out(data_dir: Path, kind: str) -> tuple[np.ndarray, list[str]]:
    """The held-out targets in the order of the test table: (n, labels) 0/1 or (n, 1) counts."""
    df = pd.read_csv(data_dir / "test_labels.csv", dtype=str, keep_default_na=False)
    if kind == "multilabel":
        Y = np.array([[lab in row.split() for lab in LABELS] for row in df["target"]], dtype=np.float64)
        return Y, list(df["id"])
    return df["target"].astype(float).to_numpy()[:, None], list(df["id"])


# ---------------------------------------------------------------- comp's recipe


def comp_recipe(data_dir: Path, run_root: Path, kind: str, epochs: int) -> dict:
    raw = config(data_dir, kind, epochs)
    cfg = load_config(raw, base_dir=data_dir.resolve())
    run_dir = run_root / f"{kind}-comp"
    t0 = time.perf_counter()
    train_folds(cfg, run_dir, resume=True, progress=False)
    predict_run(run_dir, out=run_root / f"{kind}-comp.csv", progress=False)
    blend = run_ensemble(
        [artifacts.RunDir(run_dir).model_dir(m) for m in ("effnet", "convnext")],
        method="hill_climb",
        name=f"{kind}-blend",
        out=run_root / f"{kind}-blend.csv",
    )
    seconds = time.perf_counter() - t0
    metric = get_metric(cfg.metric, cfg.task)
    y, ids = held_out(data_dir, kind)
    blend_run = artifacts.RunDir(blend.run_dir)
    test = blend_run.read_test(blend.name).reorder(ids)
    decision = blend_run.read_metrics(blend.name).extra.get("decision")
    return {"cv": blend.cv, "held_out": metric(y, test.probs, decision), "seconds": seconds}


# ---------------------------------------------------------------- the plain script


def plain_script(data_dir: Path, kind: str, epochs: int, seed: int = 0) -> dict:
    """One timm model, one random 80/20 split that ignores shops, a hand-written loop."""
    import timm
    import torch.nn.functional as F

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    df = pd.read_csv(data_dir / "train.csv", dtype=str, keep_default_na=False)

    def read(folder: Path, ids) -> torch.Tensor:
        arr = np.stack([np.asarray(Image.open(folder / f"{i}.png").convert("RGB").resize((64, 64))) for i in ids])
        return (torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25

    if kind == "multilabel":
        y = torch.tensor([[lab in row.split() for lab in LABELS] for row in df["target"]], dtype=torch.float32)
    else:
        y = torch.tensor(df["target"].astype(float).to_numpy()[:, None], dtype=torch.float32)
    x = read(data_dir / "train", df["id"])
    perm = np.random.default_rng(seed).permutation(len(df))
    cut = int(0.8 * len(df))
    tr, va = perm[:cut], perm[cut:]
    model = timm.create_model("test_efficientnet_gn", num_classes=y.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.01)
    mean, std = y[tr].mean(0), y[tr].std(0).clamp_min(1e-6)
    for _ in range(epochs):
        model.train()
        for b in np.array_split(np.random.default_rng(_).permutation(tr), max(1, len(tr) // 32)):
            out = model(x[b])
            loss = (
                F.binary_cross_entropy_with_logits(out, y[b])
                if kind == "multilabel"
                else F.mse_loss(out, (y[b] - mean) / std)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()

    @torch.no_grad()
    def predict(images: torch.Tensor) -> np.ndarray:
        model.eval()
        out = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
        return (torch.sigmoid(out) if kind == "multilabel" else out * std + mean).numpy()

    metric = get_metric(
        "f2" if kind == "multilabel" else "rmse", "multilabel" if kind == "multilabel" else "regression"
    )
    half = {"thresholds": [0.5] * y.shape[1]} if kind == "multilabel" else None
    cv = metric(y[va].numpy(), predict(x[va]), half)
    y_test, ids = held_out(data_dir, kind)
    score = metric(y_test, predict(read(data_dir / "test", ids)), half)
    return {"cv": cv, "held_out": score, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke run)")
    ap.add_argument("--root", type=Path, default=Path(".bench/tasks"))
    ap.add_argument("--shops", type=int, default=160)
    ap.add_argument("--per-shop", type=int, default=4)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--fresh", action="store_true", help="delete the runs first (keep the built data)")
    args = ap.parse_args(argv)
    if not FMNIST_DIR.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist")
    if args.quick:
        args.shops, args.per_shop, args.test, args.epochs = 30, 3, 60, 1
        args.root = args.root / "quick"
    runs = args.root / "runs"
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in ("multilabel", "regression"):
        data = make_competition(args.root / kind, kind, args.shops, args.per_shop, args.test)
        metric = "F2 (samples)" if kind == "multilabel" else "RMSE"
        recipes = (
            ("comp: 2 backbones, group 5-fold, TTA, blend", comp_recipe, (data, runs, kind, args.epochs)),
            ("plain: 1 backbone, random 80/20 split", plain_script, (data, kind, args.epochs)),
        )
        for name, fn, fn_args in recipes:
            r = fn(*fn_args)
            rows.append(
                {
                    "competition": kind,
                    "metric": metric,
                    "recipe": name,
                    "cv": r["cv"],
                    "held_out": r["held_out"],
                    "gap": r["cv"] - r["held_out"],
                    "time_s": r["seconds"],
                }
            )
            print(format_table(rows[-1:]), file=sys.stderr, flush=True)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
