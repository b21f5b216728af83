"""Every task through the config, the folds and training: multi-label (tags and wide columns), regression (one and
several targets) and ordinal targets, next to classification; OOF files, metrics.json and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from comp.config import load_config
from comp.config._records import TASK_DEFAULTS
from comp.errors import CompError, ConfigError
from comp.metrics import get_metric
from comp.run import RunDir, load_checkpoint
from comp.tasks import TASKS
from comp.training import train_folds
from comp.training._losses import TASK_LOSSES
from tests.conftest import TASK_KINDS, check_no_leak, task_config, write_config, write_task_competition


def test_config_defaults_follow_the_task_registry():
    for name, (metric, loss) in TASK_DEFAULTS.items():
        assert TASKS[name].default_metric == metric and TASKS[name].default_loss == loss
        assert loss in TASK_LOSSES[name]
    assert set(TASK_DEFAULTS) == set(TASKS) == set(TASK_LOSSES)


@pytest.mark.parametrize(
    "task, metric, loss",
    [("classification", "macro_f1", "ce"), ("multilabel", "mean_auc", "bce"), ("regression", "rmse", "mse")],
)
def test_a_task_without_metric_or_loss_takes_its_defaults(task, metric, loss):
    cfg = load_config({"task": task})
    assert (cfg.metric, cfg.loss.name) == (metric, loss)
    # --set task=... applies before the defaults are filled in
    cfg = load_config({}, overrides=[f"task={task}"])
    assert (cfg.metric, cfg.loss.name) == (metric, loss)


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"task": "regression", "data": {"classes": ["a", "b"]}}, "data.classes"),
        ({"task": "multilabel", "loss": {"class_weights": "balanced"}}, "loss.pos_weight"),
        ({"task": "regression", "loss": {"pos_weight": "balanced"}}, "loss.pos_weight"),
        ({"task": "regression", "loss": {"label_smoothing": 0.1}}, "label_smoothing"),
        ({"task": "multilabel", "data": {"labels": {"attributes": {}}}}, "data.labels"),
        ({"data": {"label_columns": ["a", "a"]}}, "data.label_columns"),
        ({"task": "multilabel", "data": {"label_columns": ["a", "b"], "classes": ["a", "c"]}}, "data.classes"),
        ({"task": "banana"}, "task"),
    ],
)
def test_config_rules_between_task_keys(raw, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(raw)


@pytest.mark.parametrize(
    "task, metric, needle",
    [
        ("classification", "rmse", "does not fit task classification"),
        ("regression", "macro_f1", "does not fit task regression"),
        ("multilabel", "mean_aux", "did you mean 'mean_auc'"),
    ],
)
def test_a_metric_of_another_task_is_refused_naming_those_that_fit(task, metric, needle):
    with pytest.raises(ConfigError, match=needle):
        get_metric(metric, task)


def _train(tmp_path, kind, n_groups=16, **overrides):
    root = write_task_competition(tmp_path / kind, kind, n_groups=n_groups)
    cfg = load_config(write_config(root, task_config(root, kind, **overrides)))
    run = tmp_path / f"run-{kind}"
    return cfg, train_folds(cfg, run, progress=False), RunDir(run)


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_every_task_trains_and_writes_its_oof_metrics_and_checkpoint(tmp_path, kind):
    cfg, result, run = _train(tmp_path, kind, train__epochs=2)
    oof = run.read_oof("eff")
    frame = pd.read_csv(run.oof("eff"), dtype=str)
    metrics = json.loads(run.metrics("eff").read_text())
    meta = load_checkpoint(run.checkpoint("eff", 0)).meta
    assert meta.task == cfg.task and metrics["task"] == cfg.task and metrics["metric"] == cfg.metric
    assert np.isfinite(result.models["eff"].cv) and np.isfinite(metrics["cv"])
    assert oof.matrix_targets and list(oof.probs.shape) == [48, len(oof.classes)]
    assert [c for c in frame.columns if c.startswith("target:")] == [f"target:{c}" for c in oof.classes]
    if cfg.task == "multilabel":
        assert oof.classes == ["b", "g", "r"] or oof.classes == ["r", "g", "b"]
        assert ((oof.probs >= 0) & (oof.probs <= 1)).all() and set(np.unique(oof.targets)) <= {0.0, 1.0}
        assert meta.output == {"activation": "sigmoid", "shift": None, "scale": None}
        assert set(metrics["per_column"]) == set(oof.classes)
    else:
        # regression predicts in the target's units, through a scaling fitted on the fold's training part
        assert meta.output["activation"] == "identity" and meta.output["shift"] is not None
        train = pd.read_csv(run.root.parent / kind / "train.csv")
        for j, col in enumerate(oof.classes):
            np.testing.assert_allclose(
                oof.targets[:, j], train.set_index("id").loc[oof.ids, col].to_numpy(float), rtol=1e-6
            )
    if kind == "ordinal":
        # QWK scores grades at cut-points fitted on OOF: honest (nested) CV beside the in-sample one
        assert "decision" in metrics and len(metrics["decision"]["cutpoints"]) == 3
        assert metrics["cv_in_sample"] >= metrics["cv"] - 1e-9


def test_multilabel_learns_and_folds_keep_groups(tmp_path):
    cfg, result, run = _train(tmp_path, "multilabel", 30, train__epochs=5, train__lr=0.02, folds__n_splits=3)
    folds = run.read_folds()
    table = pd.read_csv(run.root.parent / "multilabel" / "train.csv", dtype=str).set_index("id")
    check_no_leak(folds.to_numpy(), table.loc[folds.index, "person"].to_numpy())
    assert result.models["eff"].cv > 0.8  # mean AUC: a bright channel is easy to see


def test_regression_learns_something(tmp_path):
    # a GroupNorm network: with a few dozen steps, BatchNorm's running statistics are still far from the batches'
    models = [{"name": "test_efficientnet_gn", "id": "eff", "image_size": 32}]
    cfg, result, run = _train(tmp_path, "regression", 30, train__epochs=5, train__lr=0.01, metric="r2", models=models)
    assert result.models["eff"].cv > 0.0  # better than predicting the mean


def test_a_regression_target_named_target_trains_and_reads_back(tmp_path):
    # "target" is the commonest name of a regression column; comp writes the truth as target:target beside it
    root = write_task_competition(tmp_path / "regression", "regression", n_groups=8)
    df = pd.read_csv(root / "train.csv", dtype=str).rename(columns={"score": "target"})
    df.to_csv(root / "train.csv", index=False)
    raw = task_config(root, "regression", train__epochs=1)
    raw["data"]["label_column"] = "target"
    cfg = load_config(write_config(root, raw))
    train_folds(cfg, tmp_path / "run", progress=False)
    oof = RunDir(tmp_path / "run").read_oof("eff")
    assert oof.classes == ["target"] and oof.matrix_targets
    assert np.allclose(oof.targets[:, 0], df.set_index("id").loc[oof.ids, "target"].astype(float))


@pytest.mark.parametrize(
    "kind, rows, over, needle",
    [
        ("multilabel", {"tags": "r x"}, {"data__classes": ["r", "g", "b"]}, "tag 'x'"),
        ("multilabel-wide", {"g": "2"}, {}, "holds 0 or 1"),
        ("regression", {"score": "abc"}, {}, "not a number"),
        ("regression", {"score": ""}, {}, "is empty"),
        ("regression-multi", {"green": "nan"}, {}, "target column 'green'"),
    ],
)
def test_bad_targets_name_the_line_and_write_nothing(tmp_path, kind, rows, over, needle):
    root = write_task_competition(tmp_path / kind, kind)
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    for col, value in rows.items():
        train.loc[4, col] = value
    train.to_csv(root / "train.csv", index=False)
    cfg = load_config(write_config(root, task_config(root, kind, **over)))
    with pytest.raises(CompError, match=f"line 6.*{needle}|{needle}.*line 6|train.csv line 6"):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_tags_outside_a_wide_sample_are_refused(tmp_path):
    """Without data.classes, a wide sample submission names the labels: a tag not among them is a typo."""
    root = write_task_competition(tmp_path / "ml", "multilabel")
    pd.DataFrame({"id": ["t00"], "r": [0.5], "g": [0.5], "b": [0.5]}).to_csv(
        root / "sample_submission.csv", index=False
    )
    train = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    train.loc[2, "tags"] = "r gg"
    train.to_csv(root / "train.csv", index=False)
    cfg = load_config(write_config(root, task_config(root, "multilabel")))
    with pytest.raises(CompError, match="line 4: tag 'gg'.*sample_submission.csv"):
        train_folds(cfg, tmp_path / "run", progress=False)


def test_single_label_multilabel_and_unfit_metric_columns_are_refused(tmp_path):
    root = write_task_competition(tmp_path / "ml", "multilabel-wide")
    cfg = load_config(write_config(root, task_config(root, "multilabel-wide", data__label_columns=["r"])))
    with pytest.raises(CompError, match="two or more labels"):
        train_folds(cfg, tmp_path / "run", progress=False)
    root = write_task_competition(tmp_path / "reg", "regression-multi")
    cfg = load_config(write_config(root, task_config(root, "regression-multi", metric="qwk")))
    with pytest.raises(CompError, match="scores exactly 1 targets"):
        train_folds(cfg, tmp_path / "run2", progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_mixup_and_cutmix_mix_soft_targets_and_resume_is_exact(tmp_path, kind, monkeypatch):
    """CutMix mixes multi-hot and numeric targets linearly; a run killed after an epoch resumes to the same weights."""
    import torch

    from comp.training._fold import FoldTrainer

    over = {"train__epochs": 2, "augment__mixup": {"cutmix_alpha": 1.0, "mixup_alpha": 0.4}, "train__ema": True}
    root = write_task_competition(tmp_path / kind, kind)
    cfg = load_config(write_config(root, task_config(root, kind, **over)))
    train_folds(cfg, tmp_path / "whole", progress=False, folds=[0])

    calls = {"n": 0}
    real = FoldTrainer.save_state

    def die_after_first(self):
        real(self)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(FoldTrainer, "save_state", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_folds(cfg, tmp_path / "resumed", progress=False, folds=[0])
    monkeypatch.setattr(FoldTrainer, "save_state", real)
    train_folds(cfg, tmp_path / "resumed", progress=False, folds=[0], resume=True)
    a = load_checkpoint(RunDir(tmp_path / "whole").checkpoint("eff", 0)).state_dict
    b = load_checkpoint(RunDir(tmp_path / "resumed").checkpoint("eff", 0)).state_dict
    assert calls["n"] == 1 and all(torch.equal(a[k], b[k]) for k in a)


def test_mixer_mixes_float_targets_with_the_images_weights():
    import torch

    from comp.config import MixupConfig
    from comp.data._augment import BatchMixer

    torch.manual_seed(0)
    mixer = BatchMixer(MixupConfig(mixup_alpha=1.0, prob=1.0, switch_prob=0.0), 3, 0.0)
    x = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    mixed_x, mixed_y = mixer(x.clone(), y, epoch=0)
    lam = 1.0 - float(mixed_x[0].mean())  # row 0 = lam * zeros + (1 - lam) * ones
    torch.testing.assert_close(mixed_y[0], lam * y[0] + (1 - lam) * y[1])
    smoothing = BatchMixer(MixupConfig(), 3, 0.2)
    torch.testing.assert_close(smoothing(x, y, 0)[1], y * 0.8 + 0.1)


@pytest.mark.parametrize("kind", ["multilabel", "regression-multi"])
def test_eda_and_explain_speak_the_task(tmp_path, kind):
    from comp.diagnostics import explain_run, run_eda

    cfg, _, run = _train(tmp_path, kind)
    eda = run_eda(cfg, tmp_path / "eda")
    text = eda.table()
    if cfg.task == "multilabel":
        assert "labels per image" in text and "rarest label" in text
        co = pd.read_csv(tmp_path / "eda" / "label_cooccurrence.csv")
        assert list(co.columns) == ["label", *co["label"]] and "labels.png" in eda.plots
    else:
        assert "target red:" in text and "std within groups" in text and "targets.png" in eda.plots
    report = explain_run(run.root, top=3)
    assert len(report.mislabeled) == 48 and report.cams
    assert (report.out / "gradcam.png").is_file() and (report.out / "mistakes.png").is_file()
    if cfg.task == "multilabel":
        assert {"auc", "ap", "threshold", "f1"} <= set(report.scores.columns) and (report.out / "roc.png").is_file()
        assert report.mislabeled["loss"].is_monotonic_decreasing
    else:
        assert list(report.scores["target"]) == ["red", "green"] and (report.out / "residuals.png").is_file()
        assert report.confusion is None
