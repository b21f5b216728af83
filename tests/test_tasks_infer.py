"""Every task through export, predict, TTA, the fused graph and comp bundle: multi-label (tags and wide
columns), regression (one and several targets) and ordinal targets.

One tiny trained run per kind (2 folds, 1 epoch, 32 px, conftest's ``task_runs``) is built once for the session
and copied per test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from comp.cli import main
from comp.config import load_config
from comp.errors import CompError, ConfigError
from comp.inference import _export as E
from comp.inference import bundle_run, predict_run
from comp.inference._fp16 import HEAD_NODE
from comp.inference._tta import MERGES, TTA_OPS, check_config, merge_probs, merge_torch
from comp.metrics import get_metric
from comp.run import Metrics, Predictions, RunDir, load_checkpoint, make_checkpoint
from comp.submission import check_file, make_submission, validate_submission
from comp.tasks import TASKS, nested_score
from comp.training._models import model_from_checkpoint
from comp.training._outputs import OutputSpec
from tests.conftest import TASK_KINDS, snapshot
from tests.test_bundle import _predict_in_venv

KINDS = list(TASK_KINDS)
TTA = ["hflip", "vflip"]  # three views, so the median differs from the mean


def _batch(run_dir: Path, n: int = 6) -> torch.Tensor:
    run = RunDir(run_dir)
    meta = load_checkpoint(run.checkpoint("eff", 0)).meta
    return E.parity_batch(run.load_config(), meta, run, n)[0]


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


def _close(got: np.ndarray, want: np.ndarray, tol: float = 1e-4) -> None:
    """Equal within ``tol`` relative to the values (|diff| / (1 + |value|)), the export's parity measure."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert (np.abs(got - want) / (1 + np.abs(want))).max() <= tol


def _clone_model(run: RunDir, src: str, dst: str, noise: float = 0.0) -> None:
    """Fold checkpoints of ``src`` as model ``dst`` (the classifier's weights perturbed by ``noise``), and an
    OOF file of other predictions (``src``'s, moved), which the decision of an average is fitted on."""
    gen = torch.Generator().manual_seed(7)
    for path in run.checkpoints(src):
        ck = load_checkpoint(path)
        state = {k: v.clone() for k, v in ck.state_dict.items()}
        for k in state:
            if k.startswith("classifier.") and state[k].is_floating_point():
                state[k] += noise * torch.randn(state[k].shape, generator=gen)
        run.model_dir(dst).mkdir(parents=True, exist_ok=True)
        torch.save(
            make_checkpoint(state, dataclasses.replace(ck.meta, model_id=dst)), run.checkpoint(dst, ck.meta.fold)
        )
    oof = run.read_oof(src)
    moved = oof.probs**2 if TASKS[run.load_config().task].probabilistic else oof.probs * 1.1 + 0.3
    run.write_oof(dst, dataclasses.replace(oof, probs=moved))


# ---------------------------------------------------------------- TTA merges (numpy and the fused graph's torch)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("method", MERGES)
def test_merges_fit_their_task_and_torch_equals_numpy(task, method):
    rng = np.random.default_rng(0)
    views = {
        "classification": rng.dirichlet(np.ones(3), size=(3, 5)),
        "multilabel": rng.random((3, 5, 3)),
        "regression": rng.normal(50, 30, (3, 5, 2)),
    }[task]
    if method not in TASKS[task].merges:
        with pytest.raises(ConfigError, match=f"merges that fit {task}: {', '.join(TASKS[task].merges)}"):
            merge_probs(views, method, task)
        with pytest.raises(ConfigError, match=f"does not fit task {task}"):
            merge_torch([torch.tensor(v) for v in views], method, task)
        return
    merged = merge_probs(views, method, task)
    if task == "classification":
        np.testing.assert_allclose(merged.sum(1), 1.0)  # class rows stay distributions, the median's too
    elif method == "median":
        np.testing.assert_array_equal(merged, np.median(views, 0))  # never renormalised
    for n in (1, 2, 3):  # the median of an even count is the mean of the middle two, as numpy's
        want = merge_probs(views[:n], method, task)
        got = merge_torch([torch.tensor(v) for v in views[:n]], method, task).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_a_config_whose_merge_does_not_fit_its_task_is_refused():
    check_config(load_config({"task": "multilabel", "predict": {"tta_merge": "median"}}))
    with pytest.raises(ConfigError, match="merges that fit regression: mean, median"):
        check_config(load_config({"task": "regression", "predict": {"tta_merge": "geometric"}}))


# ---------------------------------------------------------------- export: graphs end in the task's output


@pytest.mark.parametrize("kind", KINDS)
def test_graphs_end_in_the_task_output_and_the_fused_graph_is_the_mean_of_the_folds(run_of, kind):
    run_dir = run_of(kind)
    run = RunDir(run_dir)
    task = run.load_config().task
    report = E.export_run(run_dir, fuse=True, tta=TTA, tta_merge="median")["eff"]
    relative = not TASKS[task].probabilistic
    assert report["task"] == task
    for f in report["files"]:
        assert f["max_abs_diff"] >= 0 and ("max_rel_diff" in f) == relative
        assert (f["max_rel_diff"] if relative else f["max_abs_diff"]) <= 1e-4
    x = _batch(run_dir)
    per_fold = []
    for path in run.checkpoints("eff"):
        model, ckpt = model_from_checkpoint(path)
        spec = OutputSpec.from_dict(ckpt.meta.output)
        graph = path.with_suffix(".onnx")
        got = _ort(graph, x)
        with torch.no_grad():
            logits = model.eval()(x).double().numpy()
        # by hand: the activation, then this fold's own scaling to the target's units
        z = 1 / (1 + np.exp(-logits)) if spec.activation == "sigmoid" else logits
        _close(got, spec.to_units(z))
        meta = E.read_metadata(graph)
        assert meta["task"] == task and meta["output_head"] == spec.to_dict()
        if task == "multilabel":
            assert ((got >= 0) & (got <= 1)).all() and not np.allclose(got.sum(1), 1.0)
        views = [v.contiguous() for v in (x, TTA_OPS["hflip"](x), TTA_OPS["vflip"](x))]
        per_fold.append(merge_probs(np.stack([_ort(graph, v) for v in views]), "median", task))
    if kind.startswith("regression"):  # each fold predicts through the scaling fitted on its own training part
        specs = [load_checkpoint(p).meta.output for p in run.checkpoints("eff")]
        assert specs[0]["shift"] != specs[1]["shift"]
    fused = _ort(run.fused("eff"), x)
    _close(fused, np.mean(per_fold, 0), 1e-5)
    assert E.read_metadata(run.fused("eff"))["tta_merge"] == "median"


def test_fp16_regression_graph_keeps_its_head_in_float32(run_of):
    run_dir = run_of("regression")
    report = E.export_run(run_dir, fp16=True)["eff"]
    assert all(f["max_rel_diff"] <= 1e-2 for f in report["files"])
    graph = onnx.load(str(RunDir(run_dir).onnx("eff", 0))).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)  # the backbone is half
    head = [n for n in graph.node if HEAD_NODE.match(n.name)]
    assert {n.op_type for n in head} >= {"Mul", "Add"}
    inits = {i.name: i.data_type for i in graph.initializer}
    assert all(inits[i] == onnx.TensorProto.FLOAT for n in head for i in n.input if i in inits)


@pytest.mark.filterwarnings("ignore:the float32 number")  # the converter rounds tiny weights of the random model
@pytest.mark.parametrize("fused", [False, True])
def test_fp16_graph_of_values_beyond_float16_range(tmp_path, fused):
    """Prices in the hundreds of thousands: float16 stops at 65504, so the scaling, the TTA merge and the fold mean
    run in float32 behind a float16 backbone."""
    import timm

    from comp.training._outputs import Predictor

    torch.manual_seed(0)
    heads = [OutputSpec("identity", (2e5 + 1e4 * k, -3.0), (5e4, 0.5)) for k in range(2)]
    folds = [Predictor(timm.create_model("test_efficientnet", num_classes=2).eval(), h).eval() for h in heads]
    module = E.FusedModel(folds, ["hflip", "vflip"], "median", "regression") if fused else folds[0]
    x = torch.randn(4, 3, 32, 32)
    E.export_graph(module, x[:1], tmp_path / "g.onnx", 17, {}, fp16=True)
    got = E.cpu_session(tmp_path / "g.onnx").run(["probs"], {"input": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert got.dtype == np.float32 and np.isfinite(got).all() and np.abs(want).max() > 65504
    _close(got, want, 1e-2)


def test_a_graph_exported_before_heads_is_stale_for_other_tasks(run_of, tmp_path):
    """A regression graph written by an exporter that ended every graph in a softmax (no task in its metadata)
    has the right checkpoints but the wrong output: predict re-exports it."""
    from comp.inference._onnxruntime import graph_matches
    from comp.run import file_sha256

    run_dir = run_of("regression")
    run = RunDir(run_dir)
    E.export_run(run_dir, models=["eff"])
    path = run.onnx("eff", 0)
    digest = {"0": file_sha256(run.checkpoint("eff", 0))}
    assert graph_matches(path, digest, "regression") and not graph_matches(path, digest, "classification")
    old = onnx.load(str(path))
    kept = [p for p in old.metadata_props if p.key not in ("task", "output_head")]
    del old.metadata_props[:]
    old.metadata_props.extend(kept)
    onnx.save(old, str(path))
    assert not graph_matches(path, digest, "regression") and graph_matches(path, digest, "classification")
    predict_run(run_dir, engine="onnx", out=tmp_path / "s.csv", progress=False)
    assert E.read_metadata(path)["task"] == "regression"  # exported again, with its head


# ---------------------------------------------------------------- predict: test.csv, OOF with TTA, submission


def _expected_submission(kind: str, test: pd.DataFrame, decision) -> pd.Series | pd.DataFrame:
    """What the submission's target column(s) must hold, by hand from test.csv and the decision."""
    if kind == "multilabel":
        cols, t = list(test.columns[1:]), decision["thresholds"]
        return pd.Series([" ".join(c for c, p, tj in zip(cols, row, t) if p >= tj) for row in test[cols].to_numpy()])
    if kind == "ordinal":
        cuts, grades = np.asarray(decision["cutpoints"]), np.asarray(decision["grades"])
        return pd.Series(grades[np.searchsorted(cuts, test["grade"].to_numpy())].astype(int).astype(str))
    return test.iloc[:, 1:]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_writes_the_task_units_and_its_submission(run_of, kind, tmp_path):
    run_dir = run_of(kind)
    run = RunDir(run_dir)
    cfg = run.load_config()
    out = tmp_path / "sub.csv"
    result = predict_run(run_dir, oof=True, tta=TTA, tta_merge="median", out=out, progress=False)
    oof = run.read_oof("eff")
    test = pd.read_csv(run.test_pred("eff"), dtype={"id": str})
    assert list(test.columns) == ["id", *oof.classes]
    # the torch engine runs the same Predictor the graphs end in
    predict_run(run_dir, engine="torch", tta=TTA, tta_merge="median", out=tmp_path / "t.csv", progress=False)
    _close(pd.read_csv(run.test_pred("eff"), dtype={"id": str}).iloc[:, 1:].to_numpy(), test.iloc[:, 1:].to_numpy())
    if cfg.task == "multilabel":
        assert ((test.iloc[:, 1:] >= 0) & (test.iloc[:, 1:] <= 1)).all().all()
    # --oof: CV with and without TTA by the task's metric (nested for a fitted decision)
    tta = run.read_oof("eff", tta=True)
    assert tta.matrix_targets and list(tta.ids) == list(oof.ids) and (tta.folds == oof.folds).all()
    np.testing.assert_array_equal(tta.y, oof.y)
    metric = get_metric(cfg.metric, cfg.task)
    info = result.models["eff"]
    assert info.cv_tta == pytest.approx(nested_score(metric, tta.y, tta.probs, tta.folds)[0])
    # one model: the submission applies the decision its metrics.json recorded
    recorded = run.read_metrics("eff").extra.get("decision")
    assert result.decision == recorded and (recorded is not None) == metric.fitted
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    sample = cfg.data.sample_submission
    assert list(sub.columns) == list(pd.read_csv(sample).columns)
    validate_submission(sub, sample, oof.classes, task=cfg.task)
    check_file(out, run_dir=run_dir)  # comp submit's check, per task
    test = test.set_index("id").loc[sub["id"]].reset_index()
    want = _expected_submission(kind, test, result.decision)
    if isinstance(want, pd.Series):
        assert list(sub.iloc[:, 1]) == list(want)
    else:
        got = sub[list(want.columns)].astype(float).to_numpy()
        np.testing.assert_allclose(got, want.to_numpy(), rtol=1e-12)


def test_several_models_fit_the_decision_on_their_mean_oof(run_of, tmp_path):
    run_dir = run_of("ordinal")
    run = RunDir(run_dir)
    _clone_model(run, "eff", "eff2", noise=0.5)
    result = predict_run(run_dir, out=tmp_path / "sub.csv", progress=False)
    a, b = run.read_oof("eff"), run.read_oof("eff2").reorder(run.read_oof("eff").ids)
    metric = get_metric("qwk", "regression")
    assert result.decision == metric.decide(a.y, (a.probs + b.probs) / 2)
    mean = (run.read_test("eff").probs + run.read_test("eff2").reorder(run.read_test("eff").ids).probs) / 2
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str).set_index("id").loc[run.read_test("eff").ids]
    cuts, grades = np.asarray(result.decision["cutpoints"]), np.asarray(result.decision["grades"])
    assert list(sub["grade"]) == [str(int(g)) for g in grades[np.searchsorted(cuts, mean[:, 0])]]


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_a_merge_that_does_not_fit_the_task_is_refused_before_anything_is_written(run_of, kind, tmp_path):
    run_dir = run_of(kind)
    task = TASK_KINDS[kind][0]
    before = snapshot(run_dir)
    needle = f"merges that fit {task}: mean, median"
    with pytest.raises(ConfigError, match=needle):
        predict_run(run_dir, tta=["hflip"], tta_merge="geometric", out=tmp_path / "s.csv", progress=False)
    with pytest.raises(ConfigError, match=needle):
        E.export_run(run_dir, fuse=True, tta=["hflip"], tta_merge="geometric")
    with pytest.raises(ConfigError, match=needle):
        bundle_run(run_dir, out=tmp_path / "bundle", tta_merge="geometric")
    res = CliRunner().invoke(main, ["predict", str(run_dir), "--tta", "hflip", "--tta-merge", "geometric"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and needle in res.output, res.output
    assert snapshot(run_dir) == before and sorted(p.name for p in tmp_path.iterdir()) == [f"run-{kind}"]


def test_submit_checks_the_file_as_the_task_renders_it(run_of, tmp_path):
    run_dir = run_of("multilabel")
    predict_run(run_dir, out=tmp_path / "sub.csv", progress=False)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    sub.loc[0, "tags"] = "r purple"
    sub.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CompError, match="tag 'purple'"):
        check_file(tmp_path / "bad.csv", run_dir=run_dir)
    run_dir = run_of("regression")
    predict_run(run_dir, out=tmp_path / "reg.csv", progress=False)
    sub = pd.read_csv(tmp_path / "reg.csv", dtype=str)
    sub.loc[1, "score"] = "high"
    sub.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(CompError, match="not finite numbers"):
        check_file(tmp_path / "bad.csv", run_dir=run_dir)


# ---------------------------------------------------------------- comp bundle: the script renders as comp does


def _same_submission(got: Path, want: Path, kind: str) -> None:
    """Rendered cells (tags, grades, names) equal as text; probabilities and values within float32 rounding."""
    a = pd.read_csv(got, dtype=str, keep_default_na=False)
    b = pd.read_csv(want, dtype=str, keep_default_na=False)
    assert list(a.columns) == list(b.columns) and list(a.iloc[:, 0]) == list(b.iloc[:, 0])
    if kind in ("multilabel", "ordinal"):
        assert a.equals(b)
    else:
        _close(a.iloc[:, 1:].astype(float).to_numpy(), b.iloc[:, 1:].astype(float).to_numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_script_reproduces_comp_predict(run_of, kind, ort_python, tmp_path):
    run_dir = run_of(kind)
    run = RunDir(run_dir)
    cfg = run.load_config()
    predict_run(run_dir, out=tmp_path / "comp.csv", progress=False)
    result = bundle_run(run_dir, out=tmp_path / "bundle")
    m = result.manifest
    assert m["format"] == "comp.bundle/2" and m["task"] == cfg.task
    block = m["submission"]
    assert (
        block["kind"]
        == {
            "multilabel": "tags",
            "multilabel-wide": "proba",
            "regression": "values",
            "regression-multi": "values",
            "ordinal": "values",
        }[kind]
    )
    recorded = run.read_metrics("eff").extra.get("decision")  # fitted on OOF: f2's thresholds, qwk's cut-points
    assert (recorded is not None) == (kind in ("multilabel", "ordinal"))
    assert block["decision"] == (recorded if kind in ("multilabel", "ordinal") else None)
    assert (m["graphs"][0].get("max_rel_diff", 0.0)) <= 1e-4
    data = cfg.data
    out_dir = tmp_path / "venv-out"
    out_dir.mkdir()
    sub, probs, _ = _predict_in_venv(
        ort_python, tmp_path / "bundle", Path(data.test_image_dir), Path(data.sample_submission), out_dir
    )
    want = run.read_test("eff").frame().set_index("id")
    got = pd.read_csv(probs, dtype={"id": str}).set_index("id").loc[want.index]
    _close(got.to_numpy(), want[list(got.columns)].to_numpy())
    _same_submission(sub, tmp_path / "comp.csv", kind)


def _hand_blend(run: RunDir, members: list[str], weights: list[float], name: str = "blend") -> None:
    """A weighted-mean blend folder written through the RunDir API, as comp ensemble writes one."""
    oofs = [run.read_oof(m) for m in members]
    tests = [run.read_test(m) for m in members]
    ids, test_ids = oofs[0].ids, tests[0].ids
    w = np.asarray(weights) / sum(weights)
    oof = np.tensordot(w, np.stack([o.reorder(ids).probs for o in oofs]), axes=1)
    test = np.tensordot(w, np.stack([t.reorder(test_ids).probs for t in tests]), axes=1)
    first = oofs[0]
    run.write_oof(name, Predictions(ids, first.classes, oof, first.folds, first.targets, first.id_column))
    run.write_test(name, Predictions(test_ids, first.classes, test, id_column=first.id_column))
    cfg = run.load_config()
    metric = get_metric(cfg.metric, cfg.task)
    cv, decision, _ = nested_score(metric, first.y, oof, first.folds)
    extra = {"method": "weighted", "weights": weights, "bias": False}
    extra["members"] = [str(run.model_dir(m)) for m in members]
    if decision is not None:
        extra["decision"] = decision
    run.write_metrics(name, Metrics(metric.name, metric.greater_is_better, cv, [], extra=extra))


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_blend_bundle_is_the_weighted_mean_of_its_members(run_of, kind, ort_python, tmp_path):
    """Blends of multi-label and regression models are built by comp ensemble; here one is written by hand
    through the RunDir API, as a weighted mean of two models' predictions."""
    run_dir = run_of(kind)
    run = RunDir(run_dir)
    cfg = run.load_config()
    _clone_model(run, "eff", "eff2", noise=0.5)
    predict_run(run_dir, out=tmp_path / "models.csv", progress=False)
    _hand_blend(run, ["eff", "eff2"], [0.25, 0.75])
    result = bundle_run(run.model_dir("blend"), out=tmp_path / "bundle")
    assert [g["weight"] for g in result.manifest["graphs"]] == [0.25, 0.75]
    blend = run.read_test("blend")
    decision = run.read_metrics("blend").extra.get("decision")
    assert result.manifest["submission"]["decision"] == decision
    want = make_submission(
        blend.ids, blend.probs, blend.classes, cfg.data.sample_submission, task=cfg.task, decision=decision
    )
    want.to_csv(tmp_path / "blend.csv", index=False)
    out_dir = tmp_path / "venv-out"
    out_dir.mkdir()
    sub, _, _ = _predict_in_venv(
        ort_python,
        tmp_path / "bundle",
        Path(cfg.data.test_image_dir),
        Path(cfg.data.sample_submission),
        out_dir,
    )
    _same_submission(sub, tmp_path / "blend.csv", kind)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "blend"
