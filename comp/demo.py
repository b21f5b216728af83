"""The bundled demo: a small competition folder built from scikit-learn's handwritten digits (real scans).

Each source digit gets a few jittered views and the source digit is the group, so a split that ignores
groups visibly leaks. Images are stored as grayscale PNGs, so the RGB reader is exercised too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from comp.config import load_config
from comp.errors import CompError
from comp.run import strangers, write_csv

DEMO_CONFIG = "demo.yaml"


def _jitter(img8: np.ndarray, rng: np.random.Generator, size: int) -> Image.Image:
    """Upsample an 8x8 digit (0..16) to ``size`` px with a random shift, rotation, scale and noise."""
    base = Image.fromarray((img8 * (255 / 16)).astype(np.uint8), mode="L").resize(
        (size - 8, size - 8), Image.Resampling.BILINEAR
    )
    canvas = Image.new("L", (size, size), 0)
    dx, dy = rng.integers(0, 9, size=2)
    canvas.paste(base, (int(dx), int(dy)))
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
    arr = np.asarray(canvas, dtype=np.float32) * rng.uniform(0.8, 1.1) + rng.normal(0, 12, (size, size))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def make_digits_competition(
    out_dir: str | Path, n_train_groups: int = 300, views: int = 4, n_test: int = 300, size: int = 32, seed: int = 0
) -> Path:
    """Write train.csv (id, label, digit group), train/, test/, sample_submission.csv and test_labels.csv."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    digits = load_digits()
    order = rng.permutation(len(digits.target))
    train_src, test_src = order[:n_train_groups], order[n_train_groups : n_train_groups + n_test]
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    rows = []
    for src in train_src:
        for v in range(views):
            rid = f"d{src:04d}_v{v}"
            _jitter(digits.images[src], rng, size).save(out / "train" / f"{rid}.png")
            rows.append({"id": rid, "label": int(digits.target[src]), "digit": f"d{src:04d}"})
    test_rows = []
    for src in test_src:
        rid = f"t{src:04d}"
        _jitter(digits.images[src], rng, size).save(out / "test" / f"{rid}.png")
        test_rows.append({"id": rid, "label": int(digits.target[src])})
    write_csv(out / "train.csv", pd.DataFrame(rows))
    test = pd.DataFrame(test_rows)
    write_csv(out / "test_labels.csv", test)
    write_csv(out / "sample_submission.csv", test.assign(label=0))
    return out


def demo_config_path() -> Path:
    """configs/demo.yaml shipped inside the package."""
    return Path(str(resources.files("comp") / "configs" / DEMO_CONFIG))


def demo_config(data_dir: str | Path = "data/demo", **overrides: object):
    """The packaged example config (configs/demo.yaml), its data paths under ``data_dir`` (``write_demo_data``
    makes the digits competition there), with ``overrides`` as {dotted key: value}::

        cfg = comp.demo_config("data/demo", **{"train.epochs": 1})
    """
    return load_config(demo_config_path(), overrides=dict(overrides), base_dir=Path(data_dir).resolve())


def write_demo_data(data_dir: str | Path = "data/demo") -> Path:
    """The demo competition (sklearn's 8x8 digits as PNGs, grouped by writer) in ``data_dir``, unless it is there."""
    data_dir = Path(data_dir)
    if not (data_dir / "train.csv").is_file():
        make_digits_competition(data_dir)
    return data_dir


def _is_demo_run(run_dir: Path) -> bool:
    """A folder ``--fresh`` may delete: a run folder whose saved config is the demo's (digits, byobnet/effnet)."""
    from comp.run import RunDir

    try:
        saved = RunDir(run_dir).config_dict()
    except CompError:
        return False
    demo = load_config(demo_config_path(), base_dir=run_dir).to_dict()
    return [m.get("id") for m in saved.get("models", []) if isinstance(m, dict)] == [
        m.get("id") for m in demo["models"]
    ] and (saved.get("data") or {}).get("group_column") == demo["data"]["group_column"]


def run_demo(
    out_dir: Path, run_dir: Path, overrides=(), fresh: bool = False, submission: Path = Path("submissions/demo.csv")
) -> Iterator[str]:
    """Build the demo data (once) and run every pipeline stage; yields report lines."""
    from comp.inference._tta import check_config as check_tta
    from comp.metrics import check_config as check_metric
    from comp.training._losses import check_config as check_losses
    from comp.training._trainer import train_folds

    out_dir, run_dir = Path(out_dir), Path(run_dir)
    cfg = load_config(
        demo_config_path(), overrides=overrides, base_dir=out_dir.resolve()
    )  # a typo fails before any delete
    for check in (check_metric, check_losses, check_tta):  # and so does a name no registry holds
        check(cfg)
    if fresh and run_dir.exists():
        if not _is_demo_run(run_dir):
            raise CompError(
                f"--fresh would delete {run_dir}, which is not a demo run folder; pass another --run-dir "
                "or delete it yourself"
            )
        others = strangers(run_dir)  # only what comp wrote is deleted: a user's file there stops --fresh
        if others:
            raise CompError(
                f"--fresh would delete {run_dir}, a demo run folder that also holds {others[0]}, which comp did "
                "not write; move it out, or delete the folder yourself"
            )
        shutil.rmtree(run_dir)
    if not (out_dir / "train.csv").is_file():
        make_digits_competition(out_dir)
        yield f"demo competition written to {out_dir}"
    result = train_folds(cfg, run_dir, resume=True)
    yield result.text()
    yield f"run folder: {run_dir}"
    yield from _after_training(run_dir, submission)


def _after_training(run_dir: Path, submission: Path) -> Iterator[str]:
    """Predict the test set with every model, blend them honestly, and write the submission."""
    from comp.ensembling import run_ensemble
    from comp.inference import predict_run
    from comp.run import RunDir

    run = RunDir(run_dir)
    mean_sub = submission.with_name(submission.stem + "-mean.csv")
    predict_run(run_dir, engine="torch", out=mean_sub, progress=False)
    yield "test predictions: " + ", ".join(str(run.test_pred(m)) for m in run.trained_ids())
    model_dirs = [run.model_dir(m) for m in run.trained_ids()]
    if len(model_dirs) > 1:
        result = run_ensemble(model_dirs, method="hill_climb", name="demo-blend", out=submission)
        yield result.text()
        if result.submission:
            yield f"submission: {result.submission}"
