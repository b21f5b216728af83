"""Benchmark: comp's training step against a bare PyTorch loop, and the data loader against the model.

Measured side by side in one run on the digits demo competition:
  1. bare loop      - a hand-written PyTorch loop over in-memory tensors (same model, batch, optimizer)
  2. comp engine    - comp.training._engine.train_one_epoch on the same tensors (soft-target loss, mixer, scheduler,
                      progress bar: everything train-folds runs per step)
  3. train-folds    - one full FoldTrainer epoch from the PNG files (decode + augment + train + validate)
  4. loader only    - decode + augment + collate from JPEG copies, per num_workers, against the model's step rate

Usage: python benchmarks/bench_train.py [--model test_byobnet] [--epochs 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp._tables import format_table  # noqa: E402
from comp.config import Config, ModelConfig, load_config  # noqa: E402
from comp.data._augment import BatchMixer, eval_pipeline, pipelines  # noqa: E402
from comp.data._table import ImageDataset, load_image, load_train_table  # noqa: E402
from comp.demo import demo_config_path, make_digits_competition  # noqa: E402
from comp.run import RunDir  # noqa: E402
from comp.training._context import FoldContext
from comp.training._engine import StepConfig, train_one_epoch  # noqa: E402
from comp.training._fold import FoldTrainer  # noqa: E402
from comp.training._losses import build_loss  # noqa: E402
from comp.training._models import create_model, normalization  # noqa: E402
from comp.training._prepare import ensure_folds, prepare_run  # noqa: E402
from comp.training._seeding import seed_everything  # noqa: E402


def tensors(paths, targets, model, hw):
    mean, std = normalization(model)
    tf = eval_pipeline(hw, mean, std)
    x = torch.stack([tf(image=load_image(p))["image"] for p in paths])
    return x, torch.tensor(np.asarray(targets))


def bare_epoch(model, opt, x, y, bs, gen):
    model.train()
    order = torch.randperm(len(x), generator=gen)
    t0 = time.perf_counter()
    for i in range(0, len(x), bs):
        idx = order[i : i + bs]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def comp_epoch(model, opt, x, y, bs, gen, n_classes, scheduler_steps):
    from timm.scheduler import CosineLRScheduler

    loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True, generator=gen)
    sched = CosineLRScheduler(opt, t_initial=scheduler_steps, t_in_epochs=False)
    loss_fn = build_loss(dataclasses.replace(Config().loss, name="ce"), y.numpy(), n_classes)  # the task default
    mixer = BatchMixer(Config().augment.mixup, n_classes, 0.0)
    bar = tqdm(total=len(loader), disable=False, leave=False, file=open("/dev/null", "w"))  # noqa: SIM115
    sc = StepConfig(device=torch.device("cpu"), scheduler=sched, progress=bar)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, opt, loss_fn, mixer, 0, sc)
    return time.perf_counter() - t0


def loader_rate(paths, targets, train_tf, bs, workers, batches):
    ds = ImageDataset(paths, targets, train_tf)
    loader = DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is paid once per epoch; measure the steady state
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        x, _ = next(it)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test_byobnet")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (median reported)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="comp-bench-train-"))
    comp_dir = make_digits_competition(work / "demo")
    cfg = load_config(
        demo_config_path(),
        overrides=[f"models=[{{name: {args.model}, image_size: 32}}]", f"train.batch_size={args.batch_size}"],
        base_dir=comp_dir,
    )
    table = load_train_table(cfg.data)
    hw = (32, 32)
    seed_everything(0)
    model0 = create_model(ModelConfig(args.model), len(table.classes))
    x, y = tensors(table.paths, table.targets, model0, hw)
    state0 = {k: v.clone() for k, v in model0.state_dict().items()}
    bs, nc = args.batch_size, len(table.classes)

    times = {"bare": [], "engine": []}
    for rep in range(args.epochs):  # interleave so drift and the other core's load hit both alike
        for name in ("bare", "engine"):
            model0.load_state_dict(state0)
            opt = create_optimizer_v2(model0, opt="adamw", lr=1e-3, weight_decay=0.01)
            gen = torch.Generator().manual_seed(rep)
            if name == "bare":
                times[name].append(bare_epoch(model0, opt, x, y, bs, gen))
            else:
                times[name].append(comp_epoch(model0, opt, x, y, bs, gen, nc, len(x) // bs + 1))
    bare, engine = statistics.median(times["bare"]), statistics.median(times["engine"])

    # a whole train-folds epoch from the files: decode, augment, train, validate
    run = RunDir(work / "run")
    prepare_run(cfg, run)
    folds = ensure_folds(cfg, run, table)
    trainer = FoldTrainer(FoldContext(cfg, cfg.models[0], table, folds, 0, run, progress=False))
    fold_times = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        trainer.run_epoch(epoch)
        fold_times.append(time.perf_counter() - t0)
    n_train = len(trainer.train_idx)
    full = statistics.median(fold_times)

    rows = [
        {
            "variant": "bare PyTorch loop (in-memory)",
            "images": len(x),
            "epoch_s": bare,
            "img/s": len(x) / bare,
            "vs bare": 1.0,
        },
        {
            "variant": "comp engine (in-memory)",
            "images": len(x),
            "epoch_s": engine,
            "img/s": len(x) / engine,
            "vs bare": engine / bare,
        },
        {
            "variant": "train-folds epoch (PNG+aug+valid)",
            "images": n_train,
            "epoch_s": full,
            "img/s": n_train / full,
            "vs bare": (full / n_train) / (bare / len(x)),
        },
    ]
    print(f"model {args.model}, batch {bs}, 32 px, {args.threads} threads, median of {args.epochs} epochs")
    print(format_table(rows))
    print(f"comp engine overhead over the bare loop: {100 * (engine / bare - 1):+.1f}% (goal: at most +10%)")

    # the loader alone against the model's training rate, from JPEG copies of the same images
    jpg_dir = work / "jpg"
    jpg_dir.mkdir()
    jpgs = []
    for p in table.paths[:512]:
        q = jpg_dir / (p.stem + ".jpg")
        Image.open(p).convert("RGB").resize((128, 128)).save(q, quality=90)
        jpgs.append(q)
    mean, std = normalization(model0)
    train_tf, _ = pipelines(cfg.augment, hw, mean, std, normalize=False)  # as train-folds loads
    model_rate = len(x) / bare
    lrows = []
    for workers in (0, 2):
        rate = loader_rate(jpgs, np.zeros(len(jpgs), int), train_tf, bs, workers, batches=12)
        lrows.append(
            {
                "loader": f"JPEG 128px -> aug -> batch, workers={workers}",
                "img/s": rate,
                "model img/s": model_rate,
                "loader/model": rate / model_rate,
            }
        )
    print(format_table(lrows))
    slow = [r for r in lrows if r["loader/model"] < 1]
    print(
        "bottleneck:",
        "data loading at " + ", ".join(r["loader"].split(", ")[1] for r in slow)
        if slow
        else "the model (loader is faster at every setting)",
    )


if __name__ == "__main__":
    main()
