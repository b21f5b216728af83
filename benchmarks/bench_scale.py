"""Benchmark: several processes against one process on the same CPU cores, and whether their results agree.

Measured side by side in one run on the digits demo competition (the same folds of its 5-fold split):
  1x2 threads   one process, two threads: ``train_folds`` in this process, as ``comp train-folds`` on a 2-core box
  1x1 thread    one process, one thread: the reference the fold workers must equal bit for bit
  2x1 workers   fold-parallel: ``train_folds(devices=["cpu", "cpu"])``, two worker processes, one thread each
  2x1 DDP       ``comp train-folds --ddp 2``: two gloo ranks, one thread each, training every fold together
  2x1 Ray       ``train_folds(ray=True, ray_cpus=1)`` on a local Ray cluster of 2 CPUs: one task per fold, one
                thread each, artifacts shipped back to the driver as bytes (the cluster's start is timed apart:
                a cluster normally runs already)

``wall_s`` is the whole call (worker and rank start-up included); ``epoch_s`` is the median epoch time
(training + validation, from each fold's history) after the first epoch. ``same as 1x1``: every fold checkpoint
and OOF probability equal exactly. ``max |dp| vs 1x2``: CPU kernels split their sums by thread count, so
runs with other threads per process differ in the last bits, which training amplifies. DDP trains on batches
split over two ranks, so its results are a different (equally valid) run.

The load average is printed before and after: on a shared machine, other processes competing for the cores
hurt multi-threaded runs far more than single-threaded ones, so compare ratios only from quiet runs.

Usage: python benchmarks/bench_scale.py [--model resnet18] [--size 64] [--groups 150] [--epochs 3] [--folds 0,1] [--no-ray]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp._tables import format_table  # noqa: E402
from comp.config import load_config  # noqa: E402
from comp.demo import make_digits_competition  # noqa: E402
from comp.training import launch_ddp, train_folds  # noqa: E402


def write_config(data: Path, args) -> Path:
    path = data / "bench.yaml"
    path.write_text(f"""seed: 0
metric: macro_f1
device: cpu
data: {{train_csv: train.csv, image_dir: train, group_column: digit, image_ext: .png, test_image_dir: test}}
folds: {{n_splits: 5, seed: 0}}
train: {{epochs: {args.epochs}, batch_size: {args.batch_size}, lr: 0.003, warmup_epochs: 0.5, weight_decay: 0.01}}
augment:
  train: [{{name: HorizontalFlip, p: 0.5}}]
models: [{{name: {args.model}, id: m, image_size: {args.size}}}]
""")
    return path


def epoch_s(run: Path, folds: list[int]) -> float:
    times = []
    for k in folds:
        hist = pd.read_csv(run / "models" / "m" / f"fold{k}.history.csv")
        times += hist["epoch_s"].iloc[1:].tolist()
    return statistics.median(times)


def oof(run: Path, folds: list[int]) -> np.ndarray:
    parts = [pd.read_csv(run / "models" / "m" / f"fold{k}.oof.csv", dtype={"id": str}).set_index("id") for k in folds]
    df = pd.concat(parts).sort_index()
    return df.drop(columns=["fold", "target"]).to_numpy(np.float64)


def same_checkpoints(a: Path, b: Path, folds: list[int]) -> bool:
    for k in folds:
        sa = torch.load(a / f"models/m/fold{k}.pt", weights_only=True)["state_dict"]
        sb = torch.load(b / f"models/m/fold{k}.pt", weights_only=True)["state_dict"]
        if sa.keys() != sb.keys() or not all(torch.equal(sa[key], sb[key]) for key in sa):
            return False
    return True


def in_process(cfg, run: Path, folds: list[int], threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        train_folds(cfg, run, folds=folds, progress=False)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--groups", type=int, default=150, help="source digits; 4 training images each")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray row (needs pip install 'comp[ray]')")
    args = ap.parse_args()
    folds = [int(k) for k in args.folds.split(",")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        data = make_digits_competition(work / "digits", n_train_groups=args.groups, size=args.size)
        cfg_path = write_config(data, args)
        cfg = load_config(cfg_path)
        runs = {name: work / name for name in ("1x2", "1x1", "workers", "ddp", "ray")}
        wall = {
            "1x2": in_process(cfg, runs["1x2"], folds, 2),
            "1x1": in_process(cfg, runs["1x1"], folds, 1),
        }
        t0 = time.perf_counter()
        train_folds(cfg, runs["workers"], folds=folds, devices=["cpu", "cpu"], progress=False)
        wall["workers"] = time.perf_counter() - t0
        os.environ["OMP_NUM_THREADS"] = "1"  # one thread per rank
        t0 = time.perf_counter()
        rc = launch_ddp(
            2,
            ["train-folds", "--config", str(cfg_path), "--run-dir", str(runs["ddp"]), "--quiet", "--folds", args.folds],
        )
        wall["ddp"] = time.perf_counter() - t0
        if rc:
            raise SystemExit(f"--ddp 2 failed with exit code {rc}")
        ray_start = None
        if not args.no_ray:
            os.environ.pop("OMP_NUM_THREADS", None)
            import ray

            for attempt in range(3):  # on a busy box the local node may miss Ray's fixed 30 s to register
                t0 = time.perf_counter()
                try:
                    ray.init(num_cpus=2, include_dashboard=False)
                    break
                except Exception as exc:  # noqa: BLE001 - Ray raises a plain Exception for a slow start
                    ray.shutdown()
                    if attempt == 2 or "timed out during startup" not in str(exc):
                        raise
            ray_start = time.perf_counter() - t0
            try:
                t0 = time.perf_counter()
                train_folds(cfg, runs["ray"], folds=folds, ray=True, ray_cpus=1, progress=False)
                wall["ray"] = time.perf_counter() - t0
            finally:
                ray.shutdown()
        base = oof(runs["1x2"], folds)
        rows = []
        variants = [
            ("1x2", "1x2 threads", "1 x 2"),
            ("1x1", "1x1 thread", "1 x 1"),
            ("workers", "2x1 workers (fold-parallel)", "2 x 1"),
            ("ddp", "2x1 DDP gloo", "2 x 1"),
        ]
        if ray_start is not None:
            variants.append(("ray", "2x1 Ray tasks", "2 x 1"))
        for name, label, procs in variants:
            e = epoch_s(runs[name], folds)
            same = (
                "-"
                if name in ("1x1", "ddp")
                else (
                    "yes"
                    if same_checkpoints(runs["1x1"], runs[name], folds)
                    and np.array_equal(oof(runs["1x1"], folds), oof(runs[name], folds))
                    else "no"
                )
            )
            rows.append(
                {
                    "variant": label,
                    "procs x threads": procs,
                    "wall_s": wall[name],
                    "epoch_s": e,
                    "wall vs 1x2": wall["1x2"] / wall[name],
                    "epoch vs 1x2": epoch_s(runs["1x2"], folds) / e,
                    "same as 1x1": same,
                    "max |dp| vs 1x2": float(np.abs(oof(runs[name], folds) - base).max()),
                }
            )
    print(
        f"{args.model} @ {args.size} px, batch {args.batch_size}, folds {args.folds} of 5 ({len(folds)} x ~{args.groups * 16 // 5}"
        f" training images), {args.epochs} epochs, {os.cpu_count()} CPU cores, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after; ratios > 1: faster than 1x2"
    )
    print(format_table(rows, floatfmt=".3f"))
    w = rows[2]
    print(
        f"fold-parallel, 2 workers x 1 thread vs 1 process x 2 threads: x{w['wall vs 1x2']:.2f} wall time; "
        f"bit-identical to one process with one thread: {w['same as 1x1']}"
    )
    print(f"DDP, 2 ranks x 1 thread vs 1 process x 2 threads: x{rows[3]['epoch vs 1x2']:.2f} per epoch")
    if ray_start is not None:
        r = rows[4]
        print(
            f"Ray, 2 tasks x 1 thread vs 2 local workers x 1 thread: x{wall['workers'] / wall['ray']:.2f} wall time "
            f"({wall['ray'] - wall['workers']:+.1f} s), x{w['epoch_s'] / r['epoch_s']:.2f} per epoch; the local "
            f"cluster's start, apart: {ray_start:.1f} s; bit-identical to one process with one thread: {r['same as 1x1']}"
        )


if __name__ == "__main__":
    main()
