"""Benchmark: trial-epochs a tuning budget costs with pruning against without, and the best score each finds.

Measured side by side in one run on the digits demo competition: the same space, sampler seed and trial budget
through ``comp.tuning._tune.tune`` (the code path of ``comp tune``), once per pruner. A trial-epoch is one epoch of one
fold of one trial; the first TPE trials are random and seeded, so every arm starts from the same samples.

Usage: python benchmarks/bench_tune.py [--trials 10] [--folds 0] [--epochs 4] [--pruners none,median,hyperband]

The first pruner is the baseline of the ratio column.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp._tables import format_table  # noqa: E402
from comp.config import load_config  # noqa: E402
from comp.demo import demo_config_path, make_digits_competition  # noqa: E402
from comp.tuning._tune import tune  # noqa: E402

SPACE = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "train.weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "loss.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
}


def run_arm(data: Path, work: Path, pruner: str, args) -> dict:
    """One tuning run with one pruner; returns its row of the table."""
    overrides = [
        "models=[{name: test_efficientnet, image_size: 32}]",
        f"train.max_steps_per_epoch={args.max_steps}",
        "train.batch_size=32",
        "augment.mixup.prob=0.0",
        "train.warmup_epochs=0",
    ]
    cfg = load_config(demo_config_path(), overrides=overrides, base_dir=data, tune={"space": SPACE})
    folds = [int(k) for k in args.folds.split(",")]
    t0 = time.perf_counter()
    tune(cfg, work / pruner, n_trials=args.trials, folds=folds, epochs=args.epochs, pruner=pruner, seed=args.seed)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="comp", storage=f"sqlite:///{(work / pruner / 'study.db').resolve()}")
    epochs = sum(len(t.intermediate_values) for t in study.trials)
    states = [t.state.name for t in study.trials]
    return {
        "pruner": pruner,
        "trials": len(states),
        "pruned": states.count("PRUNED"),
        "trial_epochs": epochs,
        "best_macro_f1": study.best_value,
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--folds", default="0")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=4, help="train.max_steps_per_epoch (batches of 32)")
    p.add_argument("--groups", type=int, default=150, help="source digits in the demo training set (x2 views)")
    p.add_argument("--pruners", default="none,median")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_digits_competition(Path(tmp) / "digits", n_train_groups=args.groups, views=2, n_test=20)
        rows = [run_arm(data, Path(tmp) / "tune", name, args) for name in args.pruners.split(",")]
    base = rows[0]
    for r in rows:
        r["epochs_vs_" + base["pruner"]] = r["trial_epochs"] / base["trial_epochs"]
        r["best_diff"] = r["best_macro_f1"] - base["best_macro_f1"]
    print(
        f"{args.trials} trials x folds {args.folds} x {args.epochs} epochs, test_efficientnet 32 px, "
        f"{args.groups * 2} images, {args.max_steps} steps/epoch, TPE seed {args.seed}"
    )
    print(
        format_table(
            rows,
            [
                "pruner",
                "trials",
                "pruned",
                "trial_epochs",
                f"epochs_vs_{base['pruner']}",
                "best_macro_f1",
                "best_diff",
                "wall_s",
            ],
            floatfmt=".3f",
        )
    )


if __name__ == "__main__":
    main()
