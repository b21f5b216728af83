"""Results, configs and run folders show themselves: a readable repr, an HTML view, tables as DataFrames."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from comp.config import load_config
from comp.ensembling import run_ensemble
from comp.run import RunDir
from comp.training._results import FoldResult, ModelResult, TrainResult
from comp.tuning._outputs import TuneResult
from tests.conftest import task_config, tiny_config, write_competition, write_config, write_task_competition


def test_train_result_table_is_a_frame_and_renders(tmp_path):
    res = TrainResult(
        RunDir(tmp_path),
        "accuracy",
        {"eff": ModelResult("eff", {0: FoldResult(0.5, 2, 3, 123.4), 1: FoldResult(0.75, 1, 3, 99.0)}, 0.625)},
    )
    df = res.table()
    assert isinstance(df, pd.DataFrame) and df["fold"].tolist() == ["0", "1", "CV"]
    assert df["best_epoch"].dtype == "Int64" and df["accuracy"].tolist() == [0.5, 0.75, 0.625]
    text = repr(res)
    assert text.splitlines()[0].startswith("TrainResult:") and "0.6250" in text and "nan" not in text
    assert "\n  " not in res.text().splitlines()[0]  # the header row, aligned as the CLI prints it
    html = res._repr_html_()
    assert "<table" in html and "0.6250" in html and "TrainResult" in html


def test_an_empty_table_says_so(tmp_path):
    (tmp_path / "trials.csv").write_text("number,state,value\n")
    res = TuneResult(tmp_path, 0, {}, None, None, None, None, [], "maximize")
    assert res.table().empty and res.text() == "no finished trial yet" and "no finished trial" in res._repr_html_()


def test_config_repr_html_and_yaml(tmp_path):
    cfg = load_config(tiny_config(tmp_path))
    assert load_config(yaml.safe_load(cfg.to_yaml())) == cfg
    assert repr(cfg).startswith("Config: classification, metric accuracy, 2 folds, models eff (test_efficientnet")
    assert "<pre>" in cfg._repr_html_() and "train_csv" in cfg._repr_html_()


def test_run_dir_renders_history_and_a_blend_acts_like_a_model(trained_run, tmp_path):
    run = RunDir(trained_run)
    assert "<table" in run._repr_html_() and run.table()["model"].tolist() == run.model_ids()
    hist = run.read_history(run.model_ids()[0], 0)
    assert isinstance(hist, pd.DataFrame) and len(hist) >= 1
    copy = tmp_path / "runs" / "run"
    shutil.copytree(trained_run, copy)
    res = run_ensemble([copy / "models" / m for m in run.model_ids()], method="mean", submit=False)
    blend = RunDir(res.run_dir)
    assert blend.model_ids() == [res.name] and blend.trained_ids() == []
    assert len(blend.read_oof(blend.model_ids()[0]).ids) == len(run.read_oof(run.model_ids()[0]).ids)
    assert "blend (mean)" in repr(blend)
    assert "BlendResult" in res._repr_html_() and isinstance(res.table(), pd.DataFrame)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_eda_returns_its_plots_as_figures(kind, tmp_path):
    """Every task's EDA hands its plots back as drawn matplotlib Figures, one per PNG it wrote, shown inline."""
    from matplotlib.figure import Figure

    from comp.diagnostics import run_eda

    if kind == "classification":
        root = write_competition(tmp_path / "comp")
        cfg = load_config(write_config(root, tiny_config(root)))
    else:
        root = write_task_competition(tmp_path / "comp", kind)
        cfg = load_config(write_config(root, task_config(root, kind)))
    res = run_eda(cfg, tmp_path / "eda")
    target_plot = {"classification": "class_counts", "multilabel": "labels", "regression": "targets"}[kind]
    assert target_plot in res.figures and set(res.figures) == {p.removesuffix(".png") for p in res.plots}
    for name, fig in res.figures.items():
        assert isinstance(fig, Figure) and fig.axes, name  # drawn, not cleared after saving
        assert (tmp_path / "eda" / f"{name}.png").is_file()
    html = res._repr_html_()
    assert html.count("data:image/png;base64,") == len(res.figures) and f'alt="{target_plot}"' in html


def test_read_folds_is_a_frame_of_ids_and_folds(trained_run):
    run = RunDir(trained_run)
    folds = run.read_folds()
    train = pd.read_csv(run.load_config().data.train_csv, dtype=str)
    assert list(folds.columns) == ["id", "fold"] and folds["id"].tolist() == train["id"].tolist()
    assert folds["fold"].dtype == "int64" and sorted(folds["fold"].unique()) == [0, 1]
    oof = run.read_oof("eff").frame().set_index("id")
    assert (oof.loc[folds["id"], "fold"].to_numpy() == folds["fold"].to_numpy()).all()
    by_id = run.fold_of()  # the lookup by id the stages use
    assert by_id.loc[folds["id"]].tolist() == folds["fold"].tolist()
