"""configs/mask.yaml end to end on a replica of the contest folder, with nothing but the config and comp commands:
train-folds (multi-head and one 18-way head), export (ONNX parity), predict with TTA, ensemble, submissions."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mask_contest import LABELS, N_EVAL, PERSONS, RECIPE, STEMS, TINY, write_mask_contest

from comp.cli import main
from comp.data._attributes import compose_probs, marginals
from comp.run import RunDir

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*fewer groups than folds:UserWarning", "ignore:The least populated class:UserWarning"
)


def comp(*args: str) -> str:
    """Run a comp command; fail the test with its output unless it exits 0."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def sets(*extra: str) -> list[str]:
    return [a for kv in (*TINY, *extra) for a in ("--set", kv)]


@pytest.fixture(scope="module")
def contest(tmp_path_factory) -> Path:
    """The unzipped contest folder with the recipe copied in, trained as shipped (multi-head) and as one 18-way
    head in a second run folder (same folds, so the two blend)."""
    root = write_mask_contest(tmp_path_factory.mktemp("recipe") / "contest")
    shutil.copy(RECIPE, root / "mask.yaml")
    return root


@pytest.fixture(scope="module")
def trained(contest) -> dict[str, str]:
    here = Path.cwd()
    try:
        os.chdir(contest)  # as a competitor would: from the unzipped folder, with relative paths
        heads = comp("train-folds", "--config", "mask.yaml", *sets(), "--quiet")
        single = comp(
            "train-folds",
            "--config",
            "mask.yaml",
            *sets("models.0.heads=single", "models.0.id=eff-single"),
            "--run-dir",
            "runs/single",
            "--quiet",
        )
    finally:
        os.chdir(here)
    return {"heads": heads, "single": single}


def test_train_folds_scores_the_contest_labels_and_each_attribute(contest, trained):
    run = RunDir(contest / "runs" / "mask")
    assert "f1_mask" in trained["heads"] and "f1_age" in trained["heads"] and "f1_age" in trained["single"]
    metrics = json.loads((run.metrics("effb0-heads")).read_text())
    assert set(metrics["attribute_f1"]) == {"mask", "gender", "age"}
    assert all(0 <= v <= 1 for v in metrics["attribute_f1"].values())
    oof = run.read_oof("effb0-heads")
    assert len(oof.ids) == len(PERSONS) * len(STEMS) and oof.classes[0] == "wear_male_young" and len(oof.classes) == 18
    # OOF targets are the scoring labels: the 59-year-old is middle even though the model trained on him as old
    targets = pd.Series(oof.targets, index=oof.ids)
    assert set(targets[[i for i in oof.ids if i.startswith("000004_male_Asian_59/")]].str.rsplit("_", n=1).str[1]) == {
        "middle"
    }
    # the heads' probabilities factorise into the attributes (an 18-way head's need not)
    np.testing.assert_allclose(compose_probs(marginals(oof.probs, LABELS), LABELS), oof.probs, atol=1e-5)
    folds = run.fold_of("ImageID")
    person = folds.index.str.split("/").str[0]
    assert (folds.groupby(person).nunique() == 1).all()  # a person never straddles folds


def test_export_predict_tta_and_submission(contest, trained):
    run = contest / "runs" / "mask"
    out = comp("export", str(run), "--fuse", "--tta", "hflip")
    report = json.loads((run / "models" / "effb0-heads" / "export.json").read_text())
    assert [f["file"] for f in report["files"]] == [
        "fold0.onnx",
        "fold1.onnx",
        "fused.onnx",
    ] and "export report" in out
    assert all(f["max_abs_diff"] <= 1e-4 for f in report["files"])
    sub_path = contest / "submission.csv"
    out = comp("predict", str(run), "--oof", "--out", str(sub_path), "--quiet")  # tta hflip from the recipe
    assert "hflip" in out and (run / "models" / "effb0-heads" / "oof_tta.csv").is_file()
    info = pd.read_csv(contest / "eval" / "info.csv", dtype=str)
    sub = pd.read_csv(sub_path, dtype=str)
    assert list(sub.columns) == ["ImageID", "ans"] and sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert len(sub) == N_EVAL and sub["ans"].astype(int).between(0, 17).all()
    test = RunDir(run).read_test("effb0-heads")
    assert sub["ans"].astype(int).tolist() == list(test.reorder(info["ImageID"]).probs.argmax(1))
    comp("predict", str(run), "--engine", "torch", "--out", str(contest / "torch.csv"), "--quiet")
    np.testing.assert_allclose(RunDir(run).read_test("effb0-heads").probs, test.probs, atol=1e-4)


def test_explain_multihead(contest, trained):
    out = comp("explain", str(contest / "runs" / "mask"), "--top", "2")
    assert "effb0-heads" in out
    assert (contest / "runs" / "mask" / "models" / "effb0-heads" / "explain" / "gradcam.png").is_file()


def test_ensemble_of_heads_and_single_head(contest, trained):
    heads, single = (
        contest / "runs" / "mask" / "models" / "effb0-heads",
        contest / "runs" / "single" / "models" / "eff-single",
    )
    for run in (heads.parent.parent, single.parent.parent):
        comp("predict", str(run), "--quiet", "--out", str(contest / f"{run.name}.csv"))
    blend = contest / "blend.csv"
    out = comp("ensemble", str(heads), str(single), "--method", "mean", "--out", str(blend))
    assert "effb0-heads" in out and "eff-single" in out and "blend OOF macro F1 per attribute: mask" in out
    metrics = json.loads((contest / "runs" / "blend-mean" / "models" / "blend-mean" / "metrics.json").read_text())
    assert set(metrics["attribute_f1"]) == {"mask", "gender", "age"}
    sub = pd.read_csv(blend, dtype=str)
    info = pd.read_csv(contest / "eval" / "info.csv", dtype=str)
    assert list(sub.columns) == ["ImageID", "ans"] and sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].astype(int).between(0, 17).all()


def test_eda_from_the_contest_folder(contest, tmp_path):
    out = comp("eda", "--config", str(contest / "mask.yaml"), "--out", str(tmp_path / "eda"))
    assert "attribute mask: wear 30, incorrect 6, not_wear 6" in out and "joint distribution" in out
    assert (tmp_path / "eda" / "attributes.png").is_file()


def test_a_bad_layout_is_one_line_and_exit_2(contest, tmp_path):
    broken = tmp_path / "contest"
    shutil.copytree(contest / "train", broken / "train")
    shutil.copy(contest / "mask.yaml", broken / "mask.yaml")
    shutil.rmtree(broken / "train" / "images" / PERSONS[3][4])
    result = CliRunner().invoke(
        main,
        ["train-folds", "--config", str(broken / "mask.yaml"), *sets(), "--run-dir", str(tmp_path / "run")],
    )
    assert result.exit_code == 2 and "train.csv line 5" in result.output and "not found" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
