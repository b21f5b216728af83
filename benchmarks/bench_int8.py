"""int8 inference on this CPU: eager PyTorch, onnxruntime float32 and onnxruntime int8 side by side, each
scored on the same held-out Fashion-MNIST test rows.

A comp run is trained on a seeded Fashion-MNIST subset (two backbones at two image sizes, 2 folds, random
init), exported with ``export_run(..., fuse=True, int8=True)`` (the same code as ``comp export --fuse
--int8``), then for each model its fold-0 checkpoint and graphs, and its fused 2-fold graph, are timed on one
batch (images/s, best of a few timed runs) and scored on the held-out test rows (macro F1, and the largest
probability difference from the float32 graph). ``--methods`` also compares calibration methods and the
quantization choices of ``comp/inference/_int8.py`` on one model.

    nice python -m benchmarks.bench_int8                # the README table (~15 min on the shared 2-core box)
    nice python -m benchmarks.bench_int8 --quick        # smaller smoke run (~3 min)

Data and runs go to ``.bench/int8`` (git-ignored); a rerun reuses the trained folds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks.bench_ensemble import make_fashion_competition
from comp._tables import format_table
from comp.config import load_config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table
from comp.inference._export import INPUT, OUTPUT, FusedModel, export_run, predictor
from comp.inference._int8 import Int8Options, has_vnni, quantize, run_graph, sample
from comp.inference._onnxruntime import OrtRunner
from comp.inference._torch_engine import TorchRunner
from comp.metrics import get_metric
from comp.run import RunDir, load_checkpoint
from comp.training._models import model_from_checkpoint
from comp.training._outputs import OutputSpec
from comp.training._trainer import train_folds

MODELS = [("resnet18", 64), ("resnet18", 128), ("mobilenetv3_large_100", 64), ("mobilenetv3_large_100", 128)]
TARGET = 2.5
MAX_DROP = 0.005


def config(data: Path, quick: bool) -> dict:
    return {
        "seed": 7,
        "metric": "macro_f1",
        "data": {
            "train_csv": "train.csv",
            "image_dir": "train",
            "id_column": "id",
            "label_column": "label",
            "image_ext": ".png",
            "test_image_dir": "test",
            "sample_submission": "sample_submission.csv",
        },
        "folds": {"n_splits": 2, "seed": 7},
        "train": {"epochs": 1 if quick else 2, "batch_size": 64, "lr": 0.003, "warmup_epochs": 0.2},
        "models": [{"name": n, "id": f"{n.split('_')[0]}_{s}", "image_size": s} for n, s in MODELS],
    }


def throughput(fn, x: np.ndarray, min_time: float) -> float:
    """Images/s of ``fn(x)``: one warm-up call, then the best of timed repeats for at least ``min_time`` s
    (the best, not the mean: other processes share the cores)."""
    fn(x)
    best, t_end = 0.0, time.perf_counter() + min_time
    while time.perf_counter() < t_end or best == 0.0:
        t0 = time.perf_counter()
        fn(x)
        best = max(best, len(x) / (time.perf_counter() - t0))
    return best


def table(rows: list[list[str]], columns: list[str]) -> str:
    return format_table([dict(zip(columns, r)) for r in rows], columns)


def predict_all(fn, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(x[s : s + batch]) for s in range(0, len(x), batch)])


def test_rows(cfg, data: Path, transform, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test images through the model's eval transform, and their true class indices in the
    model's output order (``classes``, the checkpoint's: comp's order, not the dataset's)."""
    table, paths = load_test_table(cfg.data)
    truth = pd.read_csv(data / "test_labels.csv").set_index("id").loc[table["id"].tolist(), "label"]
    y = np.array([classes.index(str(v)) for v in truth])
    ds = ImageDataset(paths, transform=transform)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float32), y


def methods_table(cfg, run: RunDir, mid: str, out: Path, x: np.ndarray, y: np.ndarray, batch: int, t: float):
    """One model's fold-0 graph quantized each way: calibration time, images/s and held-out macro F1."""
    meta = load_checkpoint(run.checkpoint(mid, 0)).meta
    calib, _, _ = sample(cfg, run, meta, 0, Int8Options())
    metric = get_metric("macro_f1")
    src = run.onnx(mid, 0)
    ref = run_graph(src, (x,), [INPUT], OUTPUT)
    rows = [["float32", "-", f"{throughput(OrtRunner(src, 2), x[:batch], t):.0f}", f"{metric(y, ref):.4f}", "-"]]
    variants = [
        ("minmax (comp)", {}),
        ("entropy", {"method": "entropy"}),
        ("percentile", {"method": "percentile"}),
        ("minmax, all nodes int8", {"keep_float": False}),
        ("minmax, no pre-processing", {"pre_process": False}),
        ("minmax, int8 activations", {"activations": "int8"}),
    ]
    for name, kw in variants:
        dst = out / f"{mid}-{name.split(',')[0]}-{len(rows)}.onnx"
        t0 = time.perf_counter()
        quantize(src, dst, calib, [INPUT], **kw)
        took = time.perf_counter() - t0
        got = run_graph(dst, (x,), [INPUT], OUTPUT)
        speed = throughput(OrtRunner(dst, 2), x[:batch], t)
        rows.append([name, f"{took:.0f}", f"{speed:.0f}", f"{metric(y, got):.4f}", f"{np.abs(got - ref).max():.3f}"])
    print(f"\ncalibration methods and choices, {mid} fold 0, {len(calib)} calibration images, batch {batch}:")
    print(table(rows, ["quantization", "calib s", "img/s", "macro F1", "max |dp|"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images, 1 epoch, shorter timings")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", action="store_true", help="also compare calibration methods on one model")
    ap.add_argument("--out", type=Path, default=Path(".bench/int8"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_train, n_test = (1200, 400) if args.quick else (4000, 1000)
    min_time = 2.0 if args.quick else 4.0
    data = make_fashion_competition(args.out / "data", n_train, n_test)
    cfg = load_config(config(data, args.quick), base_dir=data.resolve())
    run = RunDir(args.out / ("run-quick" if args.quick else "run"))
    t0 = time.perf_counter()
    train_folds(cfg, run.root, progress=False)
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    mids = run.trained_ids()
    if all(run.fused(m, int8=True).is_file() for m in mids):
        print("reusing the exported graphs")
    else:  # the table reports the drop itself, so no refusal here
        export_run(run.root, fuse=True, int8=True, max_drop=1.0)
        print(
            f"exported (float32 + int8, {Int8Options().calib} calibration images) in {time.perf_counter() - t0:.0f} s"
        )
    reports = {m: json.loads(run.export_report(m).read_text()) for m in mids}
    metric = get_metric(cfg.metric)
    rows = []
    for mid in reports:
        folds = [load_checkpoint(p) for p in run.checkpoints(mid)]
        x, y = test_rows(cfg, data, from_dict(folds[0].meta.eval_transform), folds[0].meta.classes)
        batch = x[: args.batch]
        cpu = torch.device("cpu")
        eager = [
            TorchRunner(model_from_checkpoint(c)[0], cpu, output=OutputSpec.from_dict(c.meta.output)) for c in folds
        ]
        fused_eager = FusedModel([predictor(model_from_checkpoint(c)[0], c.meta) for c in folds]).eval()

        def fused_fn(v: np.ndarray, m=fused_eager) -> np.ndarray:
            with torch.no_grad():
                return m(torch.from_numpy(v)).numpy()

        for what, eager_fn, graphs in (
            ("fold 0", eager[0], (run.onnx(mid, 0), run.onnx(mid, 0, int8=True))),
            ("fused 2 folds", fused_fn, (run.fused(mid), run.fused(mid, int8=True))),
        ):
            base = throughput(eager_fn, batch, min_time)
            ref = predict_all(eager_fn, x, args.batch)
            score = metric(y, ref)
            rows.append([mid, what, "eager", f"{base:.0f}", "1.00", f"{score:.4f}", "-"])
            print(" | ".join(rows[-1]), flush=True)
            f32 = None
            for name, path in zip(("ort fp32", "ort int8"), graphs):
                runner = OrtRunner(path, args.threads)
                speed = throughput(runner, batch, min_time)
                got = predict_all(runner, x, args.batch)
                f32 = got if f32 is None else f32
                diff = "-" if got is f32 else f"{np.abs(got - f32).max():.3f}"
                rows.append([mid, what, name, f"{speed:.0f}", f"{speed / base:.2f}", f"{metric(y, got):.4f}", diff])
                print(" | ".join(rows[-1]), flush=True)
    print(
        f"\nbatch {args.batch}, {args.threads} threads, {len(y)} held-out Fashion-MNIST test rows, "
        f"VNNI: {has_vnni()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(table(rows, ["model", "graph", "engine", "img/s", "x eager", "macro F1", "max |dp| vs fp32"]))
    if args.methods:
        mid = next(iter(reports))
        meta0 = load_checkpoint(run.checkpoint(mid, 0)).meta
        x, y = test_rows(cfg, data, from_dict(meta0.eval_transform), meta0.classes)
        with tempfile.TemporaryDirectory() as tmp:
            methods_table(cfg, run, mid, Path(tmp), x, y, args.batch, min_time)
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
