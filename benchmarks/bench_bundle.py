"""The bundle's standalone predict.py against ``comp predict --engine onnx``: images/s, peak memory, start-up.

Both run as fresh processes on the same test images (real scans: the digits demo's competition), the same
fused ONNX graphs (``comp export --fuse`` first, so comp predict uses fused.onnx as the bundle does), the
same batch size and the same thread count. Two workloads:

- ``demo``: the demo's two backbones (test_byobnet and test_efficientnet at 32 px, 5 folds each): small
  graphs, so decoding, preprocessing and start-up dominate;
- ``resnet18``: one resnet18 at 128 px, 5 folds fused, on 160 px images: the graph dominates.

Start-up is the wall time of a run on one image (interpreter, imports, sessions, one batch); images/s is
``(N - 1) / (wall(N) - wall(1))`` and cpu_ms/image the same difference in CPU time (user + system, all
threads), which other jobs on a shared machine disturb less; peak memory is the process's maximum resident
set. Each figure is the best of ``--repeats`` runs, interleaved so both programs see the same machine.

    python benchmarks/bench_bundle.py                 # about 15 minutes on 2 busy CPU cores
    python benchmarks/bench_bundle.py --work /tmp/bb  # keep the built runs there and reuse them next time
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comp._tables import format_table  # noqa: E402
from comp.config import load_config  # noqa: E402
from comp.demo import make_digits_competition  # noqa: E402
from comp.inference import bundle_run, export_run  # noqa: E402
from comp.training import train_folds  # noqa: E402

WORKLOADS = {
    "demo": {
        "size": 32,
        "models": [
            {"name": "test_byobnet", "id": "byobnet", "image_size": 32, "pretrained": False},
            {"name": "test_efficientnet", "id": "effnet", "image_size": 32, "pretrained": False},
        ],
    },
    "resnet18": {
        "size": 160,
        "models": [{"name": "resnet18", "id": "resnet18", "image_size": 128, "pretrained": False}],
    },
}


def build(work: Path, name: str, n_images: int) -> tuple[Path, Path, Path]:
    """Competition folder, a trained 5-fold run with fused graphs, and its bundle."""
    spec = WORKLOADS[name]
    bundle = work / name / "bundle"
    if (bundle / "manifest.json").is_file():  # built by an earlier run with --work
        return work / name / "data", work / name / "run", bundle
    data = make_digits_competition(
        work / name / "data", n_train_groups=100, views=1, n_test=n_images, size=spec["size"]
    )
    cfg = load_config(
        {
            "seed": 0,
            "data": {"group_column": "digit"},
            "folds": {"n_splits": 5},
            # the weights do not matter here, only what running them costs
            "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 1},
            "models": spec["models"],
        },
        base_dir=data,
    )
    run = work / name / "run"
    train_folds(cfg, run, progress=False)
    export_run(run, fuse=True)
    bundle_run(run, out=bundle)
    return data, run, bundle


# A forked child starts with its parent's peak RSS (Linux carries the high-water mark across fork and exec),
# so each program is started by this small launcher, not by the benchmark process that holds torch and
# the trained models: the launcher's own few MB are then the floor, the same for both programs.
LAUNCHER = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak resident memory (MB) of one fresh process running ``cmd``."""
    res = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    wall, cpu, rss = res.stderr.split()[-3:]
    return float(wall), float(cpu), float(rss)


def commands(data: Path, run: Path, bundle: Path, sample: Path, out: Path, threads: int, batch: int) -> dict:
    return {
        "comp predict": [
            sys.executable,
            "-m",
            "comp",
            "predict",
            str(run),
            "--engine",
            "onnx",
            "--quiet",
            "--batch-size",
            str(batch),
            "--set",
            f"data.sample_submission={sample}",
            "--out",
            str(out / "comp.csv"),
        ],
        "predict.py": [
            sys.executable,
            str(bundle / "predict.py"),
            "--images",
            str(data / "test"),
            "--sample",
            str(sample),
            "--out",
            str(out / "bundle.csv"),
            "--quiet",
            "--threads",
            str(threads),
            "--batch-size",
            str(batch),
        ],
    }


def measure(name: str, work: Path, n_images: int, threads: int, batch: int, repeats: int) -> list[dict]:
    data, run, bundle = build(work, name, n_images)
    full = data / "sample_submission.csv"
    n_images = len(pd.read_csv(full, dtype=str))
    one = work / name / "one.csv"
    pd.read_csv(full, dtype=str).head(1).to_csv(one, index=False)
    # comp predict's onnxruntime sessions take torch's thread count, which OMP_NUM_THREADS sets
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    best: dict[tuple[str, str], tuple[float, float, float]] = {}
    for _ in range(repeats):
        for sample, tag in ((one, "1"), (full, "N")):
            for prog, cmd in commands(data, run, bundle, sample, work / name, threads, batch).items():
                wall, cpu, rss = timed(cmd, env, work)
                old = best.get((prog, tag), (float("inf"), float("inf"), 0.0))
                best[(prog, tag)] = (min(wall, old[0]), min(cpu, old[1]), max(rss, old[2]))
    same = (work / name / "comp.csv").read_bytes() == (work / name / "bundle.csv").read_bytes()
    rows = []
    for prog in ("comp predict", "predict.py"):
        (w1, c1, _), (wn, cn, rss) = best[(prog, "1")], best[(prog, "N")]
        rows.append(
            {
                "workload": f"{name} ({n_images})",
                "program": prog,
                "startup_s": w1,
                "images/s": (n_images - 1) / (wn - w1),
                "cpu_ms/image": 1000 * (cn - c1) / (n_images - 1),
                "peak_MB": rss,
                "same_submission": "yes" if same else "NO",
            }
        )
    base = rows[0]
    for r in rows:
        for key, ratio in (
            ("startup_s", "startup_x"),
            ("images/s", "images/s_x"),
            ("cpu_ms/image", "cpu_x"),
            ("peak_MB", "peak_x"),
        ):
            r[ratio] = r[key] / base[key]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="test images per workload (at most 1497)")
    ap.add_argument("--resnet-images", type=int, default=300, help="test images for the resnet18 workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workloads", default="demo,resnet18")
    ap.add_argument("--work", type=Path, default=None, help="keep the built runs here and reuse them next time")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="comp-bench-bundle-") as tmp:
        for name in args.workloads.split(","):
            n = args.resnet_images if name == "resnet18" else args.images
            rows += measure(name, args.work or Path(tmp), n, args.threads, args.batch_size, args.repeats)
    cols = [
        "workload",
        "program",
        "startup_s",
        "startup_x",
        "images/s",
        "images/s_x",
        "cpu_ms/image",
        "cpu_x",
        "peak_MB",
        "peak_x",
        "same_submission",
    ]
    print(
        f"{args.threads} threads, batch {args.batch_size}, best of {args.repeats}; ratios against comp predict "
        "in the same run"
    )
    print(format_table(rows, cols, floatfmt=".2f"))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
