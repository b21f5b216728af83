"""The metadata tower (models[].metadata): config shape, the fold's scaler fitted on its training part only,
training and prediction on every task, ONNX export with two inputs, torch == onnxruntime, and refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from comp.cli import main
from comp.config import load_config
from comp.data._features import FeatureScaler, encode_train
from comp.errors import CompError, ConfigError
from comp.run import RunDir, load_checkpoint
from comp.training._tower import MetadataScaling, raw_matrix
from tests.conftest import tiny_config, write_competition, write_config

TOWER = {"hidden": 8, "dropout": 0.0}


def add_metadata(root: Path, id_column: str = "id") -> None:
    """A numeric column ``age`` (one cell empty) and a categorical ``site`` in train.csv and a test.csv of the
    sample's ids."""
    train = pd.read_csv(root / "train.csv", keep_default_na=False)
    rng = np.random.default_rng(0)
    age = rng.normal(50, 10, len(train)).round(1).astype(str)
    age[1] = ""
    train["age"] = age
    train["site"] = np.array(["arm", "leg", "head"])[np.arange(len(train)) % 3]
    train.to_csv(root / "train.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv")
    test = pd.DataFrame({id_column: sample[id_column]})
    test["age"] = rng.normal(50, 10, len(test)).round(1)
    test["site"] = np.array(["leg", "", "arm"])[np.arange(len(test)) % 3]
    test.to_csv(root / "test.csv", index=False)


def tower_config(root: Path, cfg: dict | None = None, **overrides) -> dict:
    cfg = cfg or tiny_config(root)
    cfg["data"].update(features=["age", "site"], categorical=["site"], test_csv="test.csv")
    cfg["models"][0]["metadata"] = dict(TOWER)
    cfg["augment"]["mixup"] = {"mixup_alpha": 0.4, "prob": 1.0}
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# ---------------------------------------------------------------- config and scaling


@pytest.mark.parametrize(
    "entry, data, message",
    [
        ({"metadata": {"hidden": 8}}, {}, r"models\[0\].metadata' adds a metadata tower but data.features is not set"),
        ({"metadata": {"width": 8}}, {"features": ["age"]}, r"unknown config key 'models\[0\].metadata.width'"),
        ({"metadata": {"hidden": 0}}, {"features": ["age"]}, r"metadata.hidden' must be an integer >= 1"),
        ({"metadata": {"dropout": 1.0}}, {"features": ["age"]}, r"metadata.dropout' must be a number in \[0, 1\)"),
        ({"metadata": 64}, {"features": ["age"]}, r"models\[0\].metadata' must be a mapping"),
    ],
)
def test_tower_keys_are_checked_for_shape(entry, data, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"data": data, "models": [{"name": "resnet18", **entry}]})


def test_tower_refuses_attribute_heads():
    raw = {
        "data": {"features": ["age"], "labels": {"attributes": {"a": {"values": ["x", "y"]}}}},
        "models": [{"name": "resnet18", "heads": "attributes", "metadata": {}}],
    }
    with pytest.raises(ConfigError, match="cannot be combined with models\\[0\\].heads: attributes"):
        load_config(raw)


def test_torch_scaling_matches_the_numpy_encoding():
    data = load_config({"data": {"features": ["age", "w", "site"], "categorical": ["site"]}}).data
    df = pd.DataFrame(
        {"age": ["1", "", "5", "7", "2"], "w": ["0", "1", "1", "", "3"], "site": ["a", "b", "", "c", "a"]}
    )
    feats = encode_train(df, data, "train.csv")
    scaler = FeatureScaler.fit(feats.take(np.array([0, 1, 2])))  # 'c' unseen by this part: counts as missing
    want = scaler.encode(feats)
    got = MetadataScaling(scaler)(torch.from_numpy(raw_matrix(feats))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert want.shape == (5, 2 * 2 + 4) and want[3, 4:].tolist() == [1, 0, 0, 0]


# ---------------------------------------------------------------- training and prediction


def train(tmp_path: Path, cfg: dict, root: Path) -> Path:
    path = write_config(root, cfg)
    run = tmp_path / "run"
    res = invoke("train-folds", "--config", str(path), "--run-dir", str(run))
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tower")
    root = write_competition(tmp / "comp")
    add_metadata(root)
    return train(tmp, tower_config(root), root)


def test_a_fold_scaler_never_sees_its_validation_rows(tmp_path, tower_run):
    """Changing only fold 0's validation rows' metadata leaves fold 0's stored statistics as they were."""
    rd = RunDir(tower_run)
    stored = load_checkpoint(rd.fold_checkpoints("eff")[0]).meta.tower
    assert stored is not None
    folds = rd.fold_of("id")
    cfg = load_config(rd.load_config())
    train_df = pd.read_csv(cfg.data.train_csv, keep_default_na=False)
    part = train_df["id"].map(folds) != 0
    feats = encode_train(train_df, cfg.data, cfg.data.train_csv)
    want = FeatureScaler.fit(feats.take(np.flatnonzero(part.to_numpy())))
    np.testing.assert_allclose(stored["scaler"]["mean"], want.mean)
    np.testing.assert_allclose(stored["scaler"]["std"], want.std)
    everything = FeatureScaler.fit(feats)
    assert not np.allclose(everything.mean, want.mean)  # the validation rows would have moved it


def _predict(run: Path, engine: str, out: Path, *extra: str) -> pd.DataFrame:
    res = invoke("predict", str(run), "--engine", engine, "--out", str(out), "--quiet", *extra)
    assert res.exit_code == 0, res.output
    return pd.read_csv(RunDir(run).test_pred("eff"))


def test_tower_exports_two_input_graphs_and_predicts_alike_with_torch_and_onnx(tmp_path, tower_run):
    res = invoke("export", str(tower_run), "--fuse", "--tta", "hflip", "--quiet")
    assert res.exit_code == 0, res.output
    import onnx

    rd = RunDir(tower_run)
    for path in [rd.onnx("eff", 0), rd.fused("eff")]:
        names = [i.name for i in onnx.load(str(path)).graph.input]
        assert names == ["input", "meta"], names
    torch_pred = _predict(tower_run, "torch", tmp_path / "a.csv", "--oof")
    onnx_pred = _predict(tower_run, "onnx", tmp_path / "b.csv")  # per-fold graphs
    cols = [c for c in torch_pred.columns if c != "id"]
    np.testing.assert_allclose(onnx_pred[cols].to_numpy(), torch_pred[cols].to_numpy(), atol=1e-4)
    fused = _predict(tower_run, "onnx", tmp_path / "c.csv", "--tta", "hflip")  # fused.onnx, built for hflip
    tta = _predict(tower_run, "torch", tmp_path / "d.csv", "--tta", "hflip")
    np.testing.assert_allclose(fused[cols].to_numpy(), tta[cols].to_numpy(), atol=1e-4)
    assert len(torch_pred) == len(pd.read_csv(tower_run.parent / "comp" / "test.csv"))


def test_tower_graphs_quantize_to_int8_with_both_inputs(tmp_path, tower_run):
    """comp export --int8 calibrates a two-input graph on images and metadata rows (NaN where missing) and the
    int8 engine feeds both."""
    import shutil

    import onnx

    run = shutil.copytree(tower_run, tmp_path / "run")
    res = invoke("export", str(run), "--int8", "--calib", "16", "--quiet")
    assert res.exit_code == 0, res.output
    assert res.output.count("int8.onnx: accuracy") == 2
    path = RunDir(run).onnx("eff", 0, int8=True)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["input", "meta"]
    int8 = _predict(run, "int8", tmp_path / "a.csv")
    ref = _predict(run, "torch", tmp_path / "b.csv")
    cols = [c for c in ref.columns if c != "id"]
    assert np.isfinite(int8[cols].to_numpy()).all()
    assert np.abs(int8[cols].to_numpy() - ref[cols].to_numpy()).max() < 0.1


def test_the_metadata_changes_the_prediction(tmp_path, tower_run):
    """The tower is wired in: the same images with other metadata rows predict otherwise."""
    from comp.inference._torch_engine import TorchRunner
    from comp.training._models import model_from_checkpoint

    model, ckpt = model_from_checkpoint(RunDir(tower_run).fold_checkpoints("eff")[0])
    run = TorchRunner(model, torch.device("cpu"), output=None)
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    meta = np.array([[40.0, 0.0], [80.0, 2.0], [np.nan, np.nan], [55.0, 1.0]], np.float32)
    a, b = run(x, meta), run(x, meta[::-1].copy())
    assert np.isfinite(a).all() and not np.allclose(a, b)


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory, tower_run):
    """``get(kind)``: a tower run of that task kind and the text of its ``test.csv`` as ``comp predict --engine
    onnx`` writes it, both made once on first use (classification: ``tower_run``)."""
    from tests.conftest import task_config, write_task_competition

    runs: dict[str, tuple[Path, str]] = {}

    def get(kind: str) -> tuple[Path, str]:
        if kind not in runs:
            run = tower_run
            if kind != "classification":
                tmp = tmp_path_factory.mktemp(kind)
                root = write_task_competition(tmp / "comp", kind, n_groups=8, n_test=4)
                add_metadata(root)
                run = train(tmp, tower_config(root, task_config(root, kind)), root)
            _predict(run, "onnx", run.parent / "onnx-submission.csv")
            runs[kind] = run, RunDir(run).test_pred("eff").read_text()
        return runs[kind]

    return get


@pytest.mark.parametrize("kind", ["multilabel", "regression", "ordinal"])
def test_tower_trains_and_predicts_on_every_task(tmp_path, task_runs, kind):
    run, onnx_text = task_runs(kind)
    ckpt = load_checkpoint(RunDir(run).fold_checkpoints("eff")[1])
    assert ckpt.meta.tower is not None and ckpt.meta.tower["categorical"] == ["site"]
    torch_pred = _predict(run, "torch", tmp_path / "a.csv")
    onnx_pred = pd.read_csv(io.StringIO(onnx_text))
    cols = [c for c in torch_pred.columns if c != "id"]
    assert np.isfinite(torch_pred[cols].to_numpy()).all()
    np.testing.assert_allclose(onnx_pred[cols].to_numpy(), torch_pred[cols].to_numpy(), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "a.csv").is_file()


def test_tower_run_resumes_a_partly_trained_fold(tmp_path):
    root = write_competition(tmp_path / "comp", n_groups=6)
    add_metadata(root)
    cfg = tower_config(root)
    cfg["train"]["epochs"] = 2
    path = write_config(root, cfg)
    run = tmp_path / "run"
    from comp.training import _fold

    calls = {"n": 0}
    real = _fold.FoldTrainer.run_epoch

    def stop_after_first(self, epoch):
        calls["n"] += 1
        if calls["n"] == 2:  # the first fold's second epoch: as if the process were killed
            raise KeyboardInterrupt
        return real(self, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fold.FoldTrainer, "run_epoch", stop_after_first)
        res = invoke("train-folds", "--config", str(path), "--run-dir", str(run))
    assert res.exit_code != 0 and RunDir(run).state("eff", 0).is_file()
    res = invoke("train-folds", "--config", str(path), "--run-dir", str(run), "--resume")
    assert res.exit_code == 0, res.output
    meta = load_checkpoint(RunDir(run).fold_checkpoints("eff")[0]).meta
    assert meta.tower is not None and len(RunDir(run).fold_checkpoints("eff")) == 2


def test_scaler_statistics_ignore_the_validation_rows():
    """Changing only the validation rows' metadata leaves a fold's scaler (and so its stored stats) unchanged."""
    from comp.config import ModelConfig
    from comp.training._tower import fold_metadata

    data = load_config({"data": {"features": ["age", "site"], "categorical": ["site"]}}).data
    df = pd.DataFrame({"age": ["1", "2", "3", "4", "5", "6"], "site": ["a", "b", "a", "b", "c", "c"]})
    entry = ModelConfig("resnet18", metadata={})
    train_idx = np.array([0, 1, 2, 3])
    before, _ = fold_metadata(entry, encode_train(df, data, "train.csv"), train_idx)
    df.loc[[4, 5], "age"] = ["1000", "-50"]
    after, encoded = fold_metadata(entry, encode_train(df, data, "train.csv"), train_idx)
    assert before is not None and after is not None and encoded is not None
    assert before.to_dict() == after.to_dict()
    assert after.seen == [[0, 1]]  # 'c' appears only in validation rows: encoded as missing there
    assert encoded[4, 2:].tolist() == [1, 0, 0, 0]


def test_a_tower_without_features_is_refused_on_the_command_line(tmp_path):
    root = write_competition(tmp_path / "comp")
    cfg = tiny_config(root)
    cfg["models"][0]["metadata"] = {"hidden": 8}
    res = invoke("train-folds", "--config", str(write_config(root, cfg)), "--run-dir", str(tmp_path / "run"))
    assert res.exit_code == 2 and "data.features is not set" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


def test_predict_refuses_a_test_table_without_the_features(tmp_path, tower_run):
    cfg_test = tower_run.parent / "comp" / "test.csv"
    saved = cfg_test.read_text()
    try:
        pd.read_csv(cfg_test).drop(columns=["age"]).to_csv(cfg_test, index=False)
        res = invoke("predict", str(tower_run), "--engine", "torch", "--out", str(tmp_path / "s.csv"), "--quiet")
    finally:
        cfg_test.write_text(saved)
    assert res.exit_code == 2 and "column 'age' of data.features not found in the test table" in res.output
    assert not (tmp_path / "s.csv").exists()


def test_explain_writes_its_report_without_grad_cam_for_a_tower(tmp_path, tower_run):
    res = invoke("explain", str(tower_run), "--top", "2", "--out", str(tmp_path / "ex"))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ex" / "mislabeled.csv").is_file()


def test_the_frozen_warm_up_trains_the_tower_with_the_classifier():
    from comp.config import ModelConfig
    from comp.training._models import create_model, head_parameters, set_backbone_frozen

    data = load_config({"data": {"features": ["age", "site"], "categorical": ["site"]}}).data
    feats = encode_train(pd.DataFrame({"age": ["1", "2"], "site": ["a", "b"]}), data, "train.csv")
    entry = ModelConfig("test_efficientnet", metadata=dict(TOWER), image_size=32)
    model = create_model(entry, 3, scaler=FeatureScaler.fit(feats))
    set_backbone_frozen(model, True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == head_parameters(model)
    assert {id(p) for p in model.tower.parameters()} <= trainable  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in model.backbone.parameters())  # type: ignore[union-attr]


def test_tower_trains_with_sample_weights(tmp_path):
    """Sample weights and metadata rows travel in one batch (image, target, weight, metadata) and mix together."""
    root = write_competition(tmp_path / "comp", n_groups=6)
    add_metadata(root)
    df = pd.read_csv(root / "train.csv", keep_default_na=False)
    df["w"] = np.where(np.arange(len(df)) % 2, 1.0, 2.0)
    df.to_csv(root / "train.csv", index=False)
    cfg = tower_config(root)
    cfg["data"]["weight_column"] = "w"
    run = train(tmp_path, cfg, root)
    assert load_checkpoint(RunDir(run).fold_checkpoints("eff")[0]).meta.tower is not None


# ---------------------------------------------------------------- bundles and the in-memory predictor


def _script(bundle: Path, comp_dir: Path, out: Path, *extra: str) -> pd.DataFrame:
    """Run the bundle's predict.py (in this process) on the competition's test set; its --probs table by id."""
    from comp.inference import bundle_predict as bp

    argv = ["--images", str(comp_dir / "test"), "--sample", str(comp_dir / "sample_submission.csv")]
    rc = bp.main([*argv, "--bundle", str(bundle), "--out", str(out), "--probs", str(out.with_suffix(".p")), *extra])
    assert rc == 0
    return pd.read_csv(out.with_suffix(".p"), dtype={"id": str}).set_index("id")


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_bundles_of_a_tower_and_of_its_gbdt_stack_predict_what_comp_does(tmp_path, task_runs, kind):
    """One bundle per task, of a GBDT stack over the tower run: predict.py with its stack reproduces the blend's
    test.csv; without the stack (the tower's graph alone) it reproduces comp predict's (onnx engine)."""
    from comp import load_predictor
    from comp.ensembling import run_ensemble

    run, onnx_text = task_runs(kind)
    RunDir(run).test_pred("eff").write_text(onnx_text)  # as comp predict --engine onnx wrote it (no TTA)
    want = pd.read_csv(io.StringIO(onnx_text), dtype={"id": str}).set_index("id")
    comp_dir = run.parent / "comp"
    test = pd.read_csv(comp_dir / "test.csv", dtype=str, keep_default_na=False)
    test["person"] = [f"q{i // 2}" for i in range(len(test))]  # the stack's group-relative features
    test.to_csv(comp_dir / "test.csv", index=False)
    table = ["--table", str(comp_dir / "test.csv")]

    blend = run_ensemble([RunDir(run).model_dir("eff")], method="gbdt", name="stack")
    saved = json.loads((blend.model_dir / "stack.json").read_text())
    assert saved["features"]["levels"]["site"] == ["arm", "head", "leg"] and saved["group_column"] == "person"
    assert all((blend.model_dir / b["file"]).is_file() for b in saved["boosters"] if "file" in b)
    res = invoke("bundle", str(blend.model_dir), "--out", str(tmp_path / "gbdt"))
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "gbdt" / "manifest.json").read_text())
    assert manifest["format"] == "comp.bundle/3" and manifest["graphs"][0]["metadata"]["categorical"] == ["site"]
    assert "lightgbm" in manifest["requires"] and "--table" in res.output
    stacked = pd.read_csv(blend.model_dir / "test.csv", dtype={"id": str}).set_index("id")
    got = _script(tmp_path / "gbdt", comp_dir, tmp_path / "g.csv", *table)
    np.testing.assert_allclose(got.loc[stacked.index].to_numpy(), stacked.to_numpy(), rtol=1e-5, atol=1e-6)

    with pytest.raises(CompError, match="is a GBDT stack over its members' predictions of a whole test table"):
        load_predictor(blend.model_dir)

    del manifest["stack"]  # the tower's fused graph alone: comp predict's numbers
    (tmp_path / "gbdt" / "manifest.json").write_text(json.dumps(manifest))
    got = _script(tmp_path / "gbdt", comp_dir, tmp_path / "t.csv", *table)
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)


def test_a_tower_run_bundles_and_predicts_in_memory_like_comp_predict(tmp_path, task_runs, capsys):
    from comp import load_predictor

    run, onnx_text = task_runs("classification")
    RunDir(run).test_pred("eff").write_text(onnx_text)
    want = pd.read_csv(io.StringIO(onnx_text), dtype={"id": str}).set_index("id")
    comp_dir = run.parent / "comp"
    res = invoke("bundle", str(run), "--out", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    from comp.inference import bundle_predict as bp

    argv = ["--images", str(comp_dir / "test"), "--sample", str(comp_dir / "sample_submission.csv")]
    assert bp.main([*argv, "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "pass --table with the competition's test CSV" in capsys.readouterr().err
    test = pd.read_csv(comp_dir / "test.csv", dtype=str, keep_default_na=False)
    bad = {
        "has no column 'site'": test.drop(columns=["site"]),
        "line 3: column 'site' holds 'neck', a value the training table never has": test.assign(
            site=["leg", "neck"] + test["site"][2:].tolist()
        ),
        "line 2: column 'age' holds 'old', not a finite number": test.assign(age=["old"] + test["age"][1:].tolist()),
        "id 't07' is not in the test table": test[:-1],
    }
    for message, frame in bad.items():
        frame.to_csv(tmp_path / "bad.csv", index=False)
        argv_bad = [*argv, "--bundle", str(tmp_path / "b"), "--table", str(tmp_path / "bad.csv")]
        assert bp.main([*argv_bad, "--out", str(tmp_path / "x.csv")]) == 2
        assert message in capsys.readouterr().err, message
    assert not (tmp_path / "x.csv").exists()
    got = _script(tmp_path / "b", comp_dir, tmp_path / "t.csv", "--table", str(comp_dir / "test.csv"))
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)

    p = load_predictor(run, engine="onnx")
    with pytest.raises(CompError, match="has a metadata tower, which reads each image's data.features"):
        p.predict_proba(comp_dir / "test" / "t00.png")
    with pytest.raises(CompError, match="metadata has no column 'age'"):
        p.predict_proba(test[["id"]], metadata=test[["site"]])
    with pytest.raises(CompError, match="metadata has 2 rows for 8 images"):
        p.predict_proba(test[["id"]], metadata=test[["age", "site"]][:2])
    mem = p.predict_proba(test[["id", "age", "site"]]).set_index("id")  # the DataFrame holds the features
    np.testing.assert_allclose(mem.loc[want.index].to_numpy(), want.to_numpy(), rtol=1e-5, atol=1e-5)
    labels = p.predict(test[["id"]], metadata=test[["site", "age"]])
    assert labels["label"].tolist() == want.idxmax(axis=1).tolist()
