"""Blends of every task: members with matrix targets (multilabel 0/1, regression values) next to class names,
the methods each task allows, decisions (thresholds, cut-points) nested with the blend, and `comp ensemble` on
tiny trained members of each task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from comp.cli import main
from comp.ensembling._blend import METHODS, nested_blend, rank_mean, task_methods
from comp.ensembling._ensemble import compare_blends, run_ensemble
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import RunDir
from comp.submission._format import validate_submission
from comp.tasks import TASKS, get_task
from tests.conftest import task_config, write_config, write_task_competition

ID = "image_id"
N = 150
COLUMNS = {"classification": ["cat", "dog", "fox"], "multilabel": ["r", "g", "b"], "regression": ["red", "green"]}
PLAIN_METRIC = {"classification": "accuracy", "multilabel": "mean_auc", "regression": "rmse"}


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):  # the stackers' tiny regressions crawl when BLAS threads fight for two cores
        yield


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class Toy:
    """OOF rows of one competition of ``task``: targets, folds, and members that know the targets or not."""

    def __init__(self, task: str, seed: int = 0, n: int = N, ordinal: bool = False):
        self.task, self.n, self.rng = task, n, np.random.default_rng(seed)
        self.ids = np.array([f"{i:03d}" for i in range(n)])
        self.folds = self.rng.permutation(np.arange(n) % 3)
        self.columns = ["grade"] if ordinal else COLUMNS[task]
        k = len(self.columns)
        if task == "classification":
            self.y = self.rng.integers(0, k, n)
        elif task == "multilabel":
            self.y = (self.rng.random((n, k)) < [0.5, 0.3, 0.2]).astype(np.float64)
        elif ordinal:
            self.y = self.rng.integers(0, 4, (n, 1)).astype(np.float64)
        else:
            self.y = self.rng.normal(10.0, 3.0, (n, k))

    def informative(self, strength: float = 2.0, rows: int | None = None) -> np.ndarray:
        n, k = rows or self.n, len(self.columns)
        y = self.y if rows is None else self.y[:rows]
        if self.task == "classification":
            z = self.rng.normal(0, 1, (n, k))
            z[np.arange(n), y] += strength
            return softmax(z)
        if self.task == "multilabel":
            return sigmoid(strength * (2 * y - 1) + self.rng.normal(0, 1, (n, k)))
        return y + self.rng.normal(0, 2.0 / strength, (n, k))

    def noise(self, rows: int | None = None) -> np.ndarray:
        n, k = rows or self.n, len(self.columns)
        if self.task == "classification":
            return softmax(self.rng.normal(0, 2, (n, k)))
        if self.task == "multilabel":
            return self.rng.random((n, k))
        return self.rng.normal(10.0, 3.0, (n, k)) if self.columns != ["grade"] else self.rng.uniform(0, 3, (n, 1))

    def targets(self) -> dict[str, np.ndarray]:
        if self.task == "classification":
            return {"target": np.asarray(self.columns, dtype=object)[self.y]}
        return {f"target:{c}": self.y[:, j] for j, c in enumerate(self.columns)}


def write_members(root: Path, run: str, toy: Toy, models: dict, *, metric=None, tests=None, sample=None, y=None):
    """RUN/config.yaml (with the task), folds.csv and each model's oof.csv (+ test.csv); the model folders."""
    run_dir = root / run
    run_dir.mkdir(parents=True)
    cfg = {"task": toy.task, "metric": metric or PLAIN_METRIC[toy.task], "folds": {"n_splits": 3}}
    cfg["data"] = {"id_column": ID, "sample_submission": None if sample is None else str(sample)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    pd.DataFrame({ID: toy.ids, "fold": toy.folds}).to_csv(run_dir / "folds.csv", index=False)
    dirs = []
    for model_id, preds in models.items():
        mdir = run_dir / "models" / model_id
        mdir.mkdir(parents=True)
        head = pd.DataFrame({ID: toy.ids, "fold": toy.folds, **(y or toy.targets())})
        pd.concat([head, pd.DataFrame(preds, columns=toy.columns)], axis=1).to_csv(mdir / "oof.csv", index=False)
        if tests is not None:
            test = pd.DataFrame(tests[model_id], columns=toy.columns)
            pd.concat([pd.DataFrame({ID: tests["ids"]}), test], axis=1).to_csv(mdir / "test.csv", index=False)
        dirs.append(mdir)
    return dirs


def blend_oof(root: Path, name: str, columns: list[str]) -> np.ndarray:
    return pd.read_csv(root / name / "models" / name / "oof.csv", dtype={ID: str})[columns].to_numpy()


TASK_METHODS = [(t, m) for t in TASKS for m in TASKS[t].blend_methods]


# ---------------------------------------------------------------- methods per task


@pytest.mark.parametrize("task, method", TASK_METHODS)
def test_informative_member_dominates_noise(tmp_path, task, method):
    toy = Toy(task)
    good, bad = write_members(tmp_path, "r1", toy, {"good": toy.informative(), "noise": toy.noise()})
    result = run_ensemble([good, bad], method=method)
    metric = get_metric(result.metric, task)
    by_name = {m.name: m.cv for m in result.members}
    assert result.task == task and metric.better(result.cv, by_name["r1/noise"])
    if METHODS[method].fitted and result.weights is not None:
        assert result.weights[0] >= 0.9  # fitted weights find the informative member
        assert abs(result.cv - by_name["r1/good"]) < abs(by_name["r1/noise"] - by_name["r1/good"]) / 4


@pytest.mark.parametrize("method", ["weighted", "hill_climb"])
@pytest.mark.parametrize("task, metric, ordinal", [("multilabel", "f2", False), ("regression", "qwk", True)])
def test_weight_searches_on_a_metric_with_a_fitted_decision_find_the_informative_member(task, metric, ordinal, method):
    """The searches refit the decision once per round on their current blend and compare candidates at it."""
    toy = Toy(task, ordinal=ordinal)
    P = np.stack([toy.noise(), toy.informative(1.0), toy.noise()])
    scorer = get_metric(metric, task)
    blender = METHODS[method].fit(P, toy.y, scorer)
    assert blender.weights is not None and blender.weights[1] == max(blender.weights) and blender.weights[1] > 0.5
    assert scorer(toy.y, blender.predict(P)) >= max(scorer(toy.y, p) for p in P) - 1e-12  # in-sample, decision refitted


@pytest.mark.parametrize(
    "task, method", [(t, m) for t, m in TASK_METHODS if m in ("mean", "weighted", "hill_climb", "geometric")]
)
def test_blend_of_identical_members_is_the_member_so_label_rows_are_not_renormalised(tmp_path, task, method):
    toy = Toy(task)
    preds = toy.informative()
    a = write_members(tmp_path, "r1", toy, {"m": preds})[0]
    b = write_members(tmp_path, "r2", toy, {"m": preds})[0]
    result = run_ensemble([a, b], method=method)
    np.testing.assert_allclose(blend_oof(tmp_path, f"blend-{method}", toy.columns), preds, atol=1e-9)
    assert result.cv == pytest.approx(result.members[0].cv)
    if task == "multilabel":
        assert not np.allclose(preds.sum(1), 1.0)  # the rows stayed label probabilities, not a distribution


def test_rank_blend_scales_each_label_column_to_the_unit_interval():
    rng = np.random.default_rng(0)
    P = rng.random((2, 40, 3))
    out = rank_mean(P, get_task("multilabel").normalise)
    assert ((out > 0) & (out <= 1)).all() and not np.allclose(out.sum(1), 1.0)
    one = rank_mean(P[:1], get_task("multilabel").normalise)
    for j in range(3):  # one member: each column keeps its order, as ranks over the rows / n
        np.testing.assert_allclose(np.sort(one[:, j]), np.arange(1, 41) / 40)
        assert (np.argsort(one[:, j]) == np.argsort(P[0, :, j])).all()
    # classification rows are still scaled to sum to one, exactly as the raw ranks were
    Q = softmax(rng.normal(size=(80, 4))).reshape(2, 40, 4)
    raw = np.mean([pd.DataFrame(q).rank(axis=0).to_numpy() for q in Q], axis=0)
    np.testing.assert_allclose(rank_mean(Q), raw / raw.sum(1, keepdims=True), atol=1e-12)


@pytest.mark.parametrize(
    "task, method", [("regression", "rank"), ("regression", "geometric"), ("multilabel", "geometric")]
)
def test_a_method_that_does_not_fit_the_task_is_refused_before_anything_is_written(tmp_path, task, method):
    toy = Toy(task)
    dirs = write_members(tmp_path, "r1", toy, {"a": toy.informative(), "b": toy.noise()})
    fits = ", ".join(task_methods(get_task(task)))
    with pytest.raises(
        CompError, match=f"blend method '{method}' does not fit task {task}; methods that fit {task}: {fits}$"
    ):
        run_ensemble(dirs, method=method)
    with pytest.raises(CompError, match=f"'{method}' does not fit task {task}"):
        compare_blends(dirs, methods=["mean", method])
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", method])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "does not fit" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_bias_is_refused_outside_classification(tmp_path, task):
    toy = Toy(task)
    dirs = write_members(tmp_path, "r1", toy, {"a": toy.informative()})
    with pytest.raises(CompError, match=f"--bias fits per-class log-probability offsets.*task {task}"):
        run_ensemble(dirs, method="mean", bias=True)
    res = CliRunner().invoke(main, ["ensemble", *map(str, dirs), "--method", "all", "--bias"])
    assert res.exit_code == 2 and "--bias" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


@pytest.mark.parametrize("task", list(TASKS))
def test_method_all_runs_the_methods_of_the_task(tmp_path, task):
    toy = Toy(task, n=60)
    dirs = write_members(tmp_path, "r1", toy, {"a": toy.informative(), "b": toy.informative(1.0)})
    compared = compare_blends(dirs)
    assert [r.method for r in compared.results] == task_methods(get_task(task)) == list(TASKS[task].blend_methods)
    assert all(r.task == task for r in compared.results)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("name", list(METHODS))
def test_weighted_mean_flag_tells_the_truth_for_every_task(task, name):
    if name not in TASKS[task].blend_methods:
        pytest.skip(f"{name} does not blend {task}")
    toy = Toy(task, n=60)
    P = np.stack([toy.informative(), toy.informative(1.0), toy.noise()])
    blender = METHODS[name].fit(P, toy.y, get_metric(PLAIN_METRIC[task], task))
    other = Toy(task, seed=5, n=60)
    Q = np.stack([other.noise(), other.informative(), other.noise()])  # rows the blend was not fitted on
    is_weighted_mean = blender.weights is not None and np.allclose(
        blender.predict(Q), np.tensordot(blender.weights, Q, 1)
    )
    assert METHODS[name].weighted_mean == is_weighted_mean


# ---------------------------------------------------------------- stacking per task


def test_label_stacking_learns_which_member_to_trust_per_label():
    """Member 0 knows labels 0-1, member 1 knows label 2: per-label trust beats one weight per member."""
    from comp.ensembling._blend import nested_oof

    toy = Toy("multilabel", n=900)
    Y = toy.y

    def member(knows):
        z = toy.rng.normal(0, 1.5, Y.shape)
        z[:, knows] += 3.0 * (2 * Y[:, knows] - 1)
        return sigmoid(z)

    P = np.stack([member([0, 1]), member([2])])
    auc = get_metric("mean_auc", "multilabel")
    ll = get_metric("log_loss", "multilabel")
    honest = {m: nested_oof(METHODS[m], P, Y, toy.folds, ll, False) for m in ("weighted", "stacking")}
    assert ll(Y, honest["stacking"]) < ll(Y, honest["weighted"]) - 0.05
    assert auc(Y, honest["stacking"]) > max(auc(Y, p) for p in P)


def test_ridge_stacking_undoes_a_members_scale_and_shift():
    from comp.ensembling._blend import nested_oof

    toy = Toy("regression", n=300)
    P = np.stack([2.0 * toy.y + 3.0 + toy.rng.normal(0, 0.5, toy.y.shape), toy.noise()])
    rmse = get_metric("rmse", "regression")
    stacked = rmse(toy.y, nested_oof(METHODS["stacking"], P, toy.y, toy.folds, rmse, False))
    assert stacked < 0.5 < rmse(toy.y, nested_oof(METHODS["hill_climb"], P, toy.y, toy.folds, rmse, False))


# ---------------------------------------------------------------- decisions nested with the blend


CASES = [  # task, metric with a fitted decision (or not), ordinal targets
    ("classification", "accuracy", False),
    ("multilabel", "f2", False),
    ("multilabel", "micro_f1", False),
    ("regression", "qwk", True),
    ("regression", "rmse", False),
]


@pytest.mark.parametrize("task, metric, ordinal", CASES)
@pytest.mark.parametrize("method", ["mean", "hill_climb", "stacking"])
def test_honest_blend_never_uses_a_rows_own_fold(task, metric, ordinal, method):
    """Changing one fold's targets changes neither that fold's blended rows nor its decision."""
    toy = Toy(task, n=90, ordinal=ordinal)
    P = np.stack([toy.informative(), toy.informative(1.0), toy.noise()])
    scorer = get_metric(metric, task)
    base = nested_blend(METHODS[method], P, toy.y, toy.folds, scorer, False)
    assert sorted(base.decisions) == ([0, 1, 2] if scorer.fitted else [])
    for k in range(3):
        y = toy.y.copy()
        rows = toy.folds == k
        if task == "classification":
            y[rows] = (y[rows] + 1) % len(toy.columns)
        elif task == "multilabel":
            y[rows] = 1 - y[rows]
        else:
            y[rows] = y[rows][::-1]  # the same grades on other rows
        changed = nested_blend(METHODS[method], P, y, toy.folds, scorer, False)
        np.testing.assert_allclose(changed.pred[rows], base.pred[rows], atol=1e-9)
        assert changed.decisions.get(k) == base.decisions.get(k)


@pytest.mark.parametrize("task, metric, ordinal", [c for c in CASES if c[1] in ("f2", "qwk")])
def test_a_blend_records_its_decision_fitted_on_its_honest_oof_and_submits_with_it(tmp_path, task, metric, ordinal):
    toy = Toy(task, ordinal=ordinal)
    test_ids = np.array([f"t{i:02d}" for i in range(12)])
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({ID: test_ids[::-1], "answer": "r" if task == "multilabel" else 0}).to_csv(sample, index=False)
    tests = {"ids": test_ids, "a": toy.informative(rows=12), "b": toy.noise(rows=12)}
    dirs = write_members(
        tmp_path, "r1", toy, {"a": toy.informative(), "b": toy.noise()}, metric=metric, tests=tests, sample=sample
    )
    result = run_ensemble(dirs, method="hill_climb", out=tmp_path / "sub.csv")
    folder = tmp_path / "blend-hill_climb" / "models" / "blend-hill_climb"
    saved = json.loads((folder / "metrics.json").read_text())
    oof = RunDir(tmp_path / "blend-hill_climb").read_oof("blend-hill_climb")
    scorer = get_metric(metric, task)
    assert saved["task"] == task and saved["decision"] == scorer.decide(oof.y, oof.probs) == result.decision
    assert saved["cv"] == pytest.approx(result.cv) and saved["cv_in_sample"] == pytest.approx(result.cv_in_sample)
    assert len(saved["folds"]) == 3 and oof.matrix_targets
    np.testing.assert_allclose(oof.y, toy.y)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    validate_submission(sub, sample, toy.columns, ID, task=task)
    test = RunDir(tmp_path / "blend-hill_climb").read_test("blend-hill_climb").reorder(sub[ID])
    if task == "multilabel":  # tags at the recorded thresholds
        on = test.probs >= np.asarray(saved["decision"]["thresholds"])
        assert list(sub["answer"]) == [" ".join(np.asarray(toy.columns)[row]) for row in on]
    else:  # grades at the recorded cut-points
        grades = np.asarray(saved["decision"]["grades"])[
            np.searchsorted(saved["decision"]["cutpoints"], test.probs[:, 0])
        ]
        assert sub["answer"].astype(int).tolist() == grades.astype(int).tolist()
    # the saved blend submits again with the same decision
    from comp.ensembling import submit_blend

    again = submit_blend(folder, tmp_path / "again.csv")
    assert again is not None and pd.read_csv(again, dtype=str, keep_default_na=False).equals(sub)


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_per_column_scores_and_a_blend_of_a_blend(tmp_path, task):
    toy = Toy(task)
    a, b = write_members(tmp_path, "r1", toy, {"a": toy.informative(), "b": toy.informative(1.0)})
    result = run_ensemble([a, b], method="weighted")
    saved = json.loads((result.model_dir / "metrics.json").read_text())
    assert set(saved["per_column"]) == set(toy.columns) and "decision" not in saved
    again = run_ensemble([result.model_dir, a], method="mean", name="again")
    assert again.members[0].cv == pytest.approx(result.cv) and again.task == task


@pytest.mark.parametrize(
    "change, message",
    [
        ("task", "is a regression model but model r1/a is multilabel"),
        ("columns", "has labels"),
        ("targets", "puts id '000' at target r="),
        ("folds", "puts id '000' in fold"),
    ],
)
def test_members_of_other_tasks_columns_or_targets_are_refused(tmp_path, change, message):
    toy = Toy("multilabel")
    a = write_members(tmp_path, "r1", toy, {"a": toy.informative()})[0]
    b = write_members(tmp_path, "r2", toy, {"b": toy.informative()})[0]
    oof = pd.read_csv(b / "oof.csv", dtype=str)
    if change == "task":
        cfg = yaml.safe_load((tmp_path / "r2/config.yaml").read_text())
        (tmp_path / "r2/config.yaml").write_text(yaml.safe_dump({**cfg, "task": "regression", "metric": "rmse"}))
    elif change == "columns":
        oof = oof.rename(columns={"b": "x", "target:b": "target:x"})
    elif change == "targets":
        oof.loc[0, "target:r"] = str(1 - float(oof.loc[0, "target:r"]))
    else:
        oof["fold"] = (oof["fold"].astype(int) + 1) % 3
    oof.to_csv(b / "oof.csv", index=False)
    with pytest.raises(CompError, match=message):
        run_ensemble([a, b], method="mean")


# ---------------------------------------------------------------- comp ensemble on tiny trained members


E2E = [("multilabel", {"metric": "f2"}), ("regression-multi", {}), ("ordinal", {})]


@pytest.mark.parametrize("kind, over", E2E, ids=[k for k, _ in E2E])
def test_comp_ensemble_on_two_trained_members_of_each_task(tmp_path, monkeypatch, kind, over):
    """Train two tiny members, give each a test.csv (in the task's units: the prediction stage is tested on its
    own), then `comp ensemble`: the blend's honest CV never uses a row's own fold, its decision is recorded,
    and its submission is valid for the task."""
    from comp.config import load_config
    from comp.training import train_folds

    root = write_task_competition(tmp_path / kind, kind)
    models = [{"name": "test_efficientnet", "id": m, "image_size": 32} for m in ("a", "b")]
    cfg = load_config(write_config(root, task_config(root, kind, models=models, **over)))
    train_folds(cfg, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    rng = np.random.default_rng(0)
    for mid in ("a", "b"):
        oof = run.read_oof(mid)
        lo, hi = oof.probs.min(0), oof.probs.max(0)
        values = lo + rng.random((len(sample), len(oof.classes))) * (hi - lo)  # within the member's own range
        pd.concat([sample[["id"]], pd.DataFrame(values, columns=oof.classes)], axis=1).to_csv(
            run.test_pred(mid), index=False
        )
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["ensemble", str(run.model_dir("a")), str(run.model_dir("b")), "--method", "all"])
    assert res.exit_code == 0, res.output
    compared = {p.name for p in tmp_path.iterdir() if p.name.startswith("blend-")}
    assert compared == {f"blend-{m}" for m in TASKS[cfg.task].blend_methods}
    task = get_task(cfg.task)
    scorer = get_metric(cfg.metric, cfg.task)
    for method in task.blend_methods:
        blend = RunDir(tmp_path / f"blend-{method}")
        saved = json.loads(blend.metrics(f"blend-{method}").read_text())
        oof = blend.read_oof(f"blend-{method}")
        assert saved["task"] == cfg.task and saved["metric"] == cfg.metric and "cv_in_sample" in saved
        assert ("decision" in saved) == scorer.fitted
        if scorer.fitted:
            assert saved["decision"] == scorer.decide(oof.y, oof.probs)
        if method == "hill_climb":  # one fold's targets changed: its honest rows and decision stay the same
            members = [run.read_oof(m).reorder(oof.ids) for m in ("a", "b")]
            P = np.stack([m.probs[:, [m.classes.index(c) for c in oof.classes]] for m in members])
            base = nested_blend(METHODS[method], P, oof.y, oof.folds, scorer, False)
            np.testing.assert_allclose(base.pred, oof.probs, atol=1e-6)
            y = oof.y.copy()
            y[oof.folds == 0] = y[oof.folds == 0][::-1]
            moved = nested_blend(METHODS[method], P, y, oof.folds, scorer, False)
            np.testing.assert_allclose(moved.pred[oof.folds == 0], base.pred[oof.folds == 0], atol=1e-9)
            assert moved.decisions.get(0) == base.decisions.get(0)
    best = next(p for p in (tmp_path / "submissions").iterdir())
    sub = pd.read_csv(best, dtype=str, keep_default_na=False)
    validate_submission(sub, root / "sample_submission.csv", run.read_oof("a").classes, "id", task=cfg.task)
    assert list(sub["id"]) == list(sample["id"])
