"""A catalogue of bad inputs across every command.

Each case must end with exit code 2 and one line ``error: ...`` that names the culprit, no traceback, and
(for train-folds) nothing written: the run folder does not exist afterwards, so the corrected command runs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config
from PIL import Image

from comp.cli import main


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, needle: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    assert "Traceback" not in result.output
    assert needle.lower() in errors[0].lower(), errors[0]
    return errors[0]


# ---------------------------------------------------------------- train-folds: config and data


@dataclass
class Case:
    id: str
    needle: str
    cfg: dict = field(default_factory=dict)  # tiny_config overrides (section__key=value)
    raw_yaml: str | None = None  # replaces the config file's text
    setup: Callable[[Path], None] | None = None  # mutates the competition folder
    args: tuple = ()


def _csv(fn):
    def setup(root: Path) -> None:
        df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
        fn(df, root).to_csv(root / "train.csv", index=False)

    return setup


def _write(rel: str, data: bytes):
    def setup(root: Path) -> None:
        (root / rel).write_bytes(data)

    return setup


def _truncate(root: Path) -> None:
    p = root / "train" / "g00_0.png"
    p.write_bytes(p.read_bytes()[:60])


def _rm(rel: str):
    def setup(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return setup


def _garbage_weights(root: Path) -> None:
    (root / "w.pth").write_bytes(b"not a checkpoint at all")


def _wrong_weights(root: Path) -> None:
    torch.save({"something": torch.zeros(3)}, root / "w.pth")


def _fifo(rel: str):
    """Replace a file by a FIFO of the same name: a reader that opens it blocks until someone writes."""

    def setup(root: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        os.mkfifo(root / rel)

    return setup


def _link(rel: str, target: str):
    def setup(root: Path) -> None:
        (root / rel).unlink(missing_ok=True)
        (root / rel).symlink_to(target)

    return setup


TRAIN_CASES = [
    Case("config-syntax", "not valid YAML", raw_yaml="train:\n  epochs: [1,\n"),
    Case("config-list", "must hold a mapping", raw_yaml="- a\n- b\n"),
    Case("config-duplicate-key", "appears twice", raw_yaml="seed: 1\nseed: 2\n"),
    Case(
        "config-duplicate-key-beside-a-merge",
        "key 'id' appears twice",
        raw_yaml="models:\n  - &m {name: test_efficientnet, image_size: 32}\n  - {<<: *m, id: b, id: c}\n",
    ),
    Case("config-merge-of-a-scalar", "not valid YAML", raw_yaml="x: &s 3\nmodels:\n  - {<<: *s, name: a}\n"),
    Case("set-section-unknown-key", "unknown config key 'train.epoch'", args=("--set", "train={epoch: 1}")),
    Case("unknown-top-key", "unknown config key 'trian'", cfg={"trian": {}}),
    Case("unknown-nested-key", "did you mean 'epochs'", cfg={"train__epoch": 3}),
    Case("wrong-type", "'train.epochs' must be int", cfg={"train__epochs": "three"}),
    Case("bool-for-int", "'train.batch_size' must be int", cfg={"train__batch_size": True}),
    Case("negative-lr", "train.lr", cfg={"train__lr": -0.1}),
    Case("negative-weight-decay", "train.weight_decay", cfg={"train__weight_decay": -1}),
    Case("momentum-one", "train.momentum", cfg={"train__momentum": 1.0}),
    Case("negative-warmup", "train.warmup_epochs", cfg={"train__warmup_epochs": -1}),
    Case("warmup-over-epochs", "warmup_epochs", cfg={"train__warmup_epochs": 5}),
    Case("negative-early-stopping", "train.early_stopping", cfg={"train__early_stopping": -1}),
    Case("zero-max-steps", "train.max_steps_per_epoch", cfg={"train__max_steps_per_epoch": 0}),
    Case("freeze-over-epochs", "freeze_epochs", cfg={"train__freeze_epochs": 3}),
    Case("nan-lr", "finite", raw_yaml=None, cfg={"train__lr": float("nan")}),
    Case("one-split", "folds.n_splits", cfg={"folds__n_splits": 1}),
    Case("unknown-metric", "unknown metric 'f1'", cfg={"metric": "f1"}),
    Case("unknown-loss", "unknown loss 'bcee'", cfg={"loss__name": "bcee"}),
    Case("loss-of-another-task", "does not fit task classification", cfg={"loss__name": "bce"}),
    Case("metric-of-another-task", "does not fit task classification", cfg={"metric": "rmse"}),
    Case("bad-choice", "must be one of adamw, sgd", cfg={"train__optimizer": "adam"}),
    Case("bad-amp", "train.amp", cfg={"train__amp": "fp8"}),
    Case("bad-device", "config key 'device'", cfg={"device": "gpu"}),
    Case("cuda-without-gpu", "no CUDA device", cfg={"device": "cuda"}),
    Case("no-models", "at least one model", cfg={"models": []}),
    Case("model-without-name", "must be a mapping with a timm 'name'", cfg={"models": [{"id": "x"}]}),
    Case("duplicate-model-ids", "used twice", cfg={"models": [{"name": "test_efficientnet", "image_size": 32}] * 2}),
    Case("model-id-slash", "plain folder name", cfg={"models": [{"name": "test_efficientnet", "id": "a/b"}]}),
    Case("image-size-zero", "image_size", cfg={"models": [{"name": "test_efficientnet", "image_size": 0}]}),
    Case("image-size-triple", "image_size", cfg={"models": [{"name": "test_efficientnet", "image_size": [8, 8, 8]}]}),
    Case("unknown-model-key", "models[0].lrr", cfg={"models": [{"name": "test_efficientnet", "lrr": 1}]}),
    Case(
        "unknown-timm-model",
        "unknown timm model 'resnet18x'",
        cfg={"models": [{"name": "resnet18x", "image_size": 32}]},
    ),
    Case("in-chans-zero", "in_chans", cfg={"models": [{"name": "test_efficientnet", "in_chans": 0}]}),
    Case(
        "unknown-augmentation",
        "unknown albumentations transform 'HorizontalFlipp'",
        cfg={"augment__train": [{"name": "HorizontalFlipp"}]},
    ),
    Case("unknown-aug-argument", "bogus_arg", cfg={"augment__train": [{"name": "HorizontalFlip", "bogus_arg": 1}]}),
    Case("typo-aug-argument", "rotat", cfg={"augment__train": [{"name": "Affine", "rotat": 10}]}),
    Case("aug-not-mapping", "augment.train", cfg={"augment__train": ["HorizontalFlip"]}),
    Case("aug-bad-value", "augment.train", cfg={"augment__train": [{"name": "HorizontalFlip", "p": 2}]}),
    Case("random-valid-aug", "augment.valid", cfg={"augment__valid": [{"name": "HorizontalFlip", "p": 0.5}]}),
    Case("mixup-prob", "augment.mixup.prob", cfg={"augment__mixup": {"prob": 2}}),
    Case("mixup-mode", "augment.mixup.mode", cfg={"augment__mixup": {"mode": "rows"}}),
    Case("label-smoothing-one", "loss.label_smoothing", cfg={"loss__label_smoothing": 1.0}),
    Case("class-weights-word", "loss.class_weights", cfg={"loss__class_weights": "auto"}),
    Case("class-weights-length", "loss.class_weights", cfg={"loss__class_weights": [1.0, 2.0]}),
    Case("class-weights-negative", "loss.class_weights", cfg={"loss__class_weights": [1.0, -2.0, 1.0]}),
    Case("pretrained-missing", "w.pth", cfg={"models": [{"name": "test_efficientnet", "pretrained": "w.pth"}]}),
    Case(
        "pretrained-garbage",
        "w.pth",
        cfg={"models": [{"name": "test_efficientnet", "pretrained": "w.pth"}]},
        setup=_garbage_weights,
    ),
    Case(
        "pretrained-wrong-keys",
        "w.pth",
        cfg={"models": [{"name": "test_efficientnet", "pretrained": "w.pth"}]},
        setup=_wrong_weights,
    ),
    Case("unknown-tta", "unknown TTA view 'hflipp'", cfg={"predict__tta": ["hflipp"]}),
    Case("bad-cache", "data.cache", cfg={"data__cache": "ram"}),
    Case("negative-workers", "data.num_workers", cfg={"data__num_workers": -1}),
    Case("duplicate-classes", "data.classes", cfg={"data__classes": ["c0", "c0", "c1"]}),
    Case("set-without-equals", "key=value", args=("--set", "train.epochs")),
    Case("set-unknown-section", "unknown section 'trainn'", args=("--set", "trainn.epochs=3")),
    Case("set-bad-index", "not an index", args=("--set", "models.7.lr=1")),
    Case("set-unknown-leaf", "unknown config key 'train.epoch'", args=("--set", "train.epoch=3")),
    Case("folds-out-of-range", "folds are numbered 0..1", args=("--folds", "7")),
    Case("folds-not-numbers", "--folds", args=("--folds", "a,b")),
    # data
    Case("train-csv-missing", "train.csv", setup=_rm("train.csv")),
    Case("train-csv-empty", "is empty", setup=_write("train.csv", b"")),
    Case("train-csv-header-only", "no rows", setup=_write("train.csv", b"id,label,person\n")),
    Case("train-csv-binary", "train.csv", setup=_write("train.csv", b"\xff\xfe\x00\x81garbage\x00\n\x00")),
    Case("id-column-missing", "column 'ident' not found", cfg={"data__id_column": "ident"}),
    Case("label-column-missing", "column 'target' not found", cfg={"data__label_column": "target"}),
    Case("group-column-missing", "column 'subject' not found", cfg={"data__group_column": "subject"}),
    Case("duplicate-id", "duplicate id", setup=_csv(lambda df, r: pd.concat([df, df.head(1)]))),
    Case("empty-id", "empty id", setup=_csv(lambda df, r: df.assign(id=[""] + list(df["id"][1:])))),
    Case("empty-label", "empty label", setup=_csv(lambda df, r: df.assign(label=[""] + list(df["label"][1:])))),
    Case(
        "label-only-spaces",
        "line 2: empty label",
        setup=_csv(lambda df, r: df.assign(label=["  "] + list(df["label"][1:]))),
    ),
    Case("label-not-declared", "not in data.classes", cfg={"data__classes": ["c0", "c1"]}),
    Case("single-class", "only one class", setup=_csv(lambda df, r: df.assign(label="c0"))),
    Case("image-missing", "g00_0.png", setup=_rm("train/g00_0.png")),
    Case("image-garbage", "g00_0.png", setup=_write("train/g00_0.png", b"this is not a png")),
    Case("image-truncated", "g00_0.png", setup=_truncate),
    Case("image-dir-missing", "image folder", setup=_rm("train")),
    Case(
        "path-escapes",
        "escapes the image folder",
        setup=_csv(lambda df, r: df.assign(id=["../../etc/passwd"] + list(df["id"][1:]))),
    ),
    Case("template-unclosed", "data.path_template", cfg={"data__path_template": "{id"}),
    Case("template-dotdot", "escapes the image folder", cfg={"data__path_template": "../test/{id}.png"}),
    Case(
        "id-absolute",
        "escapes the image folder",
        setup=_csv(lambda df, r: df.assign(id=["/etc/passwd"] + list(df["id"][1:]))),
    ),
    Case("template-positional", "data.path_template", cfg={"data__path_template": "{0}.png"}),
    Case("template-unknown-column", "data.path_template", cfg={"data__path_template": "{nope}.png"}),
    Case(
        "class-clashes",
        "clashes with a column",
        setup=_csv(lambda df, r: df.assign(label=df["label"].replace("c0", "fold"))),
    ),
    Case("too-few-groups", "only 12 groups", cfg={"folds__n_splits": 13}),
    Case("class-named-like-id", "clashes", setup=_csv(lambda df, r: df.assign(label=df["label"].replace("c1", "id")))),
    # preflight gaps: each used to write config.yaml and folds.csv before failing, or to pass silently
    Case("device-index-absent", "'cuda:99'", cfg={"device": "cuda:99"}),
    Case("device-index-set", "'cuda:3'", args=("--set", "device=cuda:3")),
    Case(
        "lambda-not-callable",
        "augment.train[0] (Lambda) fails on the training image",
        cfg={"augment__train": [{"name": "Lambda", "image": "foo"}]},
    ),
    Case(
        "crop-larger-than-images",
        "augment.train[1] (RandomCrop)",
        cfg={"augment__train": [{"name": "HorizontalFlip"}, {"name": "RandomCrop", "height": 64, "width": 64}]},
    ),
    Case("folds-seed-too-big", "'folds.seed' must be <= 4294967295", cfg={"folds__seed": 2**32}),
    Case("folds-seed-negative", "'folds.seed' must be >= 0", cfg={"folds__seed": -1}),
    Case("folds-empty", "--folds", args=("--folds", "")),
    Case("folds-only-commas", "needs at least one value", args=("--folds", ",")),
    # float-producing transforms: comp appends the normalisation itself
    Case("normalize-in-train", "comp appends the normalisation", cfg={"augment__train": [{"name": "Normalize"}]}),
    Case(
        "tofloat-in-train",
        "augment.train[1] (ToFloat)",
        cfg={"augment__train": [{"name": "HorizontalFlip"}, {"name": "ToFloat"}]},
    ),
    Case("totensor-in-train", "comp appends the normalisation", cfg={"augment__train": [{"name": "ToTensorV2"}]}),
    Case("normalize-in-valid", "augment.valid[0] (Normalize)", cfg={"augment__valid": [{"name": "Normalize"}]}),
    Case(
        "tofloat-in-valid",
        "comp appends the normalisation",
        cfg={"augment__valid": [{"name": "ToFloat", "max_value": 255}]},
    ),
    Case("totensor-in-valid", "augment.valid[0] (ToTensorV2)", cfg={"augment__valid": [{"name": "ToTensorV2"}]}),
    Case("fromfloat-makes-floats", "turns the uint8 image into float", cfg={"augment__train": [{"name": "FromFloat"}]}),
    # special files: refused for what they are, never read (a FIFO blocks, /dev/zero never ends)
    Case("image-fifo", "g00_0.png is not a regular file (a FIFO)", setup=_fifo("train/g00_0.png")),
    Case("image-dev-zero", "is not a regular file (a character device)", setup=_link("train/g00_0.png", "/dev/zero")),
    Case(
        "image-is-a-folder",
        "g00_0.png is a folder",
        setup=lambda r: (_rm("train/g00_0.png")(r), (r / "train/g00_0.png").mkdir()),
    ),
    Case("train-csv-fifo", "train.csv is not a regular file (a FIFO)", setup=_fifo("train.csv")),
    Case(
        "pretrained-fifo",
        "w.pth is not a regular file",
        cfg={"models": [{"name": "test_efficientnet", "pretrained": "w.pth"}]},
        setup=_fifo("w.pth"),
    ),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c.id for c in TRAIN_CASES])
def test_train_folds_bad_input(case: Case, tmp_path):
    root = write_competition(tmp_path / "comp")
    cfg = tiny_config(root)
    for key, value in case.cfg.items():
        node, parts = cfg, key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    path = write_config(root, cfg)
    if case.raw_yaml is not None:
        path.write_text(case.raw_yaml)
    if case.setup:
        case.setup(root)
    run_dir = tmp_path / "run"
    result = invoke("train-folds", "--config", path, "--run-dir", run_dir, "--quiet", *case.args)
    assert_one_line_error(result, case.needle)
    assert not run_dir.exists() or not any(run_dir.rglob("*")), sorted(run_dir.rglob("*"))  # validated before any write


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    root = write_competition(tmp_path / "comp")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every 24x24 image is now over twice the limit
    result = invoke("train-folds", "--config", write_config(root, tiny_config(root)), "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "g00_0.png")


def test_unwritable_run_dir(tmp_path):
    root = write_competition(tmp_path / "comp")
    (tmp_path / "file").write_text("x")
    result = invoke(
        "train-folds", "--config", write_config(root, tiny_config(root)), "--run-dir", tmp_path / "file" / "run"
    )
    assert_one_line_error(result, "file")


# ---------------------------------------------------------------- commands on a trained run


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _ckpt(run: Path) -> Path:
    return run / "models" / "eff" / "fold0.pt"


def _edit_ckpt(fn):
    def setup(run: Path) -> None:
        ck = torch.load(_ckpt(run), weights_only=True)
        fn(ck)
        torch.save(ck, _ckpt(run))

    return setup


RUN_CASES = [
    # (id, setup(run) or None, argv builder(run, tmp) -> list, needle)
    ("predict-no-folder", None, lambda r, t: ["predict", t / "nowhere"], "not a run folder"),
    (
        "predict-bad-config-yaml",
        lambda r: (r / "config.yaml").write_text("data: [\n"),
        lambda r, t: ["predict", r],
        "not valid YAML",
    ),
    (
        "predict-config-bad-key",
        lambda r: (r / "config.yaml").write_text("trian: {}\n"),
        lambda r, t: ["predict", r],
        "trian",
    ),
    (
        "predict-missing-fold",
        lambda r: _ckpt(r).unlink(),
        lambda r, t: ["predict", r, "--out", t / "s.csv"],
        "--folds 0",
    ),
    ("predict-bad-tta", None, lambda r, t: ["predict", r, "--tta", "hflipp"], "hflipp"),
    ("predict-batch-zero", None, lambda r, t: ["predict", r, "--batch-size", "0"], "--batch-size"),
    ("predict-unknown-model", None, lambda r, t: ["predict", r, "--model", "nope"], "--model nope"),
    ("predict-bad-set", None, lambda r, t: ["predict", r, "--set", "data.nope=1"], "data.nope"),
    (
        "predict-out-under-file",
        None,
        lambda r, t: ["predict", r, "--engine", "torch", "--out", r / "config.yaml" / "s.csv"],
        "config.yaml",
    ),
    ("predict-garbage-checkpoint", lambda r: _ckpt(r).write_bytes(b"garbage"), lambda r, t: ["predict", r], "fold0.pt"),
    (
        "predict-ckpt-missing-state",
        _edit_ckpt(lambda ck: ck.pop("state_dict")),
        lambda r, t: ["predict", r],
        "state_dict",
    ),
    (
        "predict-ckpt-wrong-state",
        _edit_ckpt(lambda ck: ck["state_dict"].pop(next(iter(ck["state_dict"])))),
        lambda r, t: ["predict", r, "--engine", "torch"],
        "fold0.pt",
    ),
    (
        "predict-ckpt-local-dir-model",
        _edit_ckpt(lambda ck: ck.update(model_name="local-dir:/tmp/evil")),
        lambda r, t: ["predict", r, "--engine", "torch"],
        "model_name",
    ),
    (
        "predict-ckpt-unknown-transform",
        _edit_ckpt(
            lambda ck: ck["eval_transform"]["transform"]["transforms"].__setitem__(
                0, {"__class_fullname__": "os.system", "p": 1.0}
            )
        ),
        lambda r, t: ["predict", r, "--engine", "torch"],
        "eval_transform",
    ),
    ("export-opset-low", None, lambda r, t: ["export", r, "--opset", "1"], "--opset"),
    ("export-opset-high", None, lambda r, t: ["export", r, "--opset", "99"], "--opset"),
    ("export-tta-without-fuse", None, lambda r, t: ["export", r, "--tta", "hflip"], "--fuse"),
    ("export-bad-tta", None, lambda r, t: ["export", r, "--fuse", "--tta", "nope"], "nope"),
    ("export-garbage-checkpoint", lambda r: _ckpt(r).write_bytes(b"garbage"), lambda r, t: ["export", r], "fold0.pt"),
    ("ensemble-missing", None, lambda r, t: ["ensemble", t / "nowhere"], "nowhere"),
    ("ensemble-run-folder", None, lambda r, t: ["ensemble", r], "not a model folder"),
    ("ensemble-unknown-method", None, lambda r, t: ["ensemble", r / "models/eff", "--method", "stacker"], "stacker"),
    ("ensemble-twice", None, lambda r, t: ["ensemble", r / "models/eff", r / "models/eff"], "listed twice"),
    ("ensemble-nan-oof", lambda r: _nan_oof(r), lambda r, t: ["ensemble", r / "models/eff"], "oof.csv line 2"),
    (
        "ensemble-no-oof",
        lambda r: (r / "models/eff/oof.csv").unlink(),
        lambda r, t: ["ensemble", r / "models/eff"],
        "oof.csv",
    ),
    ("explain-unknown-model", None, lambda r, t: ["explain", r, "--model", "nope"], "nope"),
    ("explain-top-zero", None, lambda r, t: ["explain", r, "--top", "0"], "--top"),
    ("explain-unknown-id", None, lambda r, t: ["explain", r, "--gradcam-ids", "zzz"], "zzz"),
    (
        "submit-missing-file",
        None,
        lambda r, t: ["submit", t / "no.csv", "--competition", "c", "--message", "m", "--run", r],
        "no.csv",
    ),
    ("submit-no-sample", None, lambda r, t: ["submit", _sub(t), "--competition", "c", "--message", "m"], "--sample"),
    (
        "submit-wrong-columns",
        None,
        lambda r, t: ["submit", _sub(t, cols=["x", "y"]), "--competition", "c", "--message", "m", "--run", r],
        "columns",
    ),
    ("tune-no-space", None, lambda r, t: ["tune", "--config", r / "config.yaml", "--out", t / "t"], "tune.space"),
    # outputs that would replace what the command reads (copies of the competition files: the fixture is shared)
    (
        "predict-out-train-csv",
        None,
        lambda r, t: ["predict", r, "--engine", "torch", *_copied(r, t, "train_csv"), "--out", t / "train.csv"],
        "is the training table data.train_csv",
    ),
    (
        "predict-out-sample",
        None,
        lambda r, t: ["predict", r, *_copied(r, t, "sample_submission"), "--out", t / "sample_submission.csv"],
        "is the sample submission",
    ),
    (
        "predict-out-link-to-train-csv",
        None,
        lambda r, t: ["predict", r, *_copied(r, t, "train_csv"), "--out", _linked(t / "sub.csv", t / "train.csv")],
        "is the training table",
    ),
    (
        "predict-out-hard-link-to-sample",
        None,
        lambda r, t: ["predict", r, *_copied(r, t, "sample_submission"), "--out", _hard(t / "sample_submission.csv")],
        "is the sample submission",
    ),
    ("predict-out-member-oof", None, lambda r, t: ["predict", r, "--out", r / "models/eff/oof.csv"], "model folders"),
    ("predict-out-run-config", None, lambda r, t: ["predict", r, "--out", r / "config.yaml"], "the run's config.yaml"),
    ("predict-out-run-folds", None, lambda r, t: ["predict", r, "--out", r / "folds.csv"], "the run's folds.csv"),
    (
        "ensemble-out-member-oof",
        lambda r: _predicted(r),
        lambda r, t: ["ensemble", r / "models/eff", "--out", r / "models/eff/oof.csv"],
        "model folders",
    ),
    (
        "ensemble-out-member-test",
        lambda r: _predicted(r),
        lambda r, t: ["ensemble", r / "models/eff", "--method", "mean,rank", "--out", r / "models/eff/test.csv"],
        "model folders",
    ),
    (
        "pseudo-out-test-csv",
        lambda r: _predicted(r),
        lambda r, t: ["pseudo", r, "--out", r / "models/eff/test.csv", "--threshold", "0"],
        "model folders",
    ),
    (
        "pseudo-out-run-config",
        lambda r: _predicted(r),
        lambda r, t: ["pseudo", r, "--out", r / "config.yaml", "--threshold", "0"],
        "the run's config.yaml",
    ),
    ("explain-out-run-folder", None, lambda r, t: ["explain", r, "--out", r], "is a run folder"),
    ("explain-out-model-folder", None, lambda r, t: ["explain", r, "--out", r / "models/eff"], "model folder of a run"),
    ("bundle-out-run-folder", None, lambda r, t: ["bundle", r, "--out", r], "not a comp bundle"),
    ("predict-device-index", None, lambda r, t: ["predict", r, "--set", "device=cuda:99"], "'cuda:99'"),
    # special files where predict reads
    (
        "predict-test-image-fifo",
        None,
        lambda r, t: ["predict", r, "--set", f"data.test_image_dir={_images_with_fifo(r, t)}"],
        "t00.png for id 't00' is not a regular file (a FIFO)",
    ),
    (
        "predict-test-csv-fifo",
        None,
        lambda r, t: ["predict", r, "--set", f"data.test_csv={_made_fifo(t / 'test.csv')}"],
        "test.csv is not a regular file (a FIFO)",
    ),
]


def _data(run: Path, key: str) -> Path:
    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"][key])


def _copied(run: Path, tmp: Path, key: str) -> list[str]:
    """A private copy of the run's data file ``key`` and the --set that points predict at it."""
    src = _data(run, key)
    shutil.copy(src, tmp / src.name)
    return ["--set", f"data.{key}={tmp / src.name}"]


def _linked(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _hard(target: Path) -> Path:
    os.link(target, target.with_name("hard.csv"))
    return target.with_name("hard.csv")


def _made_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _images_with_fifo(run: Path, tmp: Path) -> Path:
    images = tmp / "test_images"
    shutil.copytree(_data(run, "test_image_dir"), images)
    (images / "t00.png").unlink()
    os.mkfifo(images / "t00.png")
    return images


def _predicted(run: Path) -> None:
    import comp

    comp.predict(run, engine="torch", out=run.parent / "predicted.csv", progress=False)


def _nan_oof(run: Path) -> None:
    p = run / "models/eff/oof.csv"
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    df.iloc[0, 3] = "nan"
    df.to_csv(p, index=False)


def _sub(tmp: Path, cols=("id", "label")) -> Path:
    p = tmp / "sub.csv"
    pd.DataFrame({c: ["t00"] for c in cols}).to_csv(p, index=False)
    return p


@pytest.mark.parametrize("cid, setup, argv, needle", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_commands_on_a_run_bad_input(cid, setup, argv, needle, run_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setup:
        setup(run_copy)
    before = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    result = invoke(*argv(run_copy, tmp_path))
    assert_one_line_error(result, needle)
    after = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    changed = [p for p in after if before.get(p) != after[p] and p.suffix not in (".onnx", ".json")]
    assert not changed, changed  # a refused command changes nothing that a later command reads


# ---------------------------------------------------------------- tune


def _tune_config(tmp_path, space=None, **tune) -> Path:
    root = write_competition(tmp_path / "comp")
    cfg = tiny_config(root, train__max_steps_per_epoch=1)
    cfg["tune"] = {"space": space or {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}, **tune}
    return write_config(root, cfg)


TUNE_CASES = [
    ("space-bad-type", {"train.lr": {"type": "real", "low": 0.1, "high": 1}}, {}, (), "type must be one of"),
    (
        "space-log-and-step",
        {"train.lr": {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}},
        {},
        (),
        "log and step",
    ),
    ("space-step-zero", {"train.lr": {"type": "float", "low": 0.1, "high": 1, "step": 0}}, {}, (), "step must be"),
    ("space-unknown-spec-key", {"train.lr": {"type": "float", "low": 0.1, "high": 1, "lgo": True}}, {}, (), "lgo"),
    ("space-low-above-high", {"train.lr": {"type": "float", "low": 1, "high": 0.1}}, {}, (), "swap them"),
    ("space-unknown-key", {"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, {}, (), "did you mean 'lr'"),
    ("space-corner-invalid", {"train.momentum": {"type": "float", "low": 0.5, "high": 1.5}}, {}, (), "train.momentum"),
    ("direction-up", None, {"direction": "up"}, (), "tune.direction"),
    ("n-trials-zero", None, {}, ("--n-trials", "0"), "--n-trials"),
    ("n-trials-negative", None, {}, ("--n-trials", "-1"), "--n-trials"),
    ("timeout-zero", None, {}, ("--timeout", "0"), "--timeout"),
    ("epochs-zero", None, {}, ("--epochs", "0"), "--epochs"),
    ("folds-out-of-range", None, {}, ("--folds", "5"), "--folds"),
    ("storage-unknown-scheme", None, {}, ("--storage", "foo://x"), "--storage"),
    ("storage-sqlite-missing-folder", None, {}, ("--storage", "sqlite:////nonexistent/dir/x.db"), "--storage"),
    ("storage-journal-folder", None, {}, ("--storage", "journal:{tmp}"), "--storage"),
    ("storage-postgres-unreachable", None, {}, ("--storage", "postgresql://u@127.0.0.1:1/db"), "--storage"),
]


@pytest.mark.parametrize("cid, space, tune, args, needle", TUNE_CASES, ids=[c[0] for c in TUNE_CASES])
def test_tune_bad_input(cid, space, tune, args, needle, tmp_path):
    path = _tune_config(tmp_path, space, **tune)
    args = tuple(a.format(tmp=tmp_path) for a in args)
    result = invoke("tune", "--config", path, "--out", tmp_path / "t", "--epochs", "1", *args)
    assert_one_line_error(result, needle)


# ---------------------------------------------------------------- the other commands


def test_bench_data_and_eda_bad_options(tmp_path):
    root = write_competition(tmp_path / "comp")
    path = write_config(root, tiny_config(root))
    assert_one_line_error(invoke("bench-data", "--config", path, "--workers", "-1"), "--workers")
    assert_one_line_error(invoke("bench-data", "--config", path, "--cache", "ram"), "ram")
    assert_one_line_error(invoke("eda", "--config", path, "--threshold", "99", "--out", tmp_path / "e"), "--threshold")


def test_demo_fresh_refuses_a_folder_that_is_not_a_demo_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert_one_line_error(invoke("demo", "--fresh", "--run-dir", precious), "not a demo run folder")
    assert (precious / "thesis.tex").is_file()
    result = invoke("demo", "--fresh", "--run-dir", precious, "--set", "train.epoch=1")
    assert_one_line_error(result, "train.epoch")
    assert (precious / "thesis.tex").is_file()


# ---------------------------------------------------------------- a refused run never blocks its own fix


def test_fixing_a_refused_config_in_the_same_run_folder_works(tmp_path):
    root = write_competition(tmp_path / "comp")
    run_dir = tmp_path / "run"
    bad = write_config(root, tiny_config(root, models=[{"name": "resnet18x", "image_size": 32}]))
    assert_one_line_error(invoke("train-folds", "--config", bad, "--run-dir", run_dir), "resnet18x")
    good = write_config(root, tiny_config(root))
    result = invoke("train-folds", "--config", good, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output


def test_removing_a_bad_image_row_as_told_then_rerunning_works(tmp_path):
    root = write_competition(tmp_path / "comp")
    run_dir = tmp_path / "run"
    path = write_config(root, tiny_config(root))
    (root / "train" / "g03_1.png").write_bytes(b"broken")
    msg = assert_one_line_error(invoke("train-folds", "--config", path, "--run-dir", run_dir), "g03_1.png")
    assert "line" in msg
    df = pd.read_csv(root / "train.csv", dtype=str)
    df[df["id"] != "g03_1"].to_csv(root / "train.csv", index=False)
    result = invoke("train-folds", "--config", path, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output


def test_a_run_that_trained_nothing_accepts_a_changed_config(tmp_path):
    """config.yaml and folds.csv of a run with no finished or partial fold are replaced, not a reason to refuse."""
    root = write_competition(tmp_path / "comp")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": 99}))
    (run_dir / "folds.csv").write_text("id,fold\nzzz,0\n")
    result = invoke("train-folds", "--config", write_config(root, tiny_config(root)), "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- values that look like missing data


def test_ids_and_labels_that_look_like_missing_values_survive_every_reader(tmp_path):
    root = write_competition(tmp_path / "comp", n_groups=9)
    df = pd.read_csv(root / "train.csv", dtype=str)
    rename = {df["id"][0]: "NA", df["id"][1]: "null", df["id"][2]: "nan"}
    for old, new in rename.items():
        (root / "train" / f"{old}.png").rename(root / "train" / f"{new}.png")
    df["id"] = df["id"].replace(rename)
    df["label"] = df["label"].replace({"c0": "NA", "c1": "NaN"})
    df.to_csv(root / "train.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    sample["label"] = "NA"
    sample.to_csv(root / "sample_submission.csv", index=False)
    path = write_config(
        root,
        tiny_config(
            root,
            models=[
                {"name": "test_efficientnet", "id": "a", "image_size": 32},
                {"name": "test_byobnet", "id": "b", "image_size": 32},
            ],
        ),
    )
    run_dir = tmp_path / "run"
    assert invoke("train-folds", "--config", path, "--run-dir", run_dir, "--quiet").exit_code == 0
    oof = pd.read_csv(run_dir / "models/a/oof.csv", dtype=str, keep_default_na=False)
    assert {"NA", "null", "nan"} <= set(oof["id"]) and {"NA", "NaN"} <= set(oof["target"])
    for args in (
        ["train-folds", "--config", path, "--run-dir", run_dir, "--resume", "--quiet"],
        ["predict", run_dir, "--engine", "torch", "--out", tmp_path / "s.csv", "--quiet"],
        ["ensemble", run_dir / "models/a", run_dir / "models/b", "--out", tmp_path / "b.csv"],
        ["explain", run_dir, "--top", "2", "--out", tmp_path / "x"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    sub = pd.read_csv(tmp_path / "b.csv", dtype=str, keep_default_na=False)
    assert set(sub["label"]) <= {"NA", "NaN", "c2"}


# ---------------------------------------------------------------- training edge cases that used to crash


def test_last_batch_of_one_does_not_crash_batchnorm(tmp_path):
    root = write_competition(tmp_path / "comp", n_groups=10, per_group=2)  # 20 rows, 2 folds: 10 train rows
    cfg = tiny_config(root, train__batch_size=9, models=[{"name": "test_resnet", "image_size": 32}])
    result = invoke("train-folds", "--config", write_config(root, cfg), "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)


def test_in_chans_one_trains_and_predicts(tmp_path):
    root = write_competition(tmp_path / "comp")
    cfg = tiny_config(root, models=[{"name": "test_efficientnet", "image_size": 32, "in_chans": 1}])
    path = write_config(root, cfg)
    run_dir = tmp_path / "run"
    result = invoke("train-folds", "--config", path, "--run-dir", run_dir, "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    for engine in ("torch", "onnx"):
        result = invoke("predict", run_dir, "--engine", engine, "--out", tmp_path / f"{engine}.csv", "--quiet")
        assert result.exit_code == 0, (result.output, result.exception)


def test_metrics_json_matches_the_oof(trained_run):
    metrics = json.loads((trained_run / "models/eff/metrics.json").read_text())
    oof = pd.read_csv(trained_run / "models/eff/oof.csv", dtype=str, keep_default_na=False)
    classes = list(oof.columns[3:])
    y = pd.Index(classes).get_indexer(oof["target"])
    acc = float((oof[classes].astype(float).to_numpy().argmax(1) == y).mean())
    assert metrics["cv"] == pytest.approx(acc) and np.isfinite(metrics["cv"])


# ---------------------------------------------------------------- the decoded-image cache never trusts a planted file


def _slab_setup(tmp_path):
    from comp.config import DataConfig
    from comp.data._cache import make_reader, slab_bytes, slab_key

    root = write_competition(tmp_path / "comp")
    paths = sorted((root / "train").glob("*.png"))
    cfg = DataConfig(cache="disk", cache_dir=str(tmp_path / "cache"), image_dir=str(root / "train"))
    name = f"8x8-{slab_key(paths, (8, 8))}.u8"
    return make_reader, cfg, paths, tmp_path / "cache" / name, slab_bytes(len(paths), (8, 8))


def test_disk_slab_planted_by_someone_else_is_replaced_not_read(tmp_path):
    make_reader, cfg, paths, slab, nbytes = _slab_setup(tmp_path)
    slab.parent.mkdir(parents=True)
    slab.write_bytes(b"\x01" * nbytes)  # every row flagged "decoded", pixels all 1: poisoned
    slab.chmod(0o666)  # writable by anyone: not a slab comp made
    reader = make_reader(cfg, (8, 8), paths)
    img = reader(paths[0])
    from comp.data._cache import decode_resized

    np.testing.assert_array_equal(img, decode_resized(paths[0], (8, 8)))
    assert not slab.stat().st_mode & 0o022


def test_disk_slab_symlink_is_never_followed(tmp_path):
    make_reader, cfg, paths, slab, nbytes = _slab_setup(tmp_path)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\x00" * nbytes)
    slab.parent.mkdir(parents=True)
    slab.symlink_to(victim)
    reader = make_reader(cfg, (8, 8), paths)
    reader(paths[0])
    assert victim.read_bytes() == b"\x00" * nbytes  # nothing was written through the link
    assert not slab.is_symlink()


# ---------------------------------------------------------------- outputs never replace inputs; deletion stays in comp's files


def test_ensemble_name_of_a_training_run_or_a_plain_folder_is_refused(run_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run3 = tmp_path / "run3"
    shutil.copytree(run_copy, run3)
    before = {p: p.read_bytes() for p in run3.rglob("*") if p.is_file()}
    result = invoke("ensemble", run_copy / "models/eff", "--name", "run3")
    assert_one_line_error(result, "a training run")
    assert {p: p.read_bytes() for p in run3.rglob("*") if p.is_file()} == before  # config.yaml, folds.csv kept
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("years of work")
    assert_one_line_error(invoke("ensemble", run_copy / "models/eff", "--name", "notes"), "not an earlier blend")
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "years of work"
    result = invoke("ensemble", run_copy / "models/eff", "--name", "again")  # a new name, then the same again
    assert result.exit_code == 0, result.output
    result = invoke("ensemble", run_copy / "models/eff", "--name", "again")
    assert result.exit_code == 0, result.output


def test_train_folds_never_replaces_its_config_or_data(tmp_path):
    root = write_competition(tmp_path / "comp")
    path = write_config(root, tiny_config(root), name="config.yaml")
    text = path.read_text()
    result = invoke("train-folds", "--config", path, "--run-dir", root, "--quiet")
    assert_one_line_error(result, "would replace the --config file")
    assert path.read_text() == text and not (root / "folds.csv").exists()
    (tmp_path / "run").mkdir()
    shutil.copy(root / "train.csv", tmp_path / "run" / "folds.csv")  # the training table where folds.csv goes
    cfg = write_config(root, tiny_config(root, data__train_csv="../run/folds.csv"))
    result = invoke("train-folds", "--config", cfg, "--run-dir", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "is the training table data.train_csv")
    assert (tmp_path / "run" / "folds.csv").read_bytes() == (root / "train.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["folds.csv"]


def test_eda_reports_special_files_instead_of_reading_them(tmp_path):
    import signal

    root = write_competition(tmp_path / "comp")
    _fifo("train/g00_0.png")(root)
    _link("train/g00_1.png", "/dev/zero")(root)
    _fifo("test/t00.png")(root)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("eda blocked on a special file")))
    signal.alarm(120)
    try:
        result = invoke("eda", "--config", write_config(root, tiny_config(root)), "--out", tmp_path / "eda")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert result.exit_code == 0, (result.output, result.exception)
    bad = pd.read_csv(tmp_path / "eda" / "unreadable.csv")
    errors = dict(zip(bad["path"].map(lambda p: Path(p).name), bad["error"]))
    assert "a FIFO" in errors["g00_0.png"] and "a character device" in errors["g00_1.png"]
    assert "a FIFO" in errors["t00.png"]


def test_eda_report_never_lands_in_a_run_folder(trained_run, tmp_path):
    root = write_competition(tmp_path / "comp")
    path = write_config(root, tiny_config(root))
    result = invoke("eda", "--config", path, "--out", trained_run)
    assert_one_line_error(result, "is a run folder")
    shutil.copy(root / "train.csv", root / "duplicates.csv")  # a training table named like a report file
    result = invoke("eda", "--config", path, "--out", root, "--set", f"data.train_csv={root / 'duplicates.csv'}")
    assert_one_line_error(result, "holds the training table data.train_csv")
    assert (root / "duplicates.csv").read_bytes() == (root / "train.csv").read_bytes()
    assert_one_line_error(
        invoke("eda", "--config", path, "--out", root / "train" / "eda"), "is inside the training images"
    )


def test_demo_fresh_keeps_a_demo_run_that_holds_a_users_file(tmp_path, monkeypatch):
    from comp.config import dump, load_config
    from comp.demo import demo_config_path

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "proj"
    run.mkdir()
    (run / "config.yaml").write_text(dump(load_config(demo_config_path(), base_dir=tmp_path / "demo_data")))
    (run / "thesis.txt").write_text("years of work")
    assert_one_line_error(invoke("demo", "--fresh", "--run-dir", run), "thesis.txt")
    assert (run / "thesis.txt").read_text() == "years of work" and (run / "config.yaml").is_file()
    (run / "thesis.txt").unlink()
    (run / "models" / "effnet").mkdir(parents=True)
    (run / "models" / "effnet" / "notes.md").write_text("mine")
    assert_one_line_error(invoke("demo", "--fresh", "--run-dir", run), "notes.md")
    assert (run / "models" / "effnet" / "notes.md").is_file()


def test_strangers_names_only_what_comp_does_not_write(tmp_path):
    from comp.run import strangers

    run = tmp_path / "run"
    model = run / "models" / "eff"
    model.mkdir(parents=True)
    for name in ("config.yaml", "folds.csv", "sources.json", ".commit-1-2.json", ".config.yaml.abcd1234.tmp"):
        (run / name).write_text("x")
    for name in ("fold0.pt", "fold0.state.pt", "fold1.lock", "fold0.oof.csv", "fold0.history.csv", "fold0.onnx"):
        (model / name).write_text("x")
    for name in ("fused.onnx", "oof.csv", "oof_tta.csv", "test.csv", "metrics.json", "export.json"):
        (model / name).write_text("x")
    (model / "explain").mkdir()
    assert strangers(run) == []
    (run / "thesis.txt").write_text("mine")
    (model / "mine.onnx").write_text("mine")
    (run / "models" / "stray.csv").write_text("mine")
    assert [p.name for p in strangers(run)] == ["mine.onnx", "stray.csv", "thesis.txt"]


def test_an_image_folder_of_links_into_a_shared_pool_trains(tmp_path):
    """Links inside the image folder are the user's layout (decided by the names): followed, not refused."""
    root = write_competition(tmp_path / "comp")
    pool = tmp_path / "pool"
    (root / "train").rename(pool)
    (root / "train").mkdir()
    for p in pool.iterdir():
        (root / "train" / p.name).symlink_to(pool / p.name)
    (root / "test").rename(tmp_path / "test_pool")
    (root / "test").symlink_to(tmp_path / "test_pool")  # the folder itself a link
    path = write_config(root, tiny_config(root))
    result = invoke("train-folds", "--config", path, "--run-dir", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("predict", tmp_path / "run", "--engine", "torch", "--out", tmp_path / "s.csv", "--quiet")
    assert result.exit_code == 0, result.output
