"""comp init: every kind of competition folder becomes a config that train-folds takes as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
from click.testing import CliRunner
from conftest import write_competition, write_task_competition
from mask_contest import write_mask_contest
from PIL import Image

from comp.cli import main
from comp.config import load_config, read_yaml
from comp.init import init_config, parse_budget
from comp.init._detect import detect
from comp.init._recipe import CPU_LADDER, GPU_LADDER, format_s
from comp.init._scan import scan_folder

TINY = ["--models", "test_efficientnet", "--set", "models.0.pretrained=false", "--budget", "2m"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write_imagefolder(root: Path, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for k, c in enumerate(("cat", "dog", "fox")):
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            img = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
            img[..., k] += 150
            Image.fromarray(img).save(root / "train" / c / f"{c}{i}.jpg")
    (root / "test").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "test" / f"t{i}.jpg")
    pd.DataFrame({"id": [f"t{i}" for i in range(5)], "label": "cat"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    return root


def _demo(root: Path) -> Path:
    from comp.demo import make_digits_competition

    return make_digits_competition(root, n_train_groups=30, views=2, n_test=10)


# kind -> (writer, extra init args, expected keys of the written config)
KINDS = {
    "demo": (_demo, [], {"task": "classification", "data.label_column": "label", "data.group_column": "digit"}),
    "imagefolder": (write_imagefolder, [], {"task": "classification", "data.label_column": "label"}),
    "mask": (
        write_mask_contest,
        ["--set", "data.label_column=kind"],
        {"task": "classification", "data.id_column": "ImageID", "data.sample_submission": "eval/info.csv"},
    ),
    "multilabel": (
        lambda r: write_task_competition(r, "multilabel"),
        [],
        {"task": "multilabel", "data.label_column": "tags", "data.group_column": "person"},
    ),
    "multilabel-wide": (
        lambda r: write_task_competition(r, "multilabel-wide"),
        [],
        {"task": "multilabel", "data.label_columns": ["r", "g", "b"]},
    ),
    "regression": (
        lambda r: write_task_competition(r, "regression"),
        [],
        {"task": "regression", "data.label_column": "score", "data.group_column": "person"},
    ),
}


def _get(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("kind", list(KINDS))
def test_init_writes_a_config_that_trains_as_written(kind, tmp_path):
    write, extra, expected = KINDS[kind]
    root = write(tmp_path / kind)
    out = root / "exp.yaml"
    result = invoke("init", root, "--out", out, *TINY, *extra)
    assert result.exit_code == 0, result.output
    assert "expected wall time" in result.output and "override" in result.output
    raw = read_yaml(out)
    for key, value in expected.items():
        assert _get(raw, key) == value, (key, _get(raw, key))
    text = out.read_text()
    assert text.count("#") > 10  # every guess carries its evidence
    # train-folds takes it as written; the --set only keep the test short
    run = tmp_path / "run"
    train = invoke(
        "train-folds", "--config", out, "--run-dir", run, "--folds", "0", "--quiet",
        "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1",
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    assert list((run / "models").glob("*/fold0.pt"))


def test_evidence_names_groups_and_their_purity(tmp_path):
    root = write_competition(tmp_path / "c")
    result = init_config(root, out=root / "exp.yaml", budget="1m", models=["test_efficientnet"],
                         overrides=["models.0.pretrained=false"])  # fmt: skip
    group = next(g for g in result.guesses if g.key == "data.group_column")
    assert group.value == "person"
    assert "3 images per value (12 values), every value within one label" in group.evidence
    assert group.override == "--set data.group_column=..."
    plan = result.plans[0]
    assert plan.image_size == 32 and plan.epochs >= 1 and plan.probe.step_s > 0
    assert result.expected_s > 0 and result.config.models[0].pretrained is False
    cfg = load_config(root / "exp.yaml")
    assert cfg.data.group_column == "person" and cfg.folds.n_splits == result.n_splits


def test_two_equally_plausible_labels_stop_with_one_line(tmp_path):
    root = write_competition(tmp_path / "c")
    df = pd.read_csv(root / "train.csv", dtype=str)
    df["coat"] = np.where(np.arange(len(df)) % 2 == 0, "short", "long")
    df.rename(columns={"label": "breed"}).to_csv(root / "train.csv", index=False)
    pd.read_csv(root / "sample_submission.csv", dtype=str).rename(columns={"label": "target"}).to_csv(
        root / "sample_submission.csv", index=False
    )
    out = root / "exp.yaml"
    result = invoke("init", root, "--out", out, *TINY)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "breed" in line and "coat" in line and "--set data.label_column=breed" in line
    assert not out.exists()
    fixed = invoke("init", root, "--out", out, *TINY, "--set", "data.label_column=breed")
    assert fixed.exit_code == 0, fixed.output
    assert read_yaml(out)["data"]["label_column"] == "breed"


def test_ids_in_subfolders_and_with_extensions(tmp_path):
    root = write_competition(tmp_path / "c")
    df = pd.read_csv(root / "train.csv", dtype=str)
    for rid, person in zip(df["id"], df["person"]):
        (root / "train" / person).mkdir(exist_ok=True)
        (root / "train" / f"{rid}.png").rename(root / "train" / person / f"{rid}.png")
    det = detect(scan_folder(root), {})
    assert det.data["path_template"] == "{person}/{id}.png" and det.data["image_dir"] == "train"
    root2 = write_competition(tmp_path / "d")
    df = pd.read_csv(root2 / "train.csv", dtype=str)
    df.assign(id=df["id"] + ".png").to_csv(root2 / "train.csv", index=False)
    det = detect(scan_folder(root2), {})
    assert det.data["image_ext"] == "" and det.data["id_column"] == "id"


def test_bad_options_are_one_line_errors(tmp_path):
    root = write_competition(tmp_path / "c")
    out = root / "exp.yaml"
    out.write_text("keep: me\n")
    for args, needle in [
        ([], "--force"),
        (["--force", "--budget", "soon"], "--budget"),
        (["--force", "--device", "tpu"], "--device"),
    ]:
        result = invoke("init", root, "--out", out, *TINY[:4], *args)
        assert result.exit_code == 2 and needle in result.output, result.output
        assert out.read_text() == "keep: me\n"
    missing = invoke("init", tmp_path / "nowhere", "--out", tmp_path / "x.yaml")
    assert missing.exit_code == 2 and "not found" in missing.output


def test_budget_parsing():
    assert parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400 and parse_budget("45s") == 45
    assert parse_budget("1.5") == 5400
    assert format_s(5400) == "1h30m" and format_s(75) == "1m15s"


def test_recipe_backbones_are_timm_models_with_pretrained_weights():
    for _, names in GPU_LADDER + CPU_LADDER:
        for name in names:
            assert timm.is_model(name) and timm.models.get_pretrained_cfg(name) is not None, name


@pytest.mark.gpu
def test_cuda_batch_size_comes_from_the_probe_memory(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    root = write_task_competition(tmp_path / "c", "regression", n_groups=40)
    result = init_config(root, out=root / "exp.yaml", budget="10m", device="cuda",
                         models=["test_efficientnet"], overrides=["models.0.pretrained=false"])  # fmt: skip
    plan = result.plans[0]
    assert result.machine.gpu and result.machine.memory_gb and plan.probe.peak_gb is not None
    assert plan.batch_size & (plan.batch_size - 1) == 0 and plan.batch_size <= 120 // 8 + 1
