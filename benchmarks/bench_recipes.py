"""Benchmark: the fine-tuning toolbox, each option against the same recipe without it, on real images.

The competition: single Fashion-MNIST garments (Debian's dataset-fashion-mnist) sold by "shops"; a shop's
photos share its lighting and framing (a brightness offset and a shift), so folds split by shop. As in many
real competitions the training table is imbalanced (five classes three times as frequent as the other five)
and its labels are noisy: a fifth of the rows carry a wrong label, and a ``votes`` column says how many of
three annotators agreed (1 on the wrong rows, 2 or 3 on the right ones), which ``data.weight_column`` can use.
The held-out images come from the official test split: balanced, clean, other shops; they never reach comp.
Scored by macro F1.

Rows: the base recipe (a tiny randomly initialised timm CNN, 32 px, 600 rows, 3 folds, 3 epochs; no pretrained weights
here, so layer-wise LR decay has nothing pretrained to protect), then each option alone. An option that makes
training slower is compared again with the base recipe given the same wall time (more epochs): the
``base @ equal time`` rows. To fit the time of a shared 2-core machine each recipe trains fold 0 of the 3-fold
split only: ``fold0`` is its validation score (not measured for the TTA rows, which predict the base fold's
model), ``held_out`` the score of that one model on the held-out images.

    python -m benchmarks.bench_recipes           # the README run (10-15 minutes on 2 cores shared with other work)
    python -m benchmarks.bench_recipes --quick   # smoke run

Data and runs go to ``.bench/recipes`` (git-ignored); each run starts fresh.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.bench_ensemble import FMNIST_CLASSES, FMNIST_DIR, _idx
from comp import run as artifacts
from comp._tables import format_table
from comp.config import load_config
from comp.inference import predict_run
from comp.metrics import get_metric
from comp.training import train_folds

FREQUENT = {0, 1, 2, 3, 4}  # drawn three times as often in the training table
NOISE = 0.2


def make_competition(out: Path, n_shops: int, per_shop: int, n_test: int, seed: int = 0) -> Path:
    """train/, test/, train.csv (id, label, shop, votes), sample_submission.csv, test_labels.csv (last)."""
    if (out / "test_labels.csv").is_file():
        return out
    rng = np.random.default_rng(seed)
    for split, src, shops, per in (("train", "train", n_shops, per_shop), ("test", "t10k", n_test, 1)):
        images = _idx(FMNIST_DIR / f"{src}-images-idx3-ubyte.gz")
        labels = _idx(FMNIST_DIR / f"{src}-labels-idx1-ubyte.gz")
        if split == "train":
            p = np.where(np.isin(labels, list(FREQUENT)), 3.0, 1.0)
            order = rng.choice(len(labels), size=shops * per, replace=False, p=p / p.sum())
        else:
            order = rng.choice(len(labels), size=shops * per, replace=False)
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for s in range(shops):
            light, dx, dy = rng.integers(-40, 40), rng.integers(-2, 3), rng.integers(-2, 3)
            for v in range(per):
                src_i = int(order[s * per + v])
                img = np.roll(np.clip(images[src_i].astype(int) + light, 0, 255), (dy, dx), axis=(0, 1))
                rid = f"{split[:2]}{s:04d}_{v}"
                Image.fromarray(img.astype(np.uint8), mode="L").save(out / split / f"{rid}.png")
                label, votes = int(labels[src_i]), int(rng.integers(2, 4))
                if split == "train" and rng.random() < NOISE:
                    label, votes = int((label + rng.integers(1, 10)) % 10), 1
                rows.append({"id": rid, "label": FMNIST_CLASSES[label], "shop": f"{split[:2]}{s:04d}", "votes": votes})
        df = pd.DataFrame(rows)
        if split == "train":
            artifacts.write_csv(out / "train.csv", df)
        else:
            artifacts.write_csv(out / "sample_submission.csv", df[["id"]].assign(label=FMNIST_CLASSES[0]))
            artifacts.write_csv(out / "test_labels.csv", df[["id", "label"]])
    return out


def base_config(epochs: int) -> dict:
    return {
        "seed": 5, "metric": "macro_f1",
        "data": {"train_csv": "train.csv", "image_dir": "train", "label_column": "label", "group_column": "shop",
                 "image_ext": ".png", "test_image_dir": "test", "sample_submission": "sample_submission.csv",
                 "classes": FMNIST_CLASSES},
        "folds": {"n_splits": 3, "seed": 5},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 0.004, "warmup_epochs": 0.5, "weight_decay": 0.01},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "models": [{"name": "test_efficientnet", "id": "eff", "image_size": 32}],
        "predict": {"engine": "torch", "batch_size": 128},
    }  # fmt: skip


def options(epochs: int) -> list[tuple[str, dict, list[str]]]:
    """(row name, train/data overrides, TTA views) of each option."""
    last = max(1, epochs - 2)
    return [
        ("base", {}, []),
        ("train.accum_steps: 2 (x 16 rows)", {"train.accum_steps": 2, "train.batch_size": 16}, []),
        ("train.layer_decay: 0.7, head_lr_scale: 3", {"train.layer_decay": 0.7, "train.head_lr_scale": 3.0}, []),
        (f"train.swa_start: {last}", {"train.swa_start": last, "train.swa_lr": 0.001}, []),
        ("train.size_schedule: 24 px, then 32", {"train.size_schedule": [[0, 24], [last, 32]]}, []),
        ("train.sampler: balanced", {"train.sampler": "balanced"}, []),
        ("data.weight_column: votes", {"data.weight_column": "votes"}, []),
        ("TTA scale:0.9, scale:1.1", {}, ["scale:0.9", "scale:1.1"]),
        ("TTA five_crop", {}, ["five_crop"]),
    ]


def _set(cfg: dict, key: str, value) -> None:
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node.setdefault(p, {})
    node[last] = value


def run_recipe(
    data: Path, runs: Path, name: str, over: dict, tta: list[str], epochs: int, base_train_s: float = 0.0
) -> dict:
    raw = base_config(epochs)
    for k, v in over.items():
        _set(raw, k, v)
    cfg = load_config(raw, base_dir=data.resolve())
    run_dir = runs / name.split(":")[0].replace(" ", "_").replace(".", "_").replace("@", "at")
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    if tta:  # TTA changes nothing in training: the base run's fold, predicted with the views
        shutil.copytree(runs / "base", run_dir)
        t0 -= base_train_s
    result = train_folds(cfg, run_dir, folds=[0], progress=False)  # a finished fold is only read back
    train_s = time.perf_counter() - t0
    predict_run(run_dir, tta=tta, out=runs / f"{run_dir.name}.csv", allow_missing_folds=True, progress=False)
    seconds = time.perf_counter() - t0
    truth = pd.read_csv(data / "test_labels.csv", dtype=str)
    test = artifacts.RunDir(run_dir).read_test("eff").reorder(list(truth["id"]))
    y = truth["label"].map({c: i for i, c in enumerate(FMNIST_CLASSES)}).to_numpy()
    metric = get_metric(cfg.metric, cfg.task)
    fold0 = float("nan") if tta else result.models["eff"].folds[0].score
    return {"fold0": fold0, "held_out": metric(y, test.probs), "train_s": train_s, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke run)")
    ap.add_argument("--root", type=Path, default=Path(".bench/recipes"))
    ap.add_argument("--shops", type=int, default=100)
    ap.add_argument("--per-shop", type=int, default=6)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)
    if not FMNIST_DIR.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist")
    if args.quick:
        args.shops, args.per_shop, args.test, args.epochs = 40, 4, 100, 2
        args.root = args.root / "quick"
    data = make_competition(args.root / "data", args.shops, args.per_shop, args.test)
    runs = args.root / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    base_train_s = 0.0
    for name, over, tta in options(args.epochs):
        r = run_recipe(data, runs, name, over, tta, args.epochs, base_train_s)
        base_train_s = base_train_s or r["train_s"]
        rows.append({"recipe": name, "epochs": args.epochs, **r, "time_vs_base": r["train_s"] / base_train_s})
        print(format_table(rows[-1:]), file=sys.stderr, flush=True)
    # options whose training took clearly longer: the base recipe again with as many more epochs as that time buys
    extra = sorted({round(args.epochs * r["time_vs_base"]) for r in rows if r["time_vs_base"] > 1.25})
    for epochs in [e for e in extra if e > args.epochs]:
        r = run_recipe(data, runs, f"base @ equal time ({epochs} epochs)", {}, [], epochs)
        rows.append({"recipe": "base @ equal time", "epochs": epochs, **r, "time_vs_base": r["train_s"] / base_train_s})
        print(format_table(rows[-1:]), file=sys.stderr, flush=True)
    base = rows[0]
    for r in rows:
        r["d_fold0"], r["d_held_out"] = r["fold0"] - base["fold0"], r["held_out"] - base["held_out"]
    cols = ["recipe", "epochs", "fold0", "held_out", "d_fold0", "d_held_out", "train_s", "seconds", "time_vs_base"]
    print(format_table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
