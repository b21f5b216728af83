"""comp export / predict / submit and the TTA registry, on the shared tiny trained run (copied before writing)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from comp.cli import main
from comp.errors import CompError
from comp.inference import _export as E
from comp.inference._tta import MERGES, TTA_OPS, merge_probs, parse_tta
from comp.run import RunDir, load_checkpoint, make_checkpoint
from comp.submission._format import validate_submission
from comp.training._models import model_from_checkpoint

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_run(trained_run, tmp_path_factory):
    """The trained run plus a second timm family (test_resnet) with the same folds, in a private copy."""
    dst = tmp_path_factory.mktemp("predict") / "run"
    shutil.copytree(trained_run, dst)
    run = RunDir(dst)
    for path in run.checkpoints("eff"):
        old = load_checkpoint(path).meta
        torch.manual_seed(old.fold)
        import timm

        model = timm.create_model("test_resnet", num_classes=old.num_classes).eval()
        meta = dataclasses.replace(old, model_name="test_resnet", model_id="res")
        run.model_dir("res").mkdir(parents=True, exist_ok=True)
        torch.save(make_checkpoint(model.state_dict(), meta), run.checkpoint("res", old.fold))
    return dst


@pytest.fixture
def run_dir(base_run, tmp_path):
    """A fresh copy of the two-model run that a test may write into."""
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _cfg_data(run_dir):
    return RunDir(run_dir).load_config().data


def _batch(run_dir, n=6):
    """Preprocessed test images of the run."""
    meta = load_checkpoint(RunDir(run_dir).checkpoint("eff", 0)).meta
    cfg = RunDir(run_dir).load_config()
    x, _ = E.parity_batch(cfg.replace(**{"data.train_csv": "/nonexistent.csv"}), meta, RunDir(run_dir), n)
    return x


def _ort(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in lines[0], lines[0]


# ---------------------------------------------------------------- TTA (numpy merge, torch views)


def test_merge_mean_and_geometric_math():
    p = np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.2, 0.7]]])
    np.testing.assert_allclose(merge_probs(p, "mean"), [[0.4, 0.2, 0.4]])
    geo = np.array([np.sqrt(0.07), np.sqrt(0.04), np.sqrt(0.07)])
    np.testing.assert_allclose(merge_probs(p, "geometric"), [geo / geo.sum()])


@pytest.mark.parametrize("method", MERGES)
def test_merge_of_identical_views_is_identity_and_rows_sum_to_one(method):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=5)
    np.testing.assert_allclose(merge_probs(np.stack([p, p, p]), method), p, atol=1e-12)
    q = rng.dirichlet(np.ones(4), size=(3, 5))
    np.testing.assert_allclose(merge_probs(q, method).sum(1), 1.0)


def test_unknown_merge_and_view_list_the_valid_ones():
    with pytest.raises(CompError, match="choose from mean, geometric, median"):
        merge_probs(np.ones((1, 1, 2)) / 2, "harmonic")
    with pytest.raises(CompError, match="hflip"):
        parse_tta("hflp")


@pytest.mark.parametrize("name", sorted(TTA_OPS))
def test_views_keep_shape_and_change_pixels(name):
    x = torch.randn(2, 3, 32, 30, generator=torch.Generator().manual_seed(0))
    y = TTA_OPS[name](x)
    assert y.shape == x.shape
    assert not torch.equal(y, x)


def test_flip_views_are_exact():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert torch.equal(TTA_OPS["hflip"](x)[..., 0], x[..., -1])
    assert torch.equal(TTA_OPS["vflip"](x)[:, :, 0], x[:, :, -1])
    assert torch.equal(TTA_OPS["shift"](x)[:, :, 1:, 1:], x[:, :, :-1, :-1])


# ---------------------------------------------------------------- export


def test_export_two_families_matches_torch_and_documents_preprocessing(run_dir):
    reports = E.export_run(run_dir)
    assert set(reports) == {"eff", "res"}
    x = _batch(run_dir)
    run = RunDir(run_dir)
    for mid, name in (("eff", "test_efficientnet"), ("res", "test_resnet")):
        for f in reports[mid]["files"]:
            assert f["max_abs_diff"] <= 1e-4
        for path in run.checkpoints(mid):
            model, ckpt = model_from_checkpoint(path)
            onnx_path = path.with_suffix(".onnx")
            meta = E.read_metadata(onnx_path)
            assert meta["model_name"] == name and meta["classes"] == ckpt.meta.classes
            assert meta["image_size"] == [32, 32] and meta["mean"] == ckpt.meta.mean and meta["eval_transform"]
            with torch.no_grad():
                want = torch.softmax(model(x), 1).numpy()
            got = _ort(onnx_path, torch.cat([x, x]))  # another batch size than the export example
            np.testing.assert_allclose(got[: len(x)], want, atol=1e-4)
        assert (run.model_dir(mid) / "export.json").is_file()


def test_fp16_export_is_half_and_within_tolerance(run_dir):
    report = E.export_run(run_dir, models=["eff"], fp16=True)["eff"]
    assert report["precision"] == "fp16" and all(f["max_abs_diff"] <= 1e-2 for f in report["files"])
    path = RunDir(run_dir).model_dir("eff") / "fold0.onnx"
    graph = onnx.load(str(path)).graph
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    model, _ = model_from_checkpoint(path.with_suffix(".pt"))
    x = _batch(run_dir)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(path, x), torch.softmax(model(x), 1).numpy(), atol=1e-2)


@pytest.mark.parametrize("merge", MERGES)
def test_fused_graph_equals_merged_views_averaged_over_folds(run_dir, merge):
    E.export_run(run_dir, models=["eff"], fuse=True, tta=["hflip", "scale1.1"], tta_merge=merge)
    run = RunDir(run_dir)
    x = _batch(run_dir)
    per_fold = []
    for path in run.checkpoints("eff"):
        views = [x, TTA_OPS["hflip"](x), TTA_OPS["scale1.1"](x)]
        per_fold.append(merge_probs(np.stack([_ort(path.with_suffix(".onnx"), v) for v in views]), merge))
    np.testing.assert_allclose(_ort(run.model_dir("eff") / "fused.onnx", x), np.mean(per_fold, 0), atol=1e-5)
    assert E.read_metadata(run.model_dir("eff") / "fused.onnx")["folds"] == [0, 1]


def test_failed_parity_writes_nothing(run_dir, monkeypatch):
    monkeypatch.setitem(E.TOLERANCE, "fp32", -1.0)
    with pytest.raises(CompError, match="nothing written"):
        E.export_run(run_dir, models=["eff"])
    assert not [p.name for p in RunDir(run_dir).model_dir("eff").iterdir() if "onnx" in p.name]


# ---------------------------------------------------------------- predict


def test_engines_agree_with_tta(run_dir, tmp_path):
    from comp.inference import ENGINES
    from comp.inference._predict import predict_run

    run = RunDir(run_dir)
    out = {}
    for engine in ENGINES:
        predict_run(
            run_dir,
            models=["eff"],
            engine=engine,
            tta=["hflip", "shift"],
            tta_merge="geometric",
            out=tmp_path / f"{engine}.csv",
            progress=False,
        )
        out[engine] = pd.read_csv(run.test_pred("eff"))
    for engine in ENGINES:  # every engine against eager PyTorch; int8 rounds weights and activations
        assert list(out[engine]["id"]) == list(out["torch"]["id"])
        got, ref = out[engine].iloc[:, 1:].to_numpy(), out["torch"].iloc[:, 1:].to_numpy()
        np.testing.assert_allclose(got, ref, atol=0.05 if engine == "int8" else 1e-4)
    plain = predict_run(run_dir, models=["eff"], engine="onnx", tta=[], out=tmp_path / "plain.csv", progress=False)
    assert plain.tta == []
    assert not np.allclose(pd.read_csv(run.test_pred("eff")).iloc[:, 1:].to_numpy(), out["onnx"].iloc[:, 1:].to_numpy())


def test_predict_cli_writes_test_csv_oof_tta_and_valid_submission(run_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("predict", run_dir, "--engine", "onnx", "--tta", "hflip", "--oof", "--quiet")
    assert result.exit_code == 0, result.output
    run, data = RunDir(run_dir), _cfg_data(run_dir)
    sub_path = tmp_path / "submissions" / "run.csv"
    assert f"submission: {sub_path.relative_to(tmp_path)}" in result.output and "cv_tta" in result.output
    sample = pd.read_csv(data.sample_submission, dtype=str)
    for mid in ("eff", "res"):
        oof = pd.read_csv(run.oof(mid), dtype={"id": str}) if run.oof(mid).is_file() else pd.read_csv(run.oof("eff"))
        test = pd.read_csv(run.test_pred(mid), dtype={"id": str})
        assert list(test.columns) == ["id", *oof.columns[3:]]
        assert set(test["id"]) == set(sample["id"])
        np.testing.assert_allclose(test.iloc[:, 1:].sum(axis=1), 1.0, atol=1e-5)
        tta = pd.read_csv(run.model_dir(mid) / "oof_tta.csv", dtype={"id": str})
        ref = pd.read_csv(run.oof("eff"), dtype={"id": str})
        assert list(tta.columns) == list(ref.columns)
        assert list(tta["id"]) == list(ref["id"]) and list(tta["fold"]) == list(ref["fold"])
        assert list(tta["target"]) == list(ref["target"])
    sub = pd.read_csv(sub_path, dtype=str)
    validate_submission(sub, data.sample_submission, list(oof.columns[3:]))
    eff, res = (pd.read_csv(run.test_pred(m)).set_index("id") for m in ("eff", "res"))
    mean = (eff + res) / 2
    assert list(sub["label"]) == list(mean.loc[sub["id"]].idxmax(axis=1))


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written


def test_run_without_checkpoints(run_dir, tmp_path):
    for d in RunDir(run_dir).models_root.iterdir():
        shutil.rmtree(d)
    out = tmp_path / "sub.csv"
    for cmd in ("predict", "export"):
        _assert_user_error(
            _invoke(cmd, run_dir, "--out", out) if cmd == "predict" else _invoke(cmd, run_dir),
            "no fold checkpoints",
            "comp train-folds",
        )
    assert not out.exists()
    _assert_user_error(_invoke("predict", tmp_path / "nowhere"), "not a run folder")


def test_missing_test_image(run_dir, tmp_path):
    images = tmp_path / "test_images"
    shutil.copytree(_cfg_data(run_dir).test_image_dir, images)
    next(iter(sorted(images.iterdir()))).unlink()
    out = tmp_path / "sub.csv"
    _assert_user_error(_invoke("predict", run_dir, "--set", f"data.test_image_dir={images}", "--out", out), "not found")
    assert not out.exists()


def test_sample_ids_not_matching_test_ids(run_dir, tmp_path):
    data = _cfg_data(run_dir)
    test = pd.read_csv(data.sample_submission, dtype=str)
    test.to_csv(tmp_path / "test.csv", index=False)
    bad = test.assign(id=test["id"].str.replace("t00", "x99"))
    bad.to_csv(tmp_path / "sample.csv", index=False)
    out = tmp_path / "sub.csv"
    result = _invoke(
        "predict",
        run_dir,
        "--set",
        f"data.test_csv={tmp_path / 'test.csv'}",
        "--set",
        f"data.sample_submission={tmp_path / 'sample.csv'}",
        "--out",
        out,
        "--engine",
        "torch",
    )
    _assert_user_error(result, "sample.csv", "x99")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--tta", "hflip,spin"], "unknown TTA view 'spin'"),
        (["--model", "nope"], "trained models are eff, res"),
        (["--set", "predict.enigne=torch"], "predict.enigne"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options(run_dir, tmp_path, args, fragment):
    out = tmp_path / "sub.csv"
    _assert_user_error(_invoke("predict", run_dir, "--out", out, *args), fragment)
    assert not out.exists()


def test_export_tta_needs_fuse(base_run):
    _assert_user_error(_invoke("export", base_run, "--tta", "hflip"), "--fuse")


# ---------------------------------------------------------------- submit


@pytest.fixture
def good_submission(base_run, tmp_path):
    data = _cfg_data(base_run)
    path = tmp_path / "sub.csv"
    pd.read_csv(data.sample_submission, dtype=str).to_csv(path, index=False)
    return path


def test_submit_without_kaggle_package(good_submission, base_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaggle", None)  # makes `import kaggle` raise ImportError
    _assert_user_error(
        _invoke("submit", good_submission, "--competition", "c", "--message", "m", "--run", base_run),
        "pip install kaggle",
    )


def test_submit_with_unconfigured_kaggle(good_submission, base_run, monkeypatch, tmp_path):
    pkg = tmp_path / "fake" / "kaggle"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise OSError('Could not find kaggle.json. Make sure it is located in ~/.kaggle')\n"
    )
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.delitem(sys.modules, "kaggle", raising=False)
    _assert_user_error(
        _invoke("submit", good_submission, "--competition", "c", "--message", "m", "--run", base_run),
        "kaggle.json",
        "not configured",
    )


def test_submit_uploads_only_valid_files(good_submission, base_run, monkeypatch, tmp_path):
    calls = []
    fake = types.SimpleNamespace(api=types.SimpleNamespace(competition_submit=lambda *a: calls.append(a)))
    monkeypatch.setitem(sys.modules, "kaggle", fake)
    sample = _cfg_data(base_run).sample_submission
    result = _invoke("submit", good_submission, "--competition", "digits", "--message", "hi", "--sample", sample)
    assert result.exit_code == 0, result.output
    assert calls == [(str(good_submission), "hi", "digits")]
    bad = tmp_path / "bad.csv"
    pd.read_csv(good_submission, dtype=str).iloc[1:].to_csv(bad, index=False)
    _assert_user_error(
        _invoke("submit", bad, "--competition", "digits", "--message", "hi", "--run", base_run), "missing"
    )
    assert len(calls) == 1


# ---------------------------------------------------------------- CLI help and GPU


@pytest.mark.parametrize("cmd", ["export", "predict", "submit"])
def test_help(cmd):
    result = _invoke(cmd, "--help")
    assert result.exit_code == 0 and "Example: comp " + cmd in result.output


@pytest.mark.gpu
def test_cuda_io_binding_matches_cpu(base_run, tmp_path):
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a CUDA device and onnxruntime-gpu")
    from comp.inference._onnxruntime import OrtRunner

    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    E.export_run(dst, models=["eff"])
    path = RunDir(dst).model_dir("eff") / "fold0.onnx"
    runner = OrtRunner(path)
    assert runner.cuda
    x = _batch(dst)
    np.testing.assert_allclose(runner(x.numpy()), _ort(path, x), atol=1e-4)


def test_predict_uses_a_matching_fused_graph_only(run_dir, tmp_path, monkeypatch):
    from comp.inference._predict import predict_run

    run = RunDir(run_dir)
    quiet = dict(progress=False)
    per_fold = predict_run(
        run_dir, models=["eff"], engine="torch", tta=["hflip"], tta_merge="mean", out=tmp_path / "t.csv", **quiet
    )
    assert per_fold.models["eff"].fused is False
    reference = pd.read_csv(run.test_pred("eff")).iloc[:, 1:].to_numpy()
    E.export_run(run_dir, models=["eff"], fuse=True, tta=["hflip"])
    import comp.inference._onnxruntime as O

    opened = []
    real = O.OrtRunner
    monkeypatch.setattr(O, "OrtRunner", lambda path, *a, **kw: opened.append(path.name) or real(path, *a, **kw))
    fused = predict_run(
        run_dir, models=["eff"], engine="onnx", tta=["hflip"], tta_merge="mean", out=tmp_path / "f.csv", **quiet
    )
    assert fused.models["eff"].fused is True and opened == ["fused.onnx"]  # no per-fold sessions
    np.testing.assert_allclose(pd.read_csv(run.test_pred("eff")).iloc[:, 1:].to_numpy(), reference, atol=1e-4)
    # other TTA than the graph was built with: the per-fold graphs are used
    assert (
        predict_run(
            run_dir, models=["eff"], engine="onnx", tta=["vflip"], tta_merge="mean", out=tmp_path / "v.csv", **quiet
        )
        .models["eff"]
        .fused
        is False
    )
    # re-exporting without --fuse removes the fused graph built from the previous export
    E.export_run(run_dir, models=["eff"])
    assert not (run.model_dir("eff") / "fused.onnx").exists()
    assert (
        predict_run(
            run_dir, models=["eff"], engine="onnx", tta=["hflip"], tta_merge="mean", out=tmp_path / "s.csv", **quiet
        )
        .models["eff"]
        .fused
        is False
    )


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_fold_mean_taken_per_batch_equals_the_mean_of_every_folds_predictions(tmp_path, task):
    """predict averages the folds batch by batch instead of holding every fold's predictions of every row."""
    import cv2

    from comp.data._augment import eval_pipeline
    from comp.inference._predict import run_views

    rng = np.random.default_rng(0)
    paths = []
    for i in range(37):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))

    def runner(seed):
        w = np.random.default_rng(seed).normal(size=(3 * 8 * 8, 4)).astype(np.float32)

        def run(x):
            z = x.reshape(len(x), -1) @ w
            if task == "multilabel":
                return 1 / (1 + np.exp(-z))
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        return run

    runners = [runner(s) for s in range(3)]
    tf = eval_pipeline((8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    args = (runners, paths, tf, ["hflip"], "mean", 10)
    plain, merged = run_views(*args, task=task)
    mplain, mmerged = run_views(*args, task=task, runner_mean=True)
    assert plain.shape == (3, 37, 4) and mmerged.shape == (1, 37, 4)
    np.testing.assert_array_equal(mmerged[0], merged.mean(0))
    np.testing.assert_array_equal(mplain[0], plain.mean(0))
    assert not np.allclose(merged[0], merged[1])  # the folds differ: a mean over them is a real test
