"""Blending model folders: alignment, every registered method, honest nested CV, outputs, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from comp._tables import format_table
from comp.cli import main
from comp.ensembling._blend import METHODS, geometric_mean, hill_climb, rank_mean
from comp.ensembling._ensemble import run_ensemble
from comp.errors import CompError
from comp.metrics import get_metric

CLASSES = ["cat", "dog", "fox"]
ID = "image_id"
N = 150


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(autouse=True)
def one_blas_thread():
    # The stacker's tiny regressions run 10x slower when BLAS threads fight other jobs for two cores.
    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:03d}" for i in range(N)])  # leading zeros must survive every round trip
    y = rng.integers(0, len(CLASSES), N)
    folds = rng.permutation(np.arange(N) % 3)
    return {"ids": ids, "y": y, "folds": folds, "rng": rng}


def informative(d, strength=2.0):
    logits = d["rng"].normal(0, 1, (N, len(CLASSES)))
    logits[np.arange(N), d["y"]] += strength
    return softmax(logits)


def noise(d, n=N):
    return softmax(d["rng"].normal(0, 2, (n, len(CLASSES))))


def write_run(root, run, models, d, metric="accuracy", tests=None, sample=None, folds=None, targets=None):
    """Write RUN/config.yaml, folds.csv and per model oof.csv (+ test.csv); return the model folders."""
    run_dir = root / run
    run_dir.mkdir(parents=True)
    cfg = {"metric": metric, "folds": {"n_splits": 3}, "data": {"id_column": ID, "sample_submission": sample}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    folds = d["folds"] if folds is None else folds
    pd.DataFrame({ID: d["ids"], "fold": folds}).to_csv(run_dir / "folds.csv", index=False)
    labels = np.array(CLASSES)[d["y"]] if targets is None else targets
    dirs = []
    for model_id, probs in models.items():
        mdir = run_dir / "models" / model_id
        mdir.mkdir(parents=True)
        oof = pd.DataFrame({ID: d["ids"], "fold": folds, "target": labels})
        oof = pd.concat([oof, pd.DataFrame(probs, columns=CLASSES)], axis=1)
        oof.to_csv(mdir / "oof.csv", index=False)
        if tests is not None:
            test = pd.concat([pd.DataFrame({ID: tests["ids"]}), pd.DataFrame(tests[model_id], columns=CLASSES)], axis=1)
            test.to_csv(mdir / "test.csv", index=False)
        (mdir / "metrics.json").write_text(json.dumps({"metric": metric, "cv": 0.0, "folds": []}))
        dirs.append(mdir)
    return dirs


def read_oof(model_dir):
    df = pd.read_csv(model_dir / "oof.csv", dtype={ID: str, "target": str})
    return df, df[CLASSES].to_numpy()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_informative_member_dominates_noise(tmp_path, data, method):
    good, bad = write_run(tmp_path, "r1", {"good": informative(data), "noise": noise(data)}, data)
    result = run_ensemble([good, bad], method=method)
    by_name = {m.name: m for m in result.members}
    assert result.cv > by_name["r1/noise"].cv + 0.2
    if METHODS[method].fitted and result.weights is not None:
        assert result.weights[0] >= 0.9  # fitted weights find the informative member


@pytest.mark.parametrize("method", ["mean", "geometric", "weighted", "hill_climb"])
def test_blend_of_identical_models_equals_the_model(tmp_path, data, method):
    probs = informative(data)
    a = write_run(tmp_path, "r1", {"m": probs}, data)[0]
    b = write_run(tmp_path, "r2", {"m": probs}, data)[0]
    result = run_ensemble([a, b], method=method)
    df, blended = read_oof(tmp_path / f"blend-{method}" / "models" / f"blend-{method}")
    np.testing.assert_allclose(blended, probs, atol=1e-9)
    assert list(df[ID]) == list(data["ids"])
    assert result.cv == pytest.approx(result.members[0].cv)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_row_and_class_order_do_not_change_the_blend(tmp_path, data, method):
    p1, p2 = informative(data), informative(data, strength=1.0)
    a, b = write_run(tmp_path, "plain", {"a": p1, "b": p2}, data)
    shuffled = write_run(tmp_path, "shuffled", {"b": p2}, data)[0]
    oof = pd.read_csv(shuffled / "oof.csv", dtype=str)
    oof[[ID, "fold", "target"] + CLASSES[::-1]].sample(frac=1, random_state=1).to_csv(shuffled / "oof.csv", index=False)
    first = run_ensemble([a, b], method=method, name="x")
    second = run_ensemble([a, shuffled], method=method, name="y")
    assert first.cv == pytest.approx(second.cv) and first.cv_in_sample == pytest.approx(second.cv_in_sample)
    np.testing.assert_allclose(read_oof(tmp_path / "x/models/x")[1], read_oof(tmp_path / "y/models/y")[1], atol=1e-9)


@pytest.mark.parametrize("method, bias", [(m, False) for m in sorted(METHODS)] + [("mean", True)])
def test_nested_score_is_never_above_in_sample(tmp_path, data, method, bias):
    dirs = write_run(tmp_path, "r1", {f"n{i}": noise(data) for i in range(3)}, data)
    result = run_ensemble(dirs, method=method, bias=bias)
    if METHODS[method].fitted or bias:
        assert result.cv < result.cv_in_sample  # fitting to pure noise flatters only the in-sample score
    else:
        assert result.cv == pytest.approx(result.cv_in_sample)  # nothing fitted, nothing to be optimistic about
    assert len(result.folds) == 3


def test_bias_corrects_an_under_predicted_class(tmp_path, data):
    probs = informative(data)
    probs[:, 0] *= 0.15  # a model that almost never predicts 'cat'
    probs /= probs.sum(1, keepdims=True)
    m = write_run(tmp_path, "r1", {"m": probs}, data, metric="macro_f1")
    plain = run_ensemble(m, method="mean", name="plain")
    biased = run_ensemble(m, method="mean", bias=True, name="biased")
    assert biased.cv > plain.cv + 0.05  # honest (nested) score improves, not just the in-sample one
    assert biased.bias is not None and biased.bias["cat"] > 0


def test_misaligned_folds_are_refused_by_the_cli(tmp_path, data):
    a = write_run(tmp_path, "r1", {"a": informative(data)}, data)[0]
    b = write_run(tmp_path, "r2", {"b": informative(data)}, data, folds=(data["folds"] + 1) % 3)[0]
    res = CliRunner().invoke(main, ["ensemble", str(a), str(b)])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "model r2/b puts id '000' in fold" in lines[0] and "retrain with the same folds.csv" in lines[0]
    assert not (tmp_path / "blend-hill_climb").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ("ids", "lack 1 and add 1 ids"),
        ("targets", "puts id '000' in target"),
        ("classes", "has classes"),
    ],
)
def test_other_misalignments_are_refused(tmp_path, data, change, message):
    a = write_run(tmp_path, "r1", {"a": informative(data)}, data)[0]
    b = write_run(tmp_path, "r2", {"b": informative(data)}, data)[0]
    oof = pd.read_csv(b / "oof.csv", dtype=str)
    if change == "ids":
        oof.loc[5, ID] = "new"
    elif change == "targets":
        oof.loc[0, "target"] = next(c for c in CLASSES if c != oof.loc[0, "target"])
    else:
        oof = oof.rename(columns={"fox": "wolf"}).replace({"target": {"fox": "wolf"}})
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(CompError, match=message):
        run_ensemble([a, b], method="mean")


def test_unknown_method_lists_the_valid_ones(tmp_path, data):
    a = write_run(tmp_path, "r1", {"a": informative(data)}, data)[0]
    with pytest.raises(CompError, match="choose from mean, weighted, rank.*did you mean 'stacking'"):
        run_ensemble([a], method="stacker")


def test_blend_folder_is_a_valid_member_of_another_blend(tmp_path, data):
    a, b = write_run(tmp_path, "r1", {"a": informative(data), "b": informative(data, 1.0)}, data)
    first = run_ensemble([a, b], method="hill_climb")
    blend_dir = tmp_path / "blend-hill_climb" / "models" / "blend-hill_climb"
    assert first.model_dir == blend_dir
    assert (tmp_path / "blend-hill_climb" / "config.yaml").is_file() and (
        tmp_path / "blend-hill_climb" / "folds.csv"
    ).is_file()
    metrics = json.loads((blend_dir / "metrics.json").read_text())
    assert metrics["method"] == "hill_climb" and metrics["cv"] == pytest.approx(first.cv)
    assert metrics["members"] == [str(a), str(b)] and len(metrics["weights"]) == 2
    df, probs = read_oof(blend_dir)
    assert get_metric("accuracy")(pd.Index(CLASSES).get_indexer(df["target"]), probs) == pytest.approx(metrics["cv"])
    second = run_ensemble([blend_dir, a], method="mean", name="blend2")
    assert second.members[0].cv == pytest.approx(first.cv)
    with pytest.raises(CompError, match="would overwrite the run folder"):
        run_ensemble([blend_dir], method="mean", name="blend-hill_climb")


def test_submission_is_written_in_sample_order(tmp_path, data, monkeypatch):
    test_ids = np.array([f"t{i:02d}" for i in range(20)])
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({ID: test_ids[::-1], "label": "cat"}).to_csv(sample, index=False)
    tests = {"ids": test_ids, "a": noise(data, 20), "b": noise(data, 20)}
    dirs = write_run(
        tmp_path, "r1", {"a": informative(data), "b": informative(data)}, data, tests=tests, sample=str(sample)
    )
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "mean"])
    assert res.exit_code == 0, res.output
    assert "r1/a" in res.output and "blend-mean (blend)" in res.output
    sub = pd.read_csv(tmp_path / "submissions" / "blend-mean.csv", dtype=str)
    assert list(sub.columns) == [ID, "label"] and list(sub[ID]) == list(test_ids[::-1])
    blended = pd.read_csv(tmp_path / "blend-mean/models/blend-mean/test.csv", dtype={ID: str}).set_index(ID)
    expected = (tests["a"] + tests["b"]) / 2
    np.testing.assert_allclose(blended.loc[test_ids, CLASSES].to_numpy(), expected, atol=1e-9)
    assert list(sub["label"]) == list(np.array(CLASSES)[expected.argmax(1)][::-1])


def test_out_without_test_predictions_is_refused(tmp_path, data):
    a = write_run(tmp_path, "r1", {"a": informative(data)}, data)[0]
    with pytest.raises(CompError, match="--out .* no test predictions"):
        run_ensemble([a], method="mean", out=tmp_path / "s.csv")
    assert not (tmp_path / "blend-mean").exists()


def test_blend_numbers():
    rng = np.random.default_rng(3)
    P = softmax(rng.normal(size=(40, 4)))[None].repeat(2, axis=0)
    np.testing.assert_allclose(geometric_mean(P), P[0], atol=1e-12)
    r = rank_mean(np.stack([P[0], softmax(rng.normal(size=(40, 4)))]))
    np.testing.assert_allclose(r.sum(1), 1.0)
    y = P[0].argmax(1)
    w = hill_climb(np.stack([P[0], softmax(rng.normal(size=(40, 4)))]), y, get_metric("accuracy"))
    assert w.tolist() == [1.0, 0.0]


def test_format_table_aligns_columns():
    text = format_table([{"model": "a", "cv": 0.5}, {"model": "long-name", "cv": None}])
    lines = text.splitlines()
    assert lines[0].split() == ["model", "cv"] and lines[2].endswith("0.5000") and lines[3].endswith("-")
    assert len({len(line) for line in lines[:3]}) == 1


def test_tta_flag_reads_oof_tta_where_present(tmp_path, data):
    a, b = write_run(tmp_path, "r1", {"a": noise(data), "b": informative(data)}, data)
    oof = pd.read_csv(a / "oof.csv", dtype=str)
    oof[CLASSES] = informative(data, strength=4.0)
    oof.to_csv(a / "oof_tta.csv", index=False)
    plain = run_ensemble([a, b], method="mean", name="plain")
    tta = run_ensemble([a, b], method="mean", name="tta", tta=True)
    assert tta.members[0].cv > plain.members[0].cv + 0.3
    assert tta.members[1].cv == plain.members[1].cv  # b has no oof_tta.csv: its oof.csv is used


@pytest.mark.parametrize("which, message", [("run", "is a run folder, not a model folder"), ("twice", "listed twice")])
def test_wrong_model_folder_arguments(tmp_path, data, which, message):
    a = write_run(tmp_path, "r1", {"a": informative(data)}, data)[0]
    dirs = [tmp_path / "r1"] if which == "run" else [a, a]
    with pytest.raises(CompError, match=message):
        run_ensemble(dirs)


def test_stacking_learns_which_member_to_trust_per_class():
    """Member 0 knows classes 0-1, member 1 knows 2-3: per-class trust beats any single weight per member."""
    from comp.ensembling._blend import nested_oof
    from comp.ensembling._task_stack import fit_stack

    rng = np.random.default_rng(0)
    n, c = 900, 4
    y = rng.integers(0, c, n)
    folds = rng.permutation(np.arange(n) % 3)

    def member(knows):
        z = rng.normal(0, 1, (n, c))
        m = np.isin(y, knows)
        z[np.flatnonzero(m), y[m]] += 3.0
        return softmax(z)

    P = np.stack([member([0, 1]), member([2, 3])])
    acc = get_metric("accuracy")
    honest = {name: acc(y, nested_oof(METHODS[name], P, y, folds, acc, False)) for name in ("weighted", "stacking")}
    assert honest["stacking"] > honest["weighted"] + 0.01 > max(acc(y, p) for p in P)
    s = fit_stack(P, y)
    assert s.d[0, :2].mean() > s.d[0, 2:].mean() and s.d[1, 2:].mean() > s.d[1, :2].mean()  # trust where each knows
    np.testing.assert_allclose(s.predict(P).sum(1), 1.0)


def test_blends_with_and_without_bias_get_their_own_folders(tmp_path, data):
    dirs = write_run(tmp_path, "r1", {"a": informative(data), "b": informative(data, 1.0)}, data)
    plain = run_ensemble(dirs, method="mean")
    biased = run_ensemble(dirs, method="mean", bias=True)
    assert plain.name == "blend-mean" and biased.name == "blend-mean-bias"
    assert (tmp_path / "blend-mean").is_dir() and (tmp_path / "blend-mean-bias").is_dir()


def test_several_methods_are_compared_and_the_best_honest_cv_submits(tmp_path, data, monkeypatch):
    test_ids = np.array([f"t{i:02d}" for i in range(20)])
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({ID: test_ids, "label": "cat"}).to_csv(sample, index=False)
    tests = {"ids": test_ids, "good": noise(data, 20), "noise": noise(data, 20)}
    dirs = write_run(
        tmp_path, "r1", {"good": informative(data), "noise": noise(data)}, data, tests=tests, sample=str(sample)
    )
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "mean,hill_climb"])
    assert res.exit_code == 0, res.output
    assert "best honest CV: hill_climb (best of 2 methods" in res.output  # the mean drags in the noise member
    assert (tmp_path / "blend-mean").is_dir() and (tmp_path / "blend-hill_climb").is_dir()
    assert sorted(p.name for p in (tmp_path / "submissions").iterdir()) == ["blend-hill_climb.csv"]
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "all"])
    assert res.exit_code == 0 and all(f"blend-{m}" in res.output for m in METHODS), res.output
    for args, fragment in (
        (["--method", "mean,nope"], "unknown blend method 'nope'"),
        (["--method", "mean,rank", "--name", "x"], "--name names one blend"),
        (["--method", " , "], "--method needs"),
    ):
        bad = CliRunner().invoke(main, ["ensemble", *map(str, dirs), *args])
        assert bad.exit_code == 2 and fragment in bad.output, bad.output


def test_method_help_names_every_blend_method():
    # --help lists the methods without importing the registry's module (numpy, pandas, metrics)
    text = " ".join(CliRunner().invoke(main, ["ensemble", "--help"]).output.split())
    assert f"Blend method(s): {', '.join(METHODS)}; several" in text


@pytest.mark.parametrize("name", list(METHODS))
def test_weighted_mean_flag_tells_the_truth(name):
    # comp bundle carries a blend as per-member weights only for methods flagged weighted_mean
    rng = np.random.default_rng(3)
    P = softmax(rng.normal(0, 2, (3, 60, 4)).reshape(-1, 4)).reshape(3, 60, 4)
    y = rng.integers(0, 4, 60)
    blender = METHODS[name].fit(P, y, get_metric("accuracy"))
    Q = softmax(rng.normal(0, 2, (3 * 20, 4))).reshape(3, 20, 4)  # rows the blend was not fitted on
    is_weighted_mean = blender.weights is not None and np.allclose(
        blender.predict(Q), np.tensordot(blender.weights, Q, 1)
    )
    assert METHODS[name].weighted_mean == is_weighted_mean
