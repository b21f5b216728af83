"""Benchmark for pseudo-labels and distillation: CV against held-out macro F1, and the student's inference cost.

A competition from real Fashion-MNIST images (Debian's dataset-fashion-mnist): each source image of the
training subset becomes a few jittered views (shift, contrast, noise) grouped by source, so group k-fold
matters; the test set is a disjoint subset of the official test images whose labels are kept aside.

Rows, each with its 5-fold OOF CV and its held-out score (test predictions average the 5 fold models):
- three members (byobnet, effnet, convnext) and their hill-climbing blend (the ensemble, nested CV);
- ``+ pseudo``: effnet again, with ``data.extra_train`` = the blend's confident test rows (``comp pseudo``,
  threshold 0.7, at most 300 per class): one pseudo-label round;
- ``student``: effnet distilled from the blend (``loss.distill.teacher``: OOF rows on the same folds, and the
  blend's test probabilities on the same pseudo rows).

Each model is also scored on 2,000 further official test images that were never predicted for the competition
nor pseudo-labelled, as a fold average and as the mean of single fold models (what an OOF row measures), so
``cv - unseen_1fold`` shows whether pseudo rows or a teacher made CV optimistic.

Goals (issue 15): the pseudo round lifts held-out macro F1 by >= 0.01 over the same member without it; the
student keeps >= 90% of the ensemble's held-out gain over the best member at a fraction of its inference cost;
|CV - held-out| <= 0.015 on every row.

    python -m benchmarks.bench_pseudo            # the README run
    python -m benchmarks.bench_pseudo --quick    # smoke run

Data and runs go to ``.bench/pseudo`` (git-ignored); a rerun reuses finished folds and data.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from benchmarks.bench_ensemble import FMNIST_CLASSES, FMNIST_DIR, _idx, held_out_score, write_test_preds
from comp import run as artifacts
from comp._tables import format_table
from comp.config import Config, load_config
from comp.data._augment import from_dict
from comp.ensembling import load_member, run_ensemble
from comp.ensembling._blend import fit_blend, get_method
from comp.ensembling._members import align
from comp.errors import CompError
from comp.metrics import get_metric
from comp.pseudo import pseudo_label
from comp.training import train_folds
from comp.training._models import model_from_checkpoint

MEMBERS = [
    {"name": "test_byobnet", "id": "byobnet", "image_size": 32, "lr": 0.003},
    {"name": "test_efficientnet", "id": "effnet", "image_size": 32, "lr": 0.005},
    {"name": "test_convnext", "id": "convnext", "image_size": 32, "lr": 0.002},
]
STUDENT = "effnet"  # the member the pseudo round and the distilled student retrain
LIFT, KEEP, GAP = 0.01, 0.9, 0.015


# ---------------------------------------------------------------- the competition


def _view(img: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """One jittered view of a 28x28 image: a shift of up to 2 px, contrast 0.85-1.15 and pixel noise."""
    dy, dx = rng.integers(-2, 3, size=2)
    out = np.zeros_like(img, dtype=np.float32)
    ys, yd = (slice(0, 28 - dy), slice(dy, 28)) if dy >= 0 else (slice(-dy, 28), slice(0, 28 + dy))
    xs, xd = (slice(0, 28 - dx), slice(dx, 28)) if dx >= 0 else (slice(-dx, 28), slice(0, 28 + dx))
    out[yd, xd] = img[ys, xs]
    out = out * rng.uniform(0.85, 1.15) + rng.normal(0, 8, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def make_grouped_fashion(out: Path, n_sources: int, views: int, n_test: int, seed: int = 0) -> Path:
    """train/ (``views`` jittered views per source image, grouped by source), test/ (one image each, disjoint
    from train), train.csv (id, label, source), sample_submission.csv, test_labels.csv (written last)."""
    if (out / "test_labels.csv").is_file():
        return out
    rng = np.random.default_rng(seed)
    for split, src, n in (("train", "train", n_sources), ("test", "t10k", n_test)):
        images = _idx(FMNIST_DIR / f"{src}-images-idx3-ubyte.gz")
        labels = _idx(FMNIST_DIR / f"{src}-labels-idx1-ubyte.gz")
        pick = np.sort(rng.choice(len(labels), size=n, replace=False))
        (out / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in pick:
            label = FMNIST_CLASSES[labels[i]]
            if split == "train":
                for v in range(views):
                    rid = f"s{i:05d}_v{v}"
                    _view(images[i], rng).save(out / split / f"{rid}.png")
                    rows.append({"id": rid, "label": label, "source": f"s{i:05d}"})
            else:
                rid = f"t{i:05d}"
                Image.fromarray(images[i], mode="L").save(out / split / f"{rid}.png")
                rows.append({"id": rid, "label": label})
        df = pd.DataFrame(rows)
        if split == "train":
            artifacts.write_csv(out / "train.csv", df)
        else:
            artifacts.write_csv(out / "sample_submission.csv", df.assign(label=FMNIST_CLASSES[0]))
            artifacts.write_csv(out / "test_labels.csv", df)
    return out


def base_config(data_dir: Path, epochs: int, models: list[dict]) -> dict:
    return {
        "seed": 7, "metric": "macro_f1",
        "data": {"train_csv": "train.csv", "image_dir": "train", "group_column": "source", "image_ext": ".png",
                 "test_image_dir": "test", "sample_submission": "sample_submission.csv"},
        "folds": {"n_splits": 5, "seed": 7},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.003, "warmup_epochs": 0.3, "weight_decay": 0.01},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "loss": {"label_smoothing": 0.05},
        "models": [dict(m) for m in models],
    }  # fmt: skip


def train(raw: dict, data_dir: Path, run_dir: Path, overrides: list[str]) -> Config:
    cfg = load_config(raw, base_dir=data_dir.resolve(), overrides=overrides)
    if (run_dir / "config.yaml").is_file() and artifacts.RunDir(run_dir).load_config() != cfg:
        shutil.rmtree(run_dir)  # settings changed (e.g. --quick vs full): start this run afresh
    print(f"[{run_dir.name}] training {', '.join(m.model_id for m in cfg.models)} x {cfg.folds.n_splits} folds "
          f"({cfg.train.epochs} epochs) {' '.join(overrides)}", file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.perf_counter()
    try:
        train_folds(cfg, run_dir, resume=True, progress=False)
    except CompError as exc:  # the pseudo rows or the teacher changed since the folds were trained: retrain
        if "trained folds on other" not in str(exc):
            raise
        shutil.rmtree(run_dir)
        train_folds(cfg, run_dir, progress=False)
    print(f"[{run_dir.name}] {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return cfg


# ---------------------------------------------------------------- inference cost


def make_unseen(data: Path, n: int, seed: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` more official test images that are not in the competition's test set (so never predicted for it, never
    pseudo-labelled): RGB arrays as ``load_image`` gives them, and their labels (class names)."""
    images = _idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    used = {int(i[1:]) for i in pd.read_csv(data / "test_labels.csv", dtype=str)["id"]}
    free = np.array([i for i in range(len(labels)) if i not in used])
    pick = np.sort(np.random.default_rng(seed).choice(free, size=min(n, len(free)), replace=False))
    names = np.asarray(FMNIST_CLASSES)[labels[pick]]
    return [np.repeat(images[i][..., None], 3, axis=2) for i in pick], names


@torch.no_grad()
def fold_probs(
    run_dir: Path, model_id: str, images: list[np.ndarray], batch_size: int = 256
) -> tuple[np.ndarray, float]:
    """Every fold model's probabilities over ``images`` (decoded once; the eval transform applied inside, as predict
    does), shape (folds, n, C), and the seconds the fold models took: what a submission of that model costs."""
    out, total = [], 0.0
    for path in artifacts.RunDir(run_dir).checkpoints(model_id):
        model, ckpt = model_from_checkpoint(path)
        tf = from_dict(ckpt.meta.eval_transform)
        t0 = time.perf_counter()
        probs = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([tf(image=img)["image"] for img in images[i : i + batch_size]])
            probs.append(torch.softmax(model(x).float(), 1).numpy())
        total += time.perf_counter() - t0
        out.append(np.concatenate(probs))
    return np.stack(out), total


# ---------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller data and one epoch (smoke run)")
    ap.add_argument("--root", type=Path, default=Path(".bench/pseudo"), help="where data and runs go")
    ap.add_argument("--sources", type=int, default=1000, help="training source images (each becomes --views rows)")
    ap.add_argument("--views", type=int, default=2, help="jittered views per source image (one group)")
    ap.add_argument("--test", type=int, default=3000, help="held-out test images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.7, help="comp pseudo --threshold")
    ap.add_argument("--max-per-class", type=int, default=300, help="comp pseudo --max-per-class")
    ap.add_argument(
        "--top-per-class", type=int, default=None, help="comp pseudo --top-per-class (instead of --threshold)"
    )
    ap.add_argument("--alpha", type=float, default=0.5, help="loss.distill.alpha of the student")
    ap.add_argument("--temperature", type=float, default=2.0, help="loss.distill.temperature of the student")
    ap.add_argument("--unseen", type=int, default=2000, help="labelled test images outside the competition's test set")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (1: threads fight on a busy box)")
    ap.add_argument("--fresh", action="store_true", help="delete the runs first (keep the built data)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sources, args.test, args.unseen, args.epochs, args.top_per_class = 300, 600, 500, 1, 20
    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    root = args.root / ("quick" if args.quick else "full")
    data = make_grouped_fashion(root / "data", args.sources, args.views, args.test)
    if args.fresh:
        for sub in root.iterdir():
            if sub.name != "data":
                shutil.rmtree(sub)
    labels = pd.read_csv(data / "test_labels.csv", dtype=str).set_index("id")["label"]
    student = next(m for m in MEMBERS if m["id"] == STUDENT)
    rows: list[dict] = []

    def record(name: str, run_dir: Path, model_id: str, cfg: Config, cv: float, trained_rows: str) -> None:
        held = held_out_score(cfg.metric, artifacts.RunDir(run_dir).test_pred(model_id), labels, "id")
        rows.append({"model": name, "cv": cv, "held_out": held, "|cv-held_out|": abs(cv - held), "rows": trained_rows,
                     "run": (run_dir, model_id)})  # fmt: skip

    # 1. members and their blend
    members_dir = root / "members"
    cfg = train(base_config(data, args.epochs, MEMBERS), data, members_dir, [])
    n_rows = len(pd.read_csv(data / "train.csv"))
    run = artifacts.RunDir(members_dir)
    for m in cfg.models:
        write_test_preds(cfg, members_dir, m.model_id)
        record(m.model_id, members_dir, m.model_id, cfg, run.read_metrics(m.model_id).cv, f"{n_rows}")
    blend = run_ensemble(
        [run.model_dir(m.model_id) for m in cfg.models], method="hill_climb", name="blend", submit=False
    )
    blend_dir = blend.model_dir
    record("ensemble (hill_climb blend)", blend_dir.parent.parent, "blend", cfg, blend.cv, "-")

    # 2. one pseudo-label round from the blend: the student's member again, with the blend's confident test rows
    how = {"top_per_class": args.top_per_class} if args.top_per_class else {
        "threshold": args.threshold, "max_per_class": args.max_per_class}  # fmt: skip
    pl = pseudo_label(blend_dir, out=root / "pseudo" / "round1.csv", **how)
    pl_labels = pd.read_csv(pl.path, dtype=str).set_index("id")["label"]
    pl_acc = float((pl_labels == labels.loc[pl_labels.index]).mean())
    extra = [f"data.extra_train={pl.path.resolve()}"]
    single = base_config(data, args.epochs, [student])
    pseudo_dir = root / "pseudo-run"
    pcfg = train(single, data, pseudo_dir, extra)
    write_test_preds(pcfg, pseudo_dir, STUDENT)
    cv = artifacts.RunDir(pseudo_dir).read_metrics(STUDENT).cv
    record(f"{STUDENT} + pseudo (round 1)", pseudo_dir, STUDENT, pcfg, cv, f"{n_rows}+{pl.rows}")

    # 3. the student: the same member distilled from the blend, on the OOF rows and the same pseudo rows
    student_dir = root / "student"
    distill = [f"loss.distill.teacher={blend_dir.resolve()}", f"loss.distill.alpha={args.alpha}",
               f"loss.distill.temperature={args.temperature}"]  # fmt: skip
    scfg = train(single, data, student_dir, [*extra, *distill])
    write_test_preds(scfg, student_dir, STUDENT)
    cv = artifacts.RunDir(student_dir).read_metrics(STUDENT).cv
    record(f"{STUDENT} student of the ensemble", student_dir, STUDENT, scfg, cv, f"{n_rows}+{pl.rows}")
    t_train = time.perf_counter() - t0

    # 4. unseen images (never in the test folder, never pseudo-labelled): the fold-averaged score, the mean single-fold
    # score (what an OOF row measures, so cv - unseen_1fold shows optimism in CV), and each model's inference cost
    scorer = get_metric(cfg.metric)
    unseen, unseen_labels = make_unseen(data, args.unseen)
    members = align([load_member(run.model_dir(m.model_id)) for m in cfg.models])
    # class indices in the checkpoints' order, which is the training table's (and the OOF files')
    y_unseen = pd.Index(members.classes).get_indexer(unseen_labels)
    assert (y_unseen >= 0).all() and [str(c) for c in run.read_checkpoint(STUDENT, 0).meta.classes] == members.classes
    member_probs = []
    for r in rows:
        if r["model"].startswith("ensemble"):
            continue
        probs, r["infer_s"] = fold_probs(*r["run"], unseen)
        if r["model"] in {m["id"] for m in MEMBERS}:
            member_probs.append(probs)
        r["unseen"] = scorer(y_unseen, probs.mean(0))
        r["unseen_1fold"] = np.mean([scorer(y_unseen, p) for p in probs])
    # the blend run_ensemble applied to the test set, refitted on the same OOF rows
    final, _ = fit_blend(get_method("hill_climb"), members.oof, members.y, scorer, False)
    P = np.stack(member_probs, axis=1)  # (folds, members, n, C)
    ens = next(r for r in rows if r["model"].startswith("ensemble"))
    ens["unseen"] = scorer(y_unseen, final.predict(P.mean(0)))
    ens["unseen_1fold"] = np.mean([scorer(y_unseen, final.predict(p)) for p in P])
    cost_ens = sum(r["infer_s"] for r in rows[: len(MEMBERS)])
    ens["infer_s"] = cost_ens
    for r in rows:
        r["x_ensemble_cost"] = r["infer_s"] / cost_ens
        r["cv-unseen_1fold"] = r["cv"] - r["unseen_1fold"]

    by = {r["model"]: r for r in rows}
    base, ens = by[STUDENT], by["ensemble (hill_climb blend)"]
    pseudo_row, student_row = rows[-2], rows[-1]
    best_member = max((by[m["id"]] for m in MEMBERS), key=lambda r: r["held_out"])
    lift = pseudo_row["held_out"] - base["held_out"]
    gain = ens["held_out"] - best_member["held_out"]
    kept = (student_row["held_out"] - best_member["held_out"]) / gain if gain > 0 else math.nan
    best_unseen = max((by[m["id"]] for m in MEMBERS), key=lambda r: r["unseen"])
    gain_u = ens["unseen"] - best_unseen["unseen"]
    kept_u = (student_row["unseen"] - best_unseen["unseen"]) / gain_u if gain_u > 0 else math.nan
    gap_ok = [r["model"] for r in rows if r["|cv-held_out|"] <= GAP]
    n_test, p = len(labels), max(r["held_out"] for r in rows)
    print(f"\n== grouped Fashion-MNIST: {n_rows} training rows ({args.sources} sources x {args.views} views, 5-fold "
          f"group OOF), {n_test} held-out rows (held-out SE ~{math.sqrt(p * (1 - p) / n_test):.3f}); {args.epochs} "
          f"epochs; macro F1")  # fmt: skip
    print(f"held_out: the competition's test set (the pseudo-label pool); unseen: {len(y_unseen)} other test images no "
          "model predicted before scoring (fold average; _1fold: mean of single fold models); infer_s: all 5 fold "
          "models over the unseen images, decoded once")  # fmt: skip
    rule = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in how.items())
    print(
        f"pseudo round 1: {pl.rows} of {pl.test_rows} test rows from the blend ({rule}), {pl_acc:.3f} of them correct"
    )
    cols = ["model", "rows", "cv", "held_out", "|cv-held_out|", "unseen", "unseen_1fold", "cv-unseen_1fold", "infer_s",
            "x_ensemble_cost"]  # fmt: skip
    print(format_table(rows, cols))
    verdicts = [
        (lift >= LIFT, f"pseudo-labels lift held-out macro F1 by {lift:+.4f} over {STUDENT} (goal >= {LIFT}; "
         f"on unseen images {pseudo_row['unseen'] - base['unseen']:+.4f})"),
        (kept >= KEEP and student_row["infer_s"] < cost_ens,
         f"the student keeps {kept:.0%} of the ensemble's held-out gain over the best member ({best_member['model']}: "
         f"{gain:+.4f}) at {student_row['x_ensemble_cost']:.2f}x its inference cost (goal >= {KEEP:.0%}; on unseen "
         f"images {kept_u:.0%} of {gain_u:+.4f})"),
        (len(gap_ok) == len(rows), f"|cv - held_out| <= {GAP} on {len(gap_ok)}/{len(rows)} rows"),
    ]  # fmt: skip
    for ok, text in verdicts:
        print(f"{'MET    ' if ok else 'NOT MET'} {text}")
    print(f"total {time.perf_counter() - t0:.0f}s (training and test predictions {t_train:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
