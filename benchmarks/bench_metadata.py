"""Benchmark: images with tabular metadata. Image-only blend vs the gbdt stack without and with the metadata.

The competition is real Fashion-MNIST garments (Debian's dataset-fashion-mnist) with a table beside them:

- ``fabric`` (categorical): for the four upper-body classes the images confuse (T-shirt, pullover, coat,
  shirt) it names the class's own fabric 70% of the time and a random one of the four otherwise; for the other
  classes it is random (5% of the cells are empty). It carries what the images do not: which of the four.
- ``weight`` (numeric): pure noise (5% missing). It carries nothing; a stack that overfits it loses held-out.
- ``shop``: the group column (five garments per shop), so the stack also builds group-relative features.

Held-out rows come from the official test split with a table drawn by the same rule; their labels never
reach comp. Rows: each image-only member (two small timm backbones, 4-fold), their hill-climb blend, the gbdt
stack over the members' predictions only (``--no-metadata``), and over predictions + metadata + group features;
then the same backbones each with a metadata tower (``models[].metadata``), their hill-climb blend, and both
routes at once: the gbdt stack + metadata over the tower members.
Columns: honest CV (nested for blends), held-out accuracy, their gap, wall time of the step.

    python -m benchmarks.bench_metadata            # the README run
    python -m benchmarks.bench_metadata --quick    # smoke run

Data and runs go to ``.bench/metadata`` (git-ignored); a rerun reuses finished folds and data.
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

from benchmarks.bench_ensemble import FMNIST_CLASSES, FMNIST_DIR, fashion_sample
from comp import run as artifacts
from comp._tables import format_table
from comp.config import load_config
from comp.ensembling import run_ensemble
from comp.inference import predict_run
from comp.metrics import get_metric
from comp.training import train_folds

FABRIC = {0: "cotton", 2: "wool", 4: "leather", 6: "linen"}  # the upper-body classes the images confuse
OTHERS = ["cotton", "wool", "leather", "linen", "canvas"]
PER_SHOP = 5


def _table(labels: np.ndarray, rng: np.random.Generator, prefix: str) -> pd.DataFrame:
    n = len(labels)
    fabric = []
    for y in labels:
        if y in FABRIC and rng.random() < 0.7:
            fabric.append(FABRIC[int(y)])
        elif y in FABRIC:
            fabric.append(rng.choice(list(FABRIC.values())))
        else:
            fabric.append(rng.choice(OTHERS))
    fabric = np.where(rng.random(n) < 0.05, "", np.asarray(fabric, dtype=object))
    weight = np.round(rng.normal(300, 80, n), 1).astype(object)
    weight[rng.random(n) < 0.05] = ""
    shop = [f"{prefix}{i // PER_SHOP:04d}" for i in rng.permutation(n)]
    return pd.DataFrame({"fabric": fabric, "weight": weight, "shop": shop})


def make_competition(out: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """train/, test/ PNGs, train.csv (id, label, fabric, weight, shop), test.csv (id, fabric, weight, shop),
    sample_submission.csv, and test_labels.csv kept aside for scoring."""
    if (out / "test_labels.csv").is_file():
        return out
    rng = np.random.default_rng(seed)
    for split, src, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images, labels, pick = fashion_sample(rng, src, n)
        (out / split).mkdir(parents=True, exist_ok=True)
        ids = [f"{split[:2]}{i:05d}" for i in pick]
        for rid, i in zip(ids, pick):
            Image.fromarray(images[i], mode="L").save(out / split / f"{rid}.png")
        table = _table(labels[pick], rng, "s" if split == "train" else "t")
        df = pd.concat([pd.DataFrame({"id": ids}), table], axis=1)
        names = np.asarray(FMNIST_CLASSES)[labels[pick]]
        if split == "train":
            artifacts.write_csv(out / "train.csv", df.assign(label=names))
        else:
            artifacts.write_csv(out / "test.csv", df)
            artifacts.write_csv(out / "sample_submission.csv", pd.DataFrame({"id": ids, "label": FMNIST_CLASSES[0]}))
            artifacts.write_csv(out / "test_labels.csv", pd.DataFrame({"id": ids, "label": names}))  # marks it done
    return out


def config(epochs: int, folds: int, tower: dict | None = None) -> dict:
    """The benchmark's config; ``tower``: every model gets that metadata tower (``models[].metadata``)."""
    cfg = {
        "seed": 7,
        "metric": "accuracy",
        "data": {
            "train_csv": "train.csv",
            "image_dir": "train",
            "label_column": "label",
            "group_column": "shop",
            "test_csv": "test.csv",
            "test_image_dir": "test",
            "sample_submission": "sample_submission.csv",
            "classes": FMNIST_CLASSES,
            "features": ["fabric", "weight"],
            "categorical": ["fabric"],
        },
        "folds": {"n_splits": folds, "seed": 7},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "warmup_epochs": 0.3, "weight_decay": 0.01},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "predict": {"engine": "torch"},
        "models": [
            {"name": "test_efficientnet", "id": "effnet", "image_size": 32, "lr": 0.005},
            {"name": "test_convnext", "id": "convnext", "image_size": 32, "lr": 0.002},
        ],
    }
    if tower is not None:
        for m in cfg["models"]:
            m["metadata"] = dict(tower)
    return cfg


def held_out(data_dir: Path, run_dir: Path, model_id: str) -> float:
    truth = pd.read_csv(data_dir / "test_labels.csv", dtype=str)
    test = artifacts.RunDir(run_dir).read_test(model_id).reorder(list(truth["id"]))
    y = pd.Index(test.classes).get_indexer(truth["label"])
    return get_metric("accuracy", "classification")(y, test.probs)


TOWER = {"hidden": 32, "dropout": 0.1}


def _members(data: Path, runs: Path, args, kind: str) -> tuple[list[Path], list[dict]]:
    """Train (or resume) and predict one run of both backbones: image-only, or each with a metadata tower."""
    cfg = load_config(config(args.epochs, args.folds, TOWER if kind == "tower" else None), base_dir=data.resolve())
    run_dir = runs / kind
    t0 = time.perf_counter()
    train_folds(cfg, run_dir, resume=True, progress=False)
    predict_run(run_dir, out=runs / f"{kind}.csv", progress=False)
    train_s = time.perf_counter() - t0
    rd = artifacts.RunDir(run_dir)
    rows = []
    for m in cfg.models:
        cv = rd.read_metrics(m.model_id).cv
        what = "images" if kind == "images" else "images + metadata tower"
        rows.append(
            {"route": f"member {m.model_id} ({what})", "cv": cv, "held_out": held_out(data, run_dir, m.model_id)}
        )
    rows[0]["seconds"] = train_s
    return [rd.model_dir(m.model_id) for m in cfg.models], rows


def run(args) -> list[dict]:
    data = make_competition(args.root / "data", args.train, args.test)
    runs = args.root / "runs"
    if args.fresh and runs.exists():
        shutil.rmtree(runs)
    runs.mkdir(parents=True, exist_ok=True)
    members, rows = _members(data, runs, args, "images")
    towers, tower_rows = _members(data, runs, args, "tower")
    blends = (
        ("hill-climb blend (images)", "hill_climb", True, members),
        ("gbdt stack, predictions only", "gbdt", False, members),
        ("gbdt stack + metadata + group features", "gbdt", True, members),
        ("hill-climb blend (tower members)", "hill_climb", True, towers),
        ("both: gbdt stack + metadata over tower members", "gbdt", True, towers),
    )
    for i, (label, method, metadata, inputs) in enumerate(blends):
        if i == 3:
            rows.extend(tower_rows)
        name = f"{method}-{'meta' if metadata and method == 'gbdt' else 'images'}{'-tower' if inputs is towers else ''}"
        t0 = time.perf_counter()
        result = run_ensemble(inputs, method=method, name=name, metadata=metadata, out=runs / f"{name}.csv")
        rows.append(
            {
                "route": label,
                "cv": result.cv,
                "held_out": held_out(data, result.run_dir, result.name),
                "seconds": time.perf_counter() - t0,
            }
        )
    for r in rows:
        r["gap"] = r["cv"] - r["held_out"]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (smoke run)")
    ap.add_argument("--root", type=Path, default=Path(".bench/metadata"))
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--test", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--fresh", action="store_true", help="delete the runs first (keep the built data)")
    args = ap.parse_args(argv)
    if not FMNIST_DIR.is_dir():
        sys.exit("Fashion-MNIST not found: apt-get install -y dataset-fashion-mnist")
    if args.quick:
        args.train, args.test, args.epochs, args.folds = 300, 150, 1, 3
        args.root = args.root / "quick"
    rows = run(args)
    print(f"Fashion-MNIST + metadata: {args.train} train / {args.test} held-out images, {args.folds} folds, "
          f"{args.epochs} epochs; accuracy (higher is better)")  # fmt: skip
    print(format_table(rows, ["route", "cv", "held_out", "gap", "seconds"]))
    base = next(r for r in rows if r["route"].startswith("hill-climb"))
    for route in ("gbdt stack + metadata", "hill-climb blend (tower", "both"):
        r = next(r for r in rows if r["route"].startswith(route))
        print(f"{r['route']} vs image-only blend: held-out {r['held_out'] - base['held_out']:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
