"""Shared fixtures: a tiny competition folder written into tmp_path, its config, and a trained run."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# subprocesses (the `comp` script, `python -c`) import the source tree under test, not whichever checkout the
# editable install happens to point at
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))

N_CLASSES = 3


def write_competition(
    root: Path, n_groups: int = 12, per_group: int = 3, n_test: int = 8, size: int = 24, seed: int = 0
) -> Path:
    """A learnable toy competition: class k images are bright in channel k; groups of near-identical photos."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    rows = []
    for g in range(n_groups):
        label = g % N_CLASSES
        base = rng.integers(0, 90, (size, size, 3))
        base[..., label] += 140
        for v in range(per_group):
            img = np.clip(base + rng.integers(-15, 15, base.shape), 0, 255).astype(np.uint8)
            rid = f"g{g:02d}_{v}"
            Image.fromarray(img).save(root / "train" / f"{rid}.png")
            rows.append({"id": rid, "label": f"c{label}", "person": f"p{g:02d}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = []
    for t in range(n_test):
        label = t % N_CLASSES
        img = rng.integers(0, 90, (size, size, 3))
        img[..., label] += 140
        Image.fromarray(img.astype(np.uint8)).save(root / "test" / f"t{t:02d}.png")
        test.append({"id": f"t{t:02d}", "label": "c0"})
    pd.DataFrame(test).to_csv(root / "sample_submission.csv", index=False)
    return root


LABELS = ("r", "g", "b")


def write_task_competition(
    root: Path,
    kind: str,
    n_groups: int = 16,
    per_group: int = 3,
    n_test: int = 8,
    size: int = 24,
    seed: int = 0,
) -> Path:
    """A learnable toy competition of another task ``kind``:

    - ``multilabel`` (tags column ``tags``: "r b", "" for none) and ``multilabel-wide`` (0/1 columns r, g, b): a
      label is present when its colour channel is bright; an image may have none;
    - ``regression`` (``score``) and ``regression-multi`` (``red``, ``green``): the mean brightness of a channel;
    - ``ordinal`` (``grade`` 0..3): the red channel's brightness in four steps.

    Groups (``person``) are near-identical photos. The sample submission has the competition's format."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)

    def draw(level: np.ndarray) -> np.ndarray:
        base = rng.integers(0, 40, (size, size, 3)).astype(np.float64)
        return base + level[None, None, :]

    rows = []
    for g in range(n_groups):
        on = rng.random(3) < 0.5
        if kind.startswith("multilabel"):
            level = np.where(on, 170.0, 0.0)
        elif kind == "ordinal":
            grade = g % 4
            level = np.array([grade * 60.0, 30.0, 30.0])
        else:
            level = rng.uniform(0, 200, 3)
        base = draw(level)
        for v in range(per_group):
            img = np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)
            rid = f"g{g:02d}_{v}"
            Image.fromarray(img).save(root / "train" / f"{rid}.png")
            row = {"id": rid, "person": f"p{g:02d}"}
            if kind == "multilabel":
                row["tags"] = " ".join(lab for lab, o in zip(LABELS, on) if o)
            elif kind == "multilabel-wide":
                row.update({lab: int(o) for lab, o in zip(LABELS, on)})
            elif kind == "regression":
                row["score"] = round(float(img[..., 0].mean()), 3)
            elif kind == "regression-multi":
                row.update(red=round(float(img[..., 0].mean()), 3), green=round(float(img[..., 1].mean()), 3))
            else:
                row["grade"] = grade
            rows.append(row)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = []
    for t in range(n_test):
        img = np.clip(draw(rng.uniform(0, 200, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "test" / f"t{t:02d}.png")
        row = {"id": f"t{t:02d}"}
        if kind == "multilabel":
            row["tags"] = "r"
        elif kind == "multilabel-wide":
            row.update({lab: 0.5 for lab in LABELS})
        elif kind == "regression":
            row["score"] = 0.0
        elif kind == "regression-multi":
            row.update(red=0.0, green=0.0)
        else:
            row["grade"] = 0
        test.append(row)
    pd.DataFrame(test).to_csv(root / "sample_submission.csv", index=False)
    return root


TASK_KINDS = {  # kind -> (task, config overrides)
    "multilabel": ("multilabel", {"data__label_column": "tags"}),
    "multilabel-wide": ("multilabel", {"data__label_columns": list(LABELS)}),
    "regression": ("regression", {"data__label_column": "score"}),
    "regression-multi": ("regression", {"data__label_columns": ["red", "green"]}),
    "ordinal": ("regression", {"data__label_column": "grade", "metric": "qwk"}),
}


# the tags competition is scored by F2 at per-label thresholds fitted on OOF: its submission applies them
METRIC = {"multilabel": "f2"}


def task_config(root: Path, kind: str, **overrides) -> dict:
    """``tiny_config`` for a ``write_task_competition`` folder of ``kind``."""
    task, extra = TASK_KINDS[kind]
    cfg = tiny_config(root, task=task, **{**extra, **overrides})
    if "metric" not in extra and "metric" not in overrides:
        cfg.pop("metric")  # the task's default metric
    return cfg


def tiny_config(root: Path, **overrides) -> dict:
    """A config for the toy competition: one tiny timm model, 2 folds, 1 epoch, 32 px."""
    cfg = {
        "seed": 0,
        "metric": "accuracy",
        "data": {
            "train_csv": "train.csv",
            "image_dir": "train",
            "group_column": "person",
            "image_ext": ".png",
            "test_image_dir": "test",
            "sample_submission": "sample_submission.csv",
        },
        "folds": {"n_splits": 2, "seed": 0},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.01, "warmup_epochs": 0},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}]},
        "models": [{"name": "test_efficientnet", "id": "eff", "image_size": 32}],
    }
    for key, value in overrides.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def write_config(root: Path, cfg: dict, name: str = "exp.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def comp_dir(tmp_path) -> Path:
    """A fresh toy competition folder."""
    return write_competition(tmp_path / "comp")


@pytest.fixture
def config_file(comp_dir) -> Path:
    """A config file for the toy competition, next to its data."""
    return write_config(comp_dir, tiny_config(comp_dir))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-fold run of one tiny model (shared by read-only tests: predict, export, explain, ensemble)."""
    from comp.config import load_config
    from comp.training._trainer import train_folds

    root = write_competition(tmp_path_factory.mktemp("trained") / "comp")
    cfg = load_config(write_config(root, tiny_config(root, train__epochs=2)))
    run_dir = root.parent / "run"
    train_folds(cfg, run_dir, progress=False)
    return run_dir


def check_no_leak(folds: np.ndarray, groups: np.ndarray) -> None:
    """Fail if any group sits in more than one fold."""
    per_group: dict[object, int] = {}
    for f, g in zip(folds, groups):
        if per_group.setdefault(g, f) != f:
            raise AssertionError(f"group {g!r} appears in folds {per_group[g]} and {f}")


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its size and mtime: equal snapshots mean nothing was written there."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def chmod_tree(folder: Path, writable: bool) -> None:
    """Make ``folder`` and everything under it read-only (as Kaggle's /kaggle/input) or writable again."""
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture(scope="session")
def ort_python(tmp_path_factory) -> Path:
    """A fresh virtual environment holding only onnxruntime, numpy and Pillow (and their own dependencies):
    no torch, no comp, no OpenCV, as in a Kaggle notebook that installs nothing else."""
    venv = tmp_path_factory.mktemp("ort_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "onnxruntime",
            "numpy",
            "Pillow",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot install onnxruntime, numpy and Pillow into a venv: {res.stderr.strip()[-300:]}")
    return python


def clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH: the venv must not see this source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory):
    """``get(kind)``: a trained run of that kind, built on first use and shared by the session (read-only: a
    test that writes into it takes ``run_of``'s copy)."""
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        from comp.config import load_config
        from comp.training._trainer import train_folds

        if kind not in cache:
            root = write_task_competition(tmp_path_factory.mktemp(kind) / "comp", kind)
            over = {"metric": METRIC[kind]} if kind in METRIC else {}
            cfg = load_config(write_config(root, task_config(root, kind, **over)))
            train_folds(cfg, root.parent / "run", progress=False)
            cache[kind] = root.parent / "run"
        return cache[kind]

    return get


@pytest.fixture
def run_of(task_runs, tmp_path):
    """``copy(kind)``: a private copy of the trained run of that kind that a test may write into."""

    def copy(kind: str) -> Path:
        dst = tmp_path / f"run-{kind}"
        shutil.copytree(task_runs(kind), dst)
        return dst

    return copy


if os.environ.get("PYTEST_XDIST_WORKER"):
    # the full command runs two workers on the machine's cores: one torch thread each (and in the commands they
    # start) instead of two threads each fighting over them; 1.65x less wall time on the 2-core CI machine
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
