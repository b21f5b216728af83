"""Tabular metadata beside the images: data.features validated before the first write, the gbdt stack over
OOF predictions + metadata + group-relative features on every task, and its leak guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from comp.cli import main
from comp.config import load_config
from comp.data._features import FeatureScaler, encode_test, encode_train, read_train_features
from comp.ensembling._blend import METHODS, check_method, nested_blend, task_methods
from comp.ensembling._ensemble import run_ensemble
from comp.ensembling._side import Side, design, group_relative
from comp.errors import CompError, ConfigError
from comp.metrics import get_metric
from comp.tasks import TASKS, get_task
from tests.test_blend_tasks import ID, PLAIN_METRIC, Toy, write_members

pytest.importorskip("lightgbm")


# ---------------------------------------------------------------- data.features: shape and tables


@pytest.mark.parametrize(
    "data, message",
    [
        ({"categorical": ["site"]}, "data.categorical' names feature columns but data.features is not set"),
        ({"features": ["age"], "categorical": ["site"]}, "names 'site', which is not in data.features"),
        ({"features": ["age", "age"]}, "must list distinct, non-empty column names"),
        ({"features": []}, "is an empty list"),
        ({"features": ["id"]}, "lists 'id', which is data.id_column"),
        ({"features": ["person"], "group_column": "person"}, "lists 'person', which is data.group_column"),
        ({"features": ["label"]}, "lists 'label', which is data.label_column"),
    ],
)
def test_feature_keys_are_checked_for_shape(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"data": data})


def _cfg(**data):
    return load_config({"data": {"features": ["age", "site"], "categorical": ["site"], **data}}).data


def test_numeric_and_categorical_columns_are_encoded_with_missing_values():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "age": ["31", "", "40.5", "NaN"], "site": ["leg", "arm", "", "leg"]})
    feats = encode_train(df, _cfg(), "train.csv")
    assert feats.numeric_names == ["age"] and feats.categorical_names == ["site"]
    np.testing.assert_array_equal(np.isnan(feats.numeric[:, 0]), [False, True, False, True])
    assert feats.levels == {"site": ["arm", "leg"]}
    assert feats.codes[:, 0].tolist() == [1, 0, -1, 1]
    m = feats.matrix()
    assert m.shape == (4, 2) and np.isnan(m[2, 1]) and m[0, 1] == 1.0


@pytest.mark.parametrize(
    "train, test, message",
    [
        ({"age": ["1", "x2"]}, None, r"train.csv line 3: column 'age' holds 'x2', not a number.*data.categorical"),
        ({"age": ["1", "inf"]}, None, r"train.csv line 3: column 'age' holds 'inf'; use a finite number"),
        ({"site": None}, None, r"train.csv: column 'site' of data.features not found in the training table"),
        (
            {},
            {"site": ["leg", "hand"]},
            r"test.csv line 3: column 'site' holds 'hand', a value the training table never",
        ),
        ({}, {"site": None}, r"test.csv: column 'site' of data.features not found in the test table"),
        ({}, {"age": ["3", "old"]}, r"test.csv line 3: column 'age' holds 'old', not a number"),
    ],
)
def test_bad_metadata_is_named_with_file_and_line(train, test, message):
    base = {"id": ["a", "b"], "age": ["1", "2"], "site": ["leg", "arm"]}
    tr = pd.DataFrame({k: v for k, v in {**base, **train}.items() if v is not None})
    te = pd.DataFrame({k: v for k, v in {**base, **(test or {})}.items() if v is not None})
    with pytest.raises(CompError, match=message):
        feats = encode_train(tr, _cfg(), "train.csv")
        encode_test(te, _cfg(test_csv="test.csv"), feats.levels, "test.csv")


def test_test_metadata_needs_a_test_table():
    feats = encode_train(pd.DataFrame({"age": ["1"], "site": ["a"]}), _cfg(), "train.csv")
    with pytest.raises(CompError, match="set data.test_csv"):
        encode_test(pd.DataFrame(), _cfg(), feats.levels, "")


def test_train_folds_refuses_bad_metadata_before_the_first_write(tmp_path):
    from tests.conftest import tiny_config, write_competition, write_config

    root = write_competition(tmp_path / "comp")
    df = pd.read_csv(root / "train.csv")
    df["age"] = ["12"] * (len(df) - 1) + ["twelve"]
    df.to_csv(root / "train.csv", index=False)
    cfg = write_config(root, tiny_config(root, data__features=["age"]))
    res = CliRunner().invoke(main, ["train-folds", "--config", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and f"line {len(df) + 1}: column 'age' holds 'twelve'" in res.output, res.output
    assert not (tmp_path / "run").exists()
    df["age"] = "12"
    df.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ["t00"]}).to_csv(root / "test.csv", index=False)
    cfg = write_config(root, tiny_config(root, data__features=["age"], data__test_csv="test.csv"))
    res = CliRunner().invoke(main, ["train-folds", "--config", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 2 and "column 'age' of data.features not found in the test table" in res.output
    assert not (tmp_path / "run").exists()
    assert read_train_features(load_config(cfg).data, df.astype(str)).numeric.shape == (len(df), 1)


def test_scaler_statistics_come_from_the_rows_it_is_fitted_on():
    df = pd.DataFrame({"age": ["1", "3", "", "100"], "site": ["a", "a", "b", "c"]})
    feats = encode_train(df, _cfg(), "train.csv")
    part = feats.take(np.array([0, 1, 2]))  # a fold's training part: the validation row (100, c) unseen
    scaler = FeatureScaler.fit(part)
    assert scaler.mean.tolist() == [2.0] and scaler.std.tolist() == [1.0]
    z = scaler.numeric(feats)
    assert z[:, 0].tolist() == [-1.0, 1.0, 0.0, 98.0] and z[:, 1].tolist() == [0, 0, 1, 0]  # value, missing flag
    assert scaler.categorical(feats)[:, 0].tolist() == [1, 1, 2, 0]  # 'c' never seen by this part: 0
    again = FeatureScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.numeric(feats), z)


# ---------------------------------------------------------------- the gbdt stack


def _hint(toy: Toy, rng) -> np.ndarray:
    """A metadata column that carries the target (noisily): what the images (the members) do not know."""
    if toy.task == "classification":
        keep = rng.random(toy.n) < 0.8
        return np.where(keep, toy.y, rng.integers(0, 3, toy.n)).astype(float)
    return toy.y[:, 0] + rng.normal(0, 0.3 * toy.y[:, 0].std() + 0.05, toy.n)


def write_table(root: Path, toy: Toy, *, n_test: int = 20, groups: bool = True, seed: int = 1) -> dict:
    """train.csv and test.csv with metadata (an informative 'hint', an uninformative 'noise', a categorical
    'site' with a missing cell) and the data block that names them."""
    rng = np.random.default_rng(seed)
    train = pd.DataFrame({ID: toy.ids, "hint": _hint(toy, rng), "noise": rng.normal(size=toy.n)})
    train["site"] = rng.choice(["arm", "leg", "head"], toy.n)
    train.loc[3, "site"] = ""
    train.loc[5, "noise"] = np.nan
    train["person"] = [f"p{i // 3}" for i in range(toy.n)]
    train.to_csv(root / "train.csv", index=False)
    test = pd.DataFrame({ID: [f"t{i:02d}" for i in range(n_test)], "hint": rng.normal(size=n_test)})
    test["noise"] = rng.normal(size=n_test)
    test["site"] = rng.choice(["arm", "leg"], n_test)
    test["person"] = [f"q{i // 2}" for i in range(n_test)]
    test.to_csv(root / "test.csv", index=False)
    data = {
        "id_column": ID,
        "train_csv": str(root / "train.csv"),
        "test_csv": str(root / "test.csv"),
        "sample_submission": None,
        "features": ["hint", "noise", "site"],
        "categorical": ["site"],
    }
    if groups:
        data["group_column"] = "person"
    return data


def set_data(model_dir: Path, data: dict) -> None:
    path = model_dir.parent.parent / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["data"] = data
    path.write_text(yaml.safe_dump(cfg))


def members_with_tests(root: Path, run: str, toy: Toy, n_test: int = 20) -> list[Path]:
    rng = np.random.default_rng(7)
    k = len(toy.columns)
    tests = {"ids": [f"t{i:02d}" for i in range(n_test)]}
    for m in ("a", "b"):
        tests[m] = rng.dirichlet(np.ones(k), n_test) if toy.task == "classification" else rng.random((n_test, k))
    return write_members(root, run, toy, {"a": toy.informative(0.7), "b": toy.noise()}, tests=tests)


@pytest.mark.parametrize("task", list(TASKS))
def test_gbdt_stack_learns_from_metadata_on_every_task(tmp_path, task):
    toy = Toy(task, n=240)
    dirs = members_with_tests(tmp_path, "r1", toy)
    data = write_table(tmp_path, toy)
    plain = run_ensemble(dirs, method="gbdt", name="plain")  # no metadata in the config: predictions only
    set_data(dirs[0], data)
    stacked = run_ensemble(dirs, method="gbdt", name="meta")
    metric = get_metric(stacked.metric, task)
    assert metric.better(stacked.cv, plain.cv) and all(metric.better(stacked.cv, m.cv) for m in stacked.members)
    assert stacked.cv_in_sample != stacked.cv and stacked.weights is None
    saved = json.loads((stacked.model_dir / "metrics.json").read_text())
    assert saved["method"] == "gbdt" and saved["metadata"] == ["hint", "noise", "site", "groups"]
    assert plain.metadata == []
    test = pd.read_csv(stacked.model_dir / "test.csv", dtype={ID: str})
    assert test[ID].tolist() == [f"t{i:02d}" for i in range(20)]
    cols = test[toy.columns].to_numpy()
    assert np.isfinite(cols).all() and len(np.unique(cols.round(6), axis=0)) > 1
    if task == "classification":
        np.testing.assert_allclose(cols.sum(1), 1.0, atol=1e-9)
    oof = pd.read_csv(stacked.model_dir / "oof.csv", dtype={ID: str})
    assert oof["fold"].tolist() == toy.folds.tolist()


def _side(toy: Toy, rng, groups=True) -> Side:
    X = np.stack([_hint(toy, rng), rng.normal(size=toy.n)], axis=1)
    g = np.array([f"p{i // 3}" for i in range(toy.n)]) if groups else None
    return Side(X, ["hint", "noise"], [], g, toy.folds.copy())


@pytest.mark.parametrize("task", list(TASKS))
def test_a_folds_predictions_never_see_its_own_targets(task):
    toy = Toy(task, n=150)
    side = _side(toy, np.random.default_rng(0))
    P = np.stack([toy.informative(0.7), toy.noise()])
    metric = get_metric(PLAIN_METRIC[task], task)
    base = nested_blend(METHODS["gbdt"], P, toy.y, toy.folds, metric, False, side).pred
    for k in range(3):
        y = toy.y.copy()
        rows = toy.folds == k
        y[rows] = y[rows][::-1] if y.ndim == 1 else y[rows][::-1] * 2 + 1  # other targets on fold k only
        if task == "multilabel":
            y[rows] = 1 - toy.y[rows]
        again = nested_blend(METHODS["gbdt"], P, y, toy.folds, metric, False, side).pred
        np.testing.assert_array_equal(again[rows], base[rows])  # the fold's own rows: fitted without them
        assert not np.array_equal(again[~rows], base[~rows])  # the other folds' rows learnt from them


def test_group_features_never_cross_a_fold():
    values = np.array([[1.0], [3.0], [10.0], [20.0], [5.0]])
    groups = np.array(["g", "g", "g", "g", "h"])
    blocks = np.array([0, 0, 1, 1, 0])  # group g split over two folds
    dev, rank = group_relative(values, groups, blocks)
    assert dev[:, 0].tolist() == [-1.0, 1.0, -5.0, 5.0, 0.0]
    assert rank[:, 0].tolist() == [0.5, 1.0, 0.5, 1.0, 1.0]
    changed = values.copy()
    changed[2:4] = [[1000.0], [-7.0]]  # fold 1's rows change: fold 0's group features do not
    dev2, rank2 = group_relative(changed, groups, blocks)
    np.testing.assert_array_equal(dev2[[0, 1, 4]], dev[[0, 1, 4]])
    np.testing.assert_array_equal(rank2[[0, 1, 4]], rank[[0, 1, 4]])
    # the design's group features of a fold's rows are the same computed on the fold alone or on every row
    toy = Toy("classification", n=60)
    side = _side(toy, np.random.default_rng(3))
    P = np.stack([toy.informative(), toy.noise()])
    X, names, _ = design(P, side, toy.columns)
    rows = toy.folds == 1
    alone, _, _ = design(P[:, rows], side.take(rows), toy.columns)
    np.testing.assert_allclose(X[rows], alone)
    assert "hint-group_mean" in names and "mean:cat:group_rank" in names


def test_gbdt_refuses_members_on_other_folds(tmp_path):
    toy = Toy("classification", n=90)
    a = write_members(tmp_path, "r1", toy, {"a": toy.informative()})
    other = Toy("classification", n=90)
    other.folds = np.roll(toy.folds, 1)
    b = write_members(tmp_path, "r2", other, {"b": toy.informative()})
    set_data(a[0], write_table(tmp_path, toy))
    res = CliRunner().invoke(main, ["ensemble", str(a[0]), str(b[0]), "--method", "gbdt"])
    assert res.exit_code == 2 and "leaks validation rows into training" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r2", "test.csv", "train.csv"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop(columns="hint"), "column 'hint' of data.features not found in the test table"),
        (lambda t: t.assign(site=["foot"] + ["arm"] * (len(t) - 1)), "line 2: column 'site' holds 'foot'"),
        (lambda t: t.iloc[1:], "test id 't00' of the members' test.csv is not in the test table"),
    ],
)
def test_bad_test_table_is_refused_before_the_blend_is_written(tmp_path, change, message):
    toy = Toy("regression", n=90)
    dirs = members_with_tests(tmp_path, "r1", toy)
    set_data(dirs[0], write_table(tmp_path, toy))
    change(pd.read_csv(tmp_path / "test.csv", dtype=str)).to_csv(tmp_path / "test.csv", index=False)
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "gbdt"])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
    assert not (tmp_path / "blend-gbdt").exists()


def test_a_test_table_without_the_group_column_drops_group_features_with_a_note(tmp_path):
    toy = Toy("classification", n=90)
    dirs = members_with_tests(tmp_path, "r1", toy)
    set_data(dirs[0], write_table(tmp_path, toy))
    pd.read_csv(tmp_path / "test.csv").drop(columns="person").to_csv(tmp_path / "test.csv", index=False)
    result = run_ensemble(dirs, method="gbdt")
    assert any("no group-relative features" in n and "'person'" in n for n in result.notes)


def test_gbdt_without_lightgbm_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real(name, *a))
    task = get_task("classification")
    assert "gbdt" not in task_methods(task) and "stacking" in task_methods(task)
    with pytest.raises(CompError, match=r"blend method 'gbdt' needs lightgbm: pip install 'comp\[gbdt\]'"):
        check_method("gbdt", task)


def test_the_bundle_computes_the_stacks_features_as_comp_does():
    """predict.py's numpy design (no pandas) equals comp's on test rows: ties, NaN, an all-NaN group, categories."""
    from comp.inference import bundle_predict as bp

    rng = np.random.default_rng(0)
    n = 40
    P = rng.random((2, n, 3)).round(1)  # rounded: ties within groups
    X = np.stack([rng.normal(size=n).round(1), rng.normal(size=n), rng.integers(0, 3, n).astype(float)], axis=1)
    X[[1, 7, 8], 0] = np.nan
    groups = np.array([f"g{i % 6}" for i in range(n)])
    groups[[5, 11]] = "alone"
    X[[5, 11], 1] = np.nan  # a group whose column is all missing
    side = Side(X, ["a", "b", "site"], [2], groups, np.full(n, -1))
    want, _, _ = design(P, side)
    np.testing.assert_allclose(bp.stack_design(P, X, 2, groups), want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.isnan(bp.stack_design(P, X, 2, groups)), np.isnan(want))
    np.testing.assert_array_equal(bp.stack_design(P, X, 2, None), design(P, Side(X, [], [2], None, side.blocks))[0])


def test_a_gbdt_blend_saves_its_boosters_and_a_later_blend_of_the_name_clears_them(tmp_path):
    from comp.inference import bundle_run

    toy = Toy("regression", n=90)
    dirs = members_with_tests(tmp_path, "r1", toy)
    set_data(dirs[0], write_table(tmp_path, toy))
    result = run_ensemble(dirs, method="gbdt", name="b")
    saved = json.loads((result.model_dir / "stack.json").read_text())
    assert saved["format"] == "comp.stack/1" and saved["members"] == 2 and saved["group_column"] == "person"
    assert saved["features"] == {
        "numeric": ["hint", "noise"],
        "categorical": ["site"],
        "levels": {"site": ["arm", "head", "leg"]},
    }
    import lightgbm

    booster = lightgbm.Booster(model_file=str(result.model_dir / saved["boosters"][0]["file"]))
    assert booster.current_iteration() == saved["boosters"][0]["rounds"] >= 1
    (result.model_dir / "stack.json").unlink()  # a blend made before boosters were saved
    with pytest.raises(CompError, match="holds no saved boosters \\(stack.json\\); re-run comp ensemble --method gbdt"):
        bundle_run(result.model_dir, out=tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    run_ensemble(dirs, method="mean", name="b")
    assert not list(result.model_dir.glob("booster*.txt")) and not (result.model_dir / "stack.json").exists()


def test_pseudo_and_submit_read_a_gbdt_blend(tmp_path):
    from comp.ensembling import submit_blend
    from comp.pseudo import pseudo_label

    toy = Toy("classification", n=90)
    dirs = members_with_tests(tmp_path, "r1", toy)
    data = write_table(tmp_path, toy)
    pd.DataFrame({ID: [f"t{i:02d}" for i in range(20)], "label": "cat"}).to_csv(tmp_path / "sample.csv", index=False)
    set_data(dirs[0], {**data, "sample_submission": str(tmp_path / "sample.csv")})
    result = run_ensemble(dirs, method="gbdt", out=tmp_path / "sub.csv")
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str)
    assert sub[ID].tolist() == [f"t{i:02d}" for i in range(20)] and set(sub["label"]) <= set(toy.columns)
    assert submit_blend(result.model_dir, tmp_path / "again.csv") is not None
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), pd.read_csv(tmp_path / "sub.csv"))
    pseudo = pseudo_label(result.run_dir, out=tmp_path / "pseudo.csv", threshold=0.01)
    assert pseudo.rows == 20


def test_no_metadata_stacks_the_predictions_only(tmp_path):
    toy = Toy("classification", n=150)
    dirs = members_with_tests(tmp_path, "r1", toy)
    set_data(dirs[0], write_table(tmp_path, toy))
    with_meta = run_ensemble(dirs, method="gbdt", name="meta")
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "gbdt", "--name", "bare", "--no-metadata"])
    assert res.exit_code == 0, res.output
    bare = pd.read_csv(tmp_path / "bare" / "models" / "bare" / "oof.csv")[toy.columns].to_numpy()
    meta = pd.read_csv(with_meta.model_dir / "oof.csv")[toy.columns].to_numpy()
    assert not np.allclose(bare, meta)
    plain = run_ensemble(dirs, method="gbdt", name="plain", metadata=False)
    np.testing.assert_allclose(pd.read_csv(plain.model_dir / "oof.csv")[toy.columns].to_numpy(), bare)


# ---------------------------------------------------------------- --gbdt-param


@pytest.mark.parametrize(
    "items, message",
    [
        (["num_leaves"], "'num_leaves' is not KEY=VALUE"),
        (["num_leave=4"], "not a parameter it sets; choose from .* \\(did you mean 'num_leaves'\\?\\)"),
        (["num_leaves=1"], "num_leaves=1: num_leaves must be an integer >= 2"),
        (["num_leaves=2.5"], "num_leaves must be an integer >= 2"),
        (["learning_rate=inf"], "learning_rate must be a number > 0"),
        (["bagging_fraction=1.5"], "bagging_fraction must be a number in \\(0, 1\\]"),
        (["extra_trees=maybe"], "extra_trees must be true or false"),
        (["objective=binary"], "objective: not a parameter it sets"),
    ],
)
def test_gbdt_params_are_validated_with_the_fix(items, message):
    from comp.ensembling._gbdt import parse_params

    with pytest.raises(CompError, match=message):
        parse_params(items)


def test_gbdt_params_reach_the_boosters_and_are_recorded(tmp_path):
    from comp.ensembling._gbdt import parse_params

    assert parse_params(["max_depth=-1", "extra_trees=TRUE", "lambda_l1=0.5"]) == {
        "max_depth": -1,
        "extra_trees": True,
        "lambda_l1": 0.5,
    }
    toy = Toy("classification", n=90)
    dirs = members_with_tests(tmp_path, "r1", toy)
    set_data(dirs[0], write_table(tmp_path, toy))
    default = run_ensemble(dirs, method="gbdt", name="default")
    args = ["ensemble", *map(str, dirs), "--method", "gbdt", "--name", "tuned"]
    res = CliRunner().invoke(main, [*args, "--gbdt-param", "num_leaves=2", "--gbdt-param", "learning_rate=0.3"])
    assert res.exit_code == 0, res.output
    tuned = default.model_dir.parent.parent.parent / "tuned" / "models" / "tuned"
    assert json.loads((tuned / "metrics.json").read_text())["gbdt_params"] == {"num_leaves": 2, "learning_rate": 0.3}
    stack = json.loads((tuned / "stack.json").read_text())
    assert stack["params"]["num_leaves"] == 2 and stack["params"]["lambda_l2"] == 1.0  # the rest: the defaults
    assert "[num_leaves: 2]" in (tuned / stack["boosters"][0]["file"]).read_text()
    a, b = (pd.read_csv(d / "test.csv").drop(columns=[ID]).to_numpy() for d in (default.model_dir, tuned))
    assert not np.allclose(a, b)
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "mean", "--gbdt-param", "num_leaves=2"])
    assert res.exit_code == 2 and "--gbdt-param sets the LightGBM parameters of --method gbdt" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "blend-mean").exists()
