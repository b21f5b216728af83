"""Benchmark: every stage that does not train, at 10k, 100k (and, with --sizes, 500k) rows: seconds, peak MB, growth.

A synthetic competition per size: tiny distinct 16x16 PNGs (1% near copies of another image, some across
groups), groups of about four images, 10 classes, 6 tags, an ordinal score; a test set a fifth the size. The
stages that do not read pixels get a run folder of three models' precomputed OOF and test predictions per task
(classification, multilabel, regression scored by QWK, a metric with a fitted decision).

Stages, each timed alone in this process:
  table rows / csv / layout  load_train_table from train.csv: the rows / with the image checks / from a data.layout
  folds cls|ml|reg           assign_folds with groups: StratifiedGroupKFold, multilabel groups, regression bins
  folds cls sklearn          sklearn's own StratifiedGroupKFold on the same rows (the same folds, checked)
  oof cls|ml|reg             score_oof (nested CV for QWK/F-beta) + writing oof.csv and metrics.json
  merge folds+tta            merge_probs of 5 folds x 2 TTA views of the test rows (mean and geometric)
  predict folds+tta          predict's loop: test images decoded once, 5 fold runners x 2 views, merged per batch
  blend <method>             run_ensemble over the three models: member loading, nested CV, the blend run written
  pseudo cls|ml|reg          pseudo_label from a model's test.csv
  ledger                     rebuild of runs.csv and submissions.csv over the run folders
  submission                 make_submission + write_submission (validated against sample_submission.csv)
  near_pairs / eda           the near-duplicate index on the train and test dHashes / run_eda, every check
  epoch data path            one epoch of comp's training DataLoader (decode, augment, batch) into a tiny model

Peak MB is the growth of the process's resident memory during the stage (its high-water mark, reset before each
stage through /proc/self/clear_refs, after returning freed memory with malloc_trim), so it counts numpy, pandas
and Python objects alike. ``cpu s`` is the CPU time of this process (all its threads) during the stage: on a box
shared with other work the wall seconds swell with the load, the CPU seconds much less. ``growth`` is the
exponent k in CPU time ~ n^k between consecutive sizes (1: linear; n log n from 10k to 100k reads about 1.1);
small stages are dominated by fixed costs and read low.

Sizes above ``--pixels-max`` (100k) get no image files: the stages that read them are left out there, and the
near-duplicate index runs on the dHashes of the same synthetic images computed in memory.

Usage: python benchmarks/bench_scale_rows.py [--sizes 10000,100000[,500000]] [--pixels-max N] [--stages blend,eda,...]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp._tables import format_table  # noqa: E402
from comp.config import load_config  # noqa: E402
from comp.run import Metrics, Predictions, RunDir  # noqa: E402

CLASSES = [f"c{k}" for k in range(10)]
TAGS = [f"t{k}" for k in range(6)]
GRADES = [0, 1, 2, 3, 4]
FOLDS = 5
MODELS = ("m0", "m1", "m2")
TASKS = {"cls": "classification", "ml": "multilabel", "reg": "regression"}
METRIC = {"cls": "accuracy", "ml": "micro_f1", "reg": "qwk"}
LABEL = {"cls": "label", "ml": "tags", "reg": "score"}


# -- memory ---------------------------------------------------------------------------------------------------
_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measure(fn) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, peak MB above the resident memory at the start) of ``fn()``."""
    if _libc is not None:
        _libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return seconds, cpu, max(0, _status_kb("VmHWM") - before) / 1024


# -- the synthetic competition ----------------------------------------------------------------------------------
def write_images(folder: Path, n: int, rng: np.random.Generator, files: bool = True) -> np.ndarray:
    """n distinct 16x16 images, 1% near copies of an earlier one, written as <index>.png unless ``files`` is
    off (only their dHashes are used then); returns the dHashes."""
    from comp.diagnostics._eda import dhash

    folder.mkdir(parents=True)
    pixels = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    copies = rng.choice(np.arange(n // 2, n), n // 100, replace=False)
    pixels[copies] = np.clip(
        pixels[copies - n // 2].astype(np.int16) + rng.integers(-3, 4, (len(copies), 16, 16, 3)), 0, 255
    )
    for i in range(n if files else 0):
        ok, buf = cv2.imencode(".png", pixels[i])
        (folder / f"{i}.png").write_bytes(buf.tobytes())
    return np.array([dhash(im) for im in pixels], dtype=np.uint64)


def write_competition(root: Path, n: int, seed: int = 0, *, files: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    n_test = n // 5
    hashes = np.concatenate(
        [write_images(root / "train", n, rng, files), write_images(root / "test", n_test, rng, files)]
    )
    ids = np.arange(n).astype(str)
    y = rng.integers(0, len(CLASSES), n)
    tags = rng.random((n, len(TAGS))) < 0.25
    tags[~tags.any(1), 0] = True
    train = pd.DataFrame(
        {
            "id": ids,
            "label": np.asarray(CLASSES)[y],
            "tags": [" ".join(np.asarray(TAGS)[row]) for row in tags],
            "score": rng.integers(0, len(GRADES), n),
            "group": rng.integers(0, n // 4, n),
        }
    )
    train.to_csv(root / "train.csv", index=False)
    test_ids = np.arange(n_test).astype(str)
    sample = pd.DataFrame({"id": test_ids, "label": CLASSES[0]})
    sample.to_csv(root / "sample_submission.csv", index=False)
    return {"train": train, "test_ids": test_ids, "hashes": hashes}


def config_dict(root: Path, key: str, *, layout: bool = False) -> dict:
    data: dict = {
        "num_workers": 0,
        "group_column": "group",
        "image_ext": ".png",
        "test_image_dir": "test",
        "label_column": LABEL[key],
    }
    if layout:
        data.update(
            layout={"csv": "train.csv", "folder": "train", "files": "{id}.png", "id": "{id}", "group": "{group}"}
        )
        data.update(root=str(root), id_column="id")
    else:
        data.update(train_csv="train.csv", image_dir="train")
    if key == "cls":
        data["sample_submission"] = "sample_submission.csv"
    else:
        data["test_csv"] = "sample_submission.csv"
    return {
        "seed": 0,
        "task": TASKS[key],
        "metric": METRIC[key],
        "data": data,
        "folds": {"n_splits": FOLDS, "seed": 0},
        "train": {"epochs": 1, "batch_size": 256},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "models": [{"name": "test_efficientnet", "id": m, "image_size": 16, "pretrained": False} for m in MODELS],
    }


def load(root: Path, key: str, **kw):
    path = root / f"{key}{'-layout' if kw.get('layout') else ''}.yaml"
    path.write_text(yaml.safe_dump(config_dict(root, key, **kw), sort_keys=False))
    return load_config(path)


def predictions(key: str, n: int, rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """Noisy predictions that track ``truth`` (class indices, a tag matrix, grades)."""
    if key == "cls":
        logits = rng.normal(0, 1, (n, len(CLASSES)))
        logits[np.arange(n), truth] += 1.5
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)
    if key == "ml":
        return np.clip(0.5 * truth + rng.random(truth.shape) * 0.6, 0, 1)
    return (truth + rng.normal(0, 0.7, n))[:, None]


def truth_of(key: str, train: pd.DataFrame) -> np.ndarray:
    if key == "cls":
        return pd.Index(CLASSES).get_indexer(train["label"])
    if key == "ml":
        return np.array([[t in s.split() for t in TAGS] for s in train["tags"]], dtype=np.float64)
    return train["score"].to_numpy(np.float64)


def write_run(runs: Path, root: Path, key: str, comp: dict, folds: np.ndarray) -> RunDir:
    """A finished run folder of three models' OOF and test predictions (no checkpoints: nothing here trains)."""
    cfg = load(root, key)
    run = RunDir(runs / key)
    run.root.mkdir(parents=True)
    run.save_config(cfg)
    train = comp["train"]
    run.write_folds(train["id"].to_numpy(), folds, "id")
    truth = truth_of(key, train)
    classes = {"cls": CLASSES, "ml": TAGS, "reg": ["score"]}[key]
    targets = np.asarray(CLASSES, dtype=object)[truth] if key == "cls" else truth.reshape(len(train), -1)
    n_test = len(comp["test_ids"])
    for k, m in enumerate(MODELS):
        rng = np.random.default_rng(100 + k)
        run.model_dir(m).mkdir(parents=True)
        oof = Predictions(
            train["id"].to_numpy(dtype=object), classes, predictions(key, len(train), rng, truth), folds, targets, "id"
        )
        run.write_oof(m, oof)
        fake = truth[rng.integers(0, len(truth), n_test)]
        run.write_test(
            m,
            Predictions(comp["test_ids"].astype(object), classes, predictions(key, n_test, rng, fake), id_column="id"),
        )
        run.write_metrics(m, Metrics(METRIC[key], True, 0.0, [0.0] * FOLDS))
    return run


# -- the stages ---------------------------------------------------------------------------------------------------
def epoch_data_path(cfg) -> None:
    """One epoch of the fold trainer's input pipeline (comp's dataset, train transform, loader) into a tiny net."""
    import torch

    from comp.data._augment import pipelines
    from comp.data._table import ImageDataset, load_train_table
    from comp.training._loaders import image_reader, make_loader

    torch.set_num_threads(1)
    table = load_train_table(cfg.data, check_images=False, task=cfg.task)
    hw = (16, 16)
    train_tf, _ = pipelines(cfg.augment, hw, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ds = ImageDataset(table.paths, table.targets, train_tf, image_reader(cfg.data, hw, table.paths, Path(".")))
    loader = make_loader(ds, np.arange(len(ds)), 256, True, 0, 0, False, torch.device("cpu"))
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, len(CLASSES)),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def predict_views(paths: list[Path]) -> np.ndarray:
    """predict's loop over the test images: every fold's runner on both TTA views of each batch, merged and
    averaged over folds as ``predict_run`` does (the runners are linear maps in numpy: no model is timed)."""
    from comp.data._augment import eval_pipeline
    from comp.inference._predict import run_views

    def runner(seed: int):
        w = np.random.default_rng(seed).normal(size=(3 * 16 * 16, len(CLASSES))).astype(np.float32)

        def run(x: np.ndarray) -> np.ndarray:
            z = x.reshape(len(x), -1) @ w
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        return run

    tf = eval_pipeline((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    _, merged = run_views([runner(k) for k in range(FOLDS)], paths, tf, ["hflip"], "mean", 256, runner_mean=True)
    return merged[0]


def sklearn_folds(y: np.ndarray, groups: np.ndarray, ours: np.ndarray) -> None:
    """sklearn's own StratifiedGroupKFold on the rows ``folds cls`` splits, beside it: the folds must be the same."""
    from sklearn.model_selection import StratifiedGroupKFold

    ref = np.full(len(y), -1)
    for k, (_, valid) in enumerate(StratifiedGroupKFold(FOLDS, shuffle=True, random_state=0).split(y, y, groups)):
        ref[valid] = k
    assert np.array_equal(ref, ours), "assign_folds must place every group where sklearn does"


PIXELS = ("table csv", "table layout", "predict folds+tta", "eda", "epoch data path")  # stages that read files


def stages(root: Path, runs: Path, comp: dict) -> dict:
    from comp.data._folds import assign_folds
    from comp.data._table import load_test_table, load_train_table
    from comp.diagnostics._eda import run_eda
    from comp.diagnostics._near import near_pairs
    from comp.ensembling import run_ensemble
    from comp.inference._tta import merge_probs
    from comp.ledger import rebuild
    from comp.metrics import get_metric
    from comp.pseudo import pseudo_label
    from comp.submission._format import make_submission, write_submission
    from comp.training._assemble import score_oof

    cfgs = {k: load(root, k) for k in TASKS}
    tables = {k: load_train_table(cfgs[k].data, check_images=False, task=TASKS[k]) for k in TASKS}
    folds = {k: assign_folds(tables[k].targets, tables[k].groups, FOLDS, 0, task=TASKS[k]) for k in TASKS}
    run = {k: write_run(runs, root, k, comp, folds["cls"]) for k in TASKS}
    n_test = len(comp["test_ids"])
    out: dict = {}
    out["table rows"] = lambda: load_train_table(cfgs["cls"].data, check_images=False, task="classification")
    out["table csv"] = lambda: load_train_table(cfgs["cls"].data, check_images=True, task="classification")
    layout = load(root, "cls", layout=True)
    out["table layout"] = lambda: load_train_table(layout.data, check_images=False, task="classification")
    for k in TASKS:
        out[f"folds {k}"] = lambda k=k: assign_folds(tables[k].targets, tables[k].groups, FOLDS, 0, task=TASKS[k])
    out["folds cls sklearn"] = lambda: sklearn_folds(tables["cls"].targets, tables["cls"].groups, folds["cls"])
    for k in TASKS:

        def oof(k=k):
            r = run[k]
            pred = r.read_oof("m0")
            cv, per_fold, extra = score_oof(
                get_metric(METRIC[k], TASKS[k]), pred.y, pred.probs, pred.folds, FOLDS, pred.classes
            )
            r.write_oof("m1", pred)
            r.write_metrics("m1", Metrics(METRIC[k], True, cv, per_fold, extra=extra))

        out[f"oof {k}"] = oof
    views = np.random.default_rng(0).dirichlet(np.ones(len(CLASSES)), size=(FOLDS * 2, n_test))
    out["merge folds+tta"] = lambda: [merge_probs(views, m) for m in ("mean", "geometric")]
    _, test_paths = load_test_table(cfgs["cls"].data, check_images=False)
    out["predict folds+tta"] = lambda: predict_views(test_paths)
    members = [run["cls"].model_dir(m) for m in MODELS]
    for method in ("mean", "weighted", "rank", "geometric", "hill_climb", "stacking"):
        out[f"blend {method}"] = lambda method=method: run_ensemble(
            members, method=method, name=f"b-{method}", out=runs / f"b-{method}", submit=False
        )
    for k in ("ml", "reg"):
        ms = [run[k].model_dir(m) for m in MODELS]
        out[f"blend stacking {k}"] = lambda k=k, ms=ms: run_ensemble(
            ms, method="stacking", name=f"b-{k}", out=runs / f"b-stack-{k}", submit=False
        )
    pseudo_opts = {
        "cls": {"threshold": 0.5, "max_per_class": 1000},
        "ml": {"threshold": 0.8},
        "reg": {"max_rows": 1000},
    }
    for k in TASKS:
        out[f"pseudo {k}"] = lambda k=k: pseudo_label(
            run[k].model_dir("m0"), out=runs / f"pseudo-{k}.csv", **pseudo_opts[k]
        )
    out["ledger"] = lambda: rebuild(runs)

    def submission():
        test = run["cls"].read_test("m0")
        df = make_submission(test.ids, test.probs, CLASSES, root / "sample_submission.csv", "id")
        write_submission(df, runs / "submission.csv", root / "sample_submission.csv", CLASSES, "id")

    out["submission"] = submission
    hashes = comp["hashes"]
    n = len(tables["cls"].paths)
    out["near_pairs"] = lambda: (
        near_pairs(hashes[:n], hashes[:n], 5, same=True),
        near_pairs(hashes[:n], hashes[n:], 5, same=False),
    )
    out["eda"] = lambda: run_eda(cfgs["cls"], runs / "eda", progress=False)
    out["epoch data path"] = lambda: epoch_data_path(cfgs["cls"])
    return out


def growth(t0: float, t1: float, n0: int, n1: int) -> str:
    if t0 <= 0 or t1 <= 0:
        return "-"
    return f"{math.log(t1 / t0) / math.log(n1 / n0):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="training rows per synthetic competition (500000: ~30 min)")
    ap.add_argument("--stages", default="", help="comma-separated stage names (prefixes) to run; all by default")
    ap.add_argument("--keep", type=Path, default=None, help="keep the competitions under this folder")
    ap.add_argument(
        "--pixels-max",
        type=int,
        default=100_000,
        help="above this many rows no image files: only stages that read none",
    )
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    base = Path(tempfile.mkdtemp(prefix="bench_scale_rows_", dir=args.keep))
    results: dict[str, dict[int, tuple[float, float, float]]] = {}
    load = [os.getloadavg()[0]]
    try:
        for n in sizes:
            root = base / f"n{n}"
            t0 = time.perf_counter()
            files = n <= args.pixels_max
            comp = write_competition(root, n, files=files)
            print(f"n={n}: competition written in {time.perf_counter() - t0:.0f} s", flush=True)
            runs = root / "runs"
            runs.mkdir()
            for name, fn in stages(root, runs, comp).items():
                if (wanted and not any(name.startswith(w) for w in wanted)) or (name in PIXELS and not files):
                    continue
                sec, cpu, mb = measure(fn)
                results.setdefault(name, {})[n] = (sec, cpu, mb)
                load.append(os.getloadavg()[0])
                print(f"  {name:22s} {sec:8.2f} s {cpu:8.2f} cpu s {mb:8.0f} MB  load {load[-1]:.1f}", flush=True)
            if args.keep is None:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    rows = []
    for name, by_n in results.items():
        row: dict = {"stage": name}
        for n in sizes:
            sec, cpu, mb = by_n.get(n, (None, None, None))
            row[f"s @{n // 1000}k"] = "-" if sec is None else f"{sec:.2f}"
            row[f"cpu s @{n // 1000}k"] = "-" if cpu is None else f"{cpu:.2f}"
            row[f"MB @{n // 1000}k"] = "-" if mb is None else f"{mb:.0f}"
        for a, b in zip(sizes[:-1], sizes[1:]):
            if a in by_n and b in by_n:
                row[f"growth {a // 1000}k-{b // 1000}k"] = growth(by_n[a][1], by_n[b][1], a, b)
        rows.append(row)
    print(f"load average (1 min) at each stage's end: {min(load):.1f} to {max(load):.1f}")
    print(f"\ncpu cores: {os.cpu_count()}, load average now: {os.getloadavg()[0]:.1f}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
