"""Inference images/s on this machine: onnxruntime vs PyTorch eager, with and without TTA, and one fused
graph of k folds vs k sessions. Same random-weight timm model, batch and thread count for every row.

    python benchmarks/bench_inference.py            # --quick sizes, about 2 minutes on 2 CPU cores
    python benchmarks/bench_inference.py --full     # 224 px, batch 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from comp._tables import format_table
from comp.inference._export import FusedModel, ProbModel, export_graph
from comp.inference._onnxruntime import OrtRunner
from comp.inference._torch_engine import TorchRunner
from comp.inference._tta import merge_probs, views


def images_per_s(fn, x: torch.Tensor, min_time: float) -> float:
    """Run ``fn(x)`` once to warm up, then repeatedly for at least ``min_time`` seconds."""
    fn(x)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < min_time:
        fn(x)
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def with_tta(runners, tta: list[str]):
    """What comp predict does per batch: every view through every runner, merged per runner, mean over runners."""

    def fn(x: torch.Tensor) -> np.ndarray:
        xs = [v.numpy() for v in views(x, tta)]
        return np.mean([merge_probs(np.stack([r(v) for v in xs])) for r in runners], axis=0)

    return fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--full", action="store_true", help="224 px, batch 32 (default: --quick, 160 px, batch 16)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--min-time", type=float, default=None, help="seconds per measurement")
    args = ap.parse_args()
    size, batch = (224, 32) if args.full else (160, 16)
    min_time = args.min_time or (6.0 if args.full else 3.0)
    torch.set_num_threads(args.threads)
    models = []
    for k in range(args.folds):
        torch.manual_seed(k)
        models.append(timm.create_model(args.model, pretrained=False, num_classes=5).eval())
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, m in enumerate(models):
            paths.append(Path(tmp) / f"fold{k}.onnx")
            export_graph(ProbModel(m), x[:1], paths[-1], 17, {}, fp16=False)
        export_graph(FusedModel(models), x[:1], Path(tmp) / "fused.onnx", 17, {}, fp16=False)
        ort_folds = [OrtRunner(p, args.threads) for p in paths]
        fused = OrtRunner(Path(tmp) / "fused.onnx", args.threads)
        torch_folds = [TorchRunner(m, torch.device("cpu")) for m in models]
        cases = [
            ("1 model", "torch eager", with_tta(torch_folds[:1], [])),
            ("1 model", "onnxruntime", with_tta(ort_folds[:1], [])),
            ("1 model + hflip TTA", "torch eager", with_tta(torch_folds[:1], ["hflip"])),
            ("1 model + hflip TTA", "onnxruntime", with_tta(ort_folds[:1], ["hflip"])),
            (f"{args.folds} folds", "torch eager", with_tta(torch_folds, [])),
            (f"{args.folds} folds", "onnxruntime, a session per fold", with_tta(ort_folds, [])),
            (f"{args.folds} folds", "onnxruntime, fused graph", with_tta([fused], [])),
        ]
        got = with_tta(ort_folds, [])(x)
        assert np.abs(with_tta([fused], [])(x) - got).max() < 1e-4, "fused graph disagrees with the per-fold sessions"
        rows, base = [], {}
        for task, engine, fn in cases:
            ips = images_per_s(fn, x, min_time)
            base.setdefault(task, ips)
            rows.append({"task": task, "engine": engine, "images/s": ips, "vs first row of task": ips / base[task]})
    print(
        f"{args.model} @ {size}px, batch {batch}, {args.threads} threads, torch {torch.__version__}, "
        f"{'full' if args.full else 'quick'} sizes, >= {min_time:.0f} s per row"
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
