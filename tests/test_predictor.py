"""comp.load_predictor: the numbers of ``comp predict`` (test.csv and the submission's decisions) for a run, a
model folder and a blend, on images given as files, a folder, PIL images, numpy arrays or a DataFrame of ids."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import comp
from comp.cli import main
from comp.config import load_config
from comp.ensembling import run_ensemble
from comp.errors import CompError
from comp.inference._predictor import as_rgb
from comp.run import RunDir
from comp.training import train_folds
from tests.conftest import task_config, tiny_config, write_competition, write_config, write_task_competition

# kind -> metric: the tags' F2 fits thresholds and QWK fits cut-points, which predict() must apply as the
# submission does
KINDS = {"classification": None, "multilabel": "f2", "ordinal": "qwk"}


def _train(root: Path, kind: str) -> Path:
    if kind == "classification":
        cfg = tiny_config(root)
        cfg["models"].append({"name": "test_byobnet", "id": "byob", "image_size": 32})
    else:
        write_task_competition(root, kind)
        cfg = task_config(root, kind, **({"metric": KINDS[kind]} if KINDS[kind] else {}))
    run = root.parent / "run"
    train_folds(load_config(write_config(root, cfg)), run, progress=False)
    res = CliRunner().invoke(main, ["predict", str(run), "--tta", "hflip", "--out", str(root.parent / "sub.csv")])
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind) / "comp"
            if kind == "classification":
                write_competition(root)
            cache[kind] = _train(root, kind)
        return cache[kind]

    return get


def _test_csv(run: Path, model_ids: list[str], weights=None) -> pd.DataFrame:
    frames = [RunDir(run).read_test(m).frame().set_index("id") for m in model_ids]
    w = np.ones(len(frames)) if weights is None else np.asarray(weights, float)
    cols = [c for c in frames[0].columns if c not in ("label", "target")]
    return sum(wi / w.sum() * f[cols].astype(float) for wi, f in zip(w, frames))  # type: ignore[return-value]


@pytest.mark.parametrize("kind", list(KINDS))
def test_predict_equals_comp_predict(runs, kind):
    run = runs(kind)
    root = run.parent / "comp"
    p = comp.load_predictor(run, engine="torch", tta="hflip")
    proba = p.predict_proba(root / "test").set_index("id")
    cfg = RunDir(run).load_config()
    want = _test_csv(run, RunDir(run).model_ids())
    np.testing.assert_allclose(proba.loc[want.index, list(want.columns)].to_numpy(), want.to_numpy(), atol=1e-5)
    sub = pd.read_csv(run.parent / "sub.csv", keep_default_na=False).set_index("id")
    got = p.predict(root / "test").set_index("id").loc[sub.index]
    target = sub.columns[0]
    column = {"classification": "label", "multilabel": "tags"}.get(cfg.task, got.columns[0])
    assert got[column].astype(str).tolist() == sub[target].astype(str).tolist()
    if kind != "classification":
        assert p.decision is not None  # thresholds or cut-points, as the submission applied


def test_images_in_every_form_give_the_same_numbers(runs, tmp_path):
    run = runs("classification")
    root = run.parent / "comp"
    p = comp.load_predictor(run / "models" / "eff", tta="hflip")
    files = sorted((root / "test").glob("*.png"))[:3]
    by_file = p.predict_proba(files).drop(columns="id").to_numpy()
    arrays = [np.asarray(Image.open(f)) for f in files]
    for given in (arrays, np.stack(arrays), [Image.open(f) for f in files], [str(f) for f in files]):
        np.testing.assert_allclose(p.predict_proba(given).drop(columns="id").to_numpy(), by_file, atol=1e-6)
    one = p.predict_proba(files[0])
    assert one["id"].tolist() == [files[0].stem]
    ids = pd.DataFrame({"id": [f.stem for f in files]})
    np.testing.assert_allclose(p.predict_proba(ids).drop(columns="id").to_numpy(), by_file, atol=1e-6)
    # the model folder's numbers are that model's test.csv
    want = _test_csv(run, ["eff"]).loc[[f.stem for f in files]]
    np.testing.assert_allclose(by_file, want.to_numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "array, mode",
    [
        (np.arange(24 * 24, dtype=np.uint16).reshape(24, 24) * 100, "I;16"),
        (np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24), "F"),
        (np.arange(24 * 24, dtype=np.uint8).reshape(24, 24), "L"),
    ],
)
def test_arrays_are_read_as_files_of_their_mode(tmp_path, array, mode):
    """A 16-bit or float grayscale array is scaled by its mode, as comp reads the file holding it."""
    im = Image.fromarray(array)
    assert im.mode == mode
    path = tmp_path / "x.tiff"
    im.save(path)
    from comp.data._table import load_image

    np.testing.assert_array_equal(as_rgb(array), load_image(path))
    np.testing.assert_array_equal(as_rgb(array[..., None]), load_image(path))


def test_blend_uses_its_weights(runs, tmp_path):
    run = runs("classification")
    blend_root = tmp_path / "runs"
    shutil.copytree(run, blend_root / "run")
    res = run_ensemble([blend_root / "run/models/eff", blend_root / "run/models/byob"], method="hill_climb")
    p = comp.load_predictor(res.model_dir, engine="torch", tta="hflip")
    assert [m.weight for m in p.members] == [w for w in res.weights if w > 0]
    proba = p.predict_proba(run.parent / "comp" / "test").set_index("id")
    blend_test = RunDir(res.run_dir).read_test(res.name).frame().set_index("id")
    cols = p.classes
    np.testing.assert_allclose(proba.loc[blend_test.index, cols], blend_test[cols].astype(float), atol=1e-5)
    assert "<table" in p._repr_html_() and "Predictor(blend" in repr(p)


def test_embed_and_model(runs):
    run = runs("classification")
    p = comp.load_predictor(run, models=["eff"])
    files = sorted((run.parent / "comp" / "test").glob("*.png"))[:2]
    emb = p.embed(files, fold=1)
    net = p.model(1)
    assert isinstance(net, torch.nn.Module) and emb.shape == (2, 1 + net.num_features)
    with pytest.raises(CompError, match="fold=5"):
        p.model(5)
    with pytest.raises(CompError, match="cannot predict int"):
        p.predict(3)


@pytest.mark.parametrize("kind", ["classification", "multilabel"])
def test_onnx_engine_equals_comp_predict_after_export(runs, kind, tmp_path, caplog):
    """After ``comp export --fuse``, the predictor's onnx engine runs the fused graph as ``comp predict --engine
    onnx`` does: the same probabilities (test.csv) and the same submission, from files and from images in memory."""
    run = tmp_path / "run"
    shutil.copytree(runs(kind), run)  # the shared run stays as the other tests expect it
    test_dir = runs(kind).parent / "comp" / "test"
    res = CliRunner().invoke(main, ["export", str(run), "--fuse", "--tta", "hflip", "--quiet"])
    assert res.exit_code == 0, res.output
    sub_csv = tmp_path / "sub.csv"
    res = CliRunner().invoke(
        main, ["predict", str(run), "--engine", "onnx", "--tta", "hflip", "--out", str(sub_csv), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    with caplog.at_level("INFO", logger="comp"):
        p = comp.load_predictor(run, engine="onnx", tta="hflip")
        proba = p.predict_proba(test_dir).set_index("id")
    assert "fused.onnx" in caplog.text  # the graph export wrote, not the per-fold ones
    want = _test_csv(run, RunDir(run).model_ids())
    np.testing.assert_allclose(proba.loc[want.index, list(want.columns)].to_numpy(), want.to_numpy(), atol=1e-6)
    sub = pd.read_csv(sub_csv, keep_default_na=False).set_index("id")
    got = p.predict(test_dir).set_index("id").loc[sub.index]
    column = "label" if kind == "classification" else "tags"
    assert got[column].astype(str).tolist() == sub[sub.columns[0]].astype(str).tolist()
    files = sorted(test_dir.glob("*.png"))[:3]
    in_memory = p.predict_proba([Image.open(f) for f in files]).drop(columns="id").to_numpy()
    np.testing.assert_allclose(in_memory, proba.loc[[f.stem for f in files], p.classes].to_numpy(), atol=1e-6)
