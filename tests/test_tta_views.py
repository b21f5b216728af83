"""Multi-scale and five-crop TTA views: what each view is, their names, and parity between PyTorch, the fused
ONNX graph (onnxruntime) and the bundle's torch-free predict.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from comp.errors import CompError
from comp.inference import _export as E
from comp.inference import bundle_run, predict_run
from comp.inference._tta import MERGES, TTA_OPS, merge_probs, parse_tta, view_ops, views
from comp.run import RunDir
from comp.training._models import model_from_checkpoint
from tests.test_bundle import _predict_in_venv, _probs, world  # noqa: F401 - fixtures
from tests.test_predict import _batch, _ort, base_run, run_dir  # noqa: F401 - fixtures

VIEWS = ["five_crop", "scale:0.85", "scale:1.2"]


def test_five_crop_views_are_the_corners_and_centre_resized_back():
    x = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    ops = view_ops("five_crop:0.75")  # 12 x 15 crops
    assert len(ops) == 5
    want = [x[..., :12, :15], x[..., :12, 5:], x[..., 4:, :15], x[..., 4:, 5:], x[..., 2:14, 2:17]]
    for op, part in zip(ops, want):
        torch.testing.assert_close(op(x), F.interpolate(part, size=(16, 20), mode="bilinear", align_corners=False))
    assert all(not torch.equal(op(x), x) for op in ops)


def test_scale_views_zoom_like_the_fixed_ones():
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(view_ops("scale:1.1")[0](x), TTA_OPS["scale1.1"](x))
    small = view_ops("scale:0.5")[0](x)  # shrunk into the middle, zero (the mean colour) around it
    assert small.shape == x.shape and torch.equal(small[..., :8, :], torch.zeros(1, 3, 8, 32))
    assert [v.shape for v in views(x, parse_tta("five_crop,scale:1.2,hflip"))] == [x.shape] * 8  # original + 7


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("five_crop", ["five_crop:0.875"]),
        ("five_crop:0.80,scale:1.10", ["five_crop:0.8", "scale:1.1"]),
        (["hflip", " scale:0.9 "], ["hflip", "scale:0.9"]),
    ],
)
def test_view_names_are_recorded_in_one_form(spec, want):
    assert parse_tta(spec) == want


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("scale:abc", "'scale:abc': the number after 'scale:' is the zoom factor .* between 0.5 and 2.0"),
        ("scale:3", "between 0.5 and 2.0"),
        ("five_crop:1.0", "the crop's share of the size .* between 0.5 and 0.99"),
        ("scale", "unknown TTA view 'scale'.*or a family: scale:N, five_crop:N"),
        ("hflp", "did you mean 'hflip'.*five_crop:N"),
        ("five_crop,five_crop:0.875", "listed twice"),
    ],
)
def test_bad_view_names_say_what_fits(spec, needle):
    with pytest.raises(CompError, match=needle):
        parse_tta(spec)


@pytest.mark.parametrize("merge", MERGES)
def test_fused_graph_with_crops_and_scales_equals_torch(run_dir, merge):  # noqa: F811
    """onnxruntime on the fused graph against eager PyTorch views of each fold's model, merged and averaged."""
    E.export_run(run_dir, models=["eff"], fuse=True, tta=VIEWS, tta_merge=merge)
    run = RunDir(run_dir)
    x = _batch(run_dir)
    per_fold = []
    for path in run.checkpoints("eff"):
        model, _ = model_from_checkpoint(path)
        with torch.no_grad():
            per_fold.append(merge_probs(np.stack([torch.softmax(model(v), 1).numpy() for v in views(x, VIEWS)]), merge))
    fused = run.model_dir("eff") / "fused.onnx"
    np.testing.assert_allclose(_ort(fused, x), np.mean(per_fold, 0), atol=1e-4)
    assert E.read_metadata(fused)["tta"] == ["five_crop:0.875", "scale:0.85", "scale:1.2"]


def test_engines_agree_with_crops_and_scales(run_dir, tmp_path):  # noqa: F811
    run = RunDir(run_dir)
    got = {}
    for engine in ("torch", "onnx"):
        predict_run(
            run_dir,
            models=["eff"],
            engine=engine,
            tta=VIEWS,
            tta_merge="median",
            out=tmp_path / "s.csv",
            progress=False,
        )
        got[engine] = pd.read_csv(run.test_pred("eff")).iloc[:, 1:].to_numpy()
    np.testing.assert_allclose(got["onnx"], got["torch"], atol=1e-4)
    predict_run(run_dir, models=["eff"], engine="torch", tta=[], out=tmp_path / "plain.csv", progress=False)
    assert not np.allclose(pd.read_csv(run.test_pred("eff")).iloc[:, 1:].to_numpy(), got["torch"], atol=1e-6)


@pytest.mark.slow
def test_bundle_script_with_crops_and_scales_reproduces_comp_predict(world, ort_python, tmp_path):  # noqa: F811
    """The views live in the fused graph, so the torch-free predict.py runs them as comp's torch engine does."""
    import shutil

    run_dir = tmp_path / "run"  # noqa: F811 - a copy of the bundle tests' run, not test_predict's fixture
    shutil.copytree(world["run"], run_dir)
    predict_run(
        run_dir,
        models=["eff"],
        engine="torch",
        tta=VIEWS,
        tta_merge="geometric",
        out=tmp_path / "s.csv",
        progress=False,
    )
    m = bundle_run(run_dir, out=tmp_path / "bundle", models=["eff"], tta=VIEWS, tta_merge="geometric").manifest
    assert m["graphs"][0]["tta"] == ["five_crop:0.875", "scale:0.85", "scale:1.2"]
    assert m["graphs"][0]["max_abs_diff"] <= 1e-4
    data = world["data"]
    _, probs, _ = _predict_in_venv(
        ort_python, tmp_path / "bundle", Path(data.test_image_dir), Path(data.sample_submission), tmp_path
    )
    want = _probs(RunDir(run_dir).test_pred("eff"), m["classes"])
    got = _probs(probs, m["classes"]).loc[want.index]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() <= 1e-4
