"""Iterating from a notebook: exist_ok on train_folds, messages that name the caller's spelling, one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from comp.cli import main
from comp.config import load_config
from comp.errors import CLI_NAMES, CompError, arg
from comp.run import RunDir
from comp.training import train_folds
from tests.conftest import tiny_config, write_config


def test_exist_ok_resume_overwrite_error(comp_dir, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir)))
    train_folds(cfg, run, folds=[0], progress=False)
    (run / "notes.txt").write_text("mine")
    changed = cfg.replace(**{"train.lr": 0.005})
    with pytest.raises(CompError, match="exist_ok='overwrite' to start it again") as err:
        train_folds(changed, run, folds=[0], progress=False)
    assert "--" not in str(err.value)  # the API's spelling, not the CLI's
    with pytest.raises(CompError, match="already exists.*exist_ok='resume'"):
        train_folds(cfg, run, folds=[0], exist_ok="error", progress=False)
    with pytest.raises(CompError, match="exist_ok must be one of resume, overwrite, error.*did you mean 'overwrite'"):
        train_folds(cfg, run, exist_ok="overwrit", progress=False)
    before = RunDir(run).checkpoint("eff", 0).stat().st_mtime_ns
    res = train_folds(changed, run, folds=[0], exist_ok="overwrite", progress=False)
    assert res.models["eff"].folds[0].skipped is False
    assert RunDir(run).checkpoint("eff", 0).stat().st_mtime_ns != before
    assert RunDir(run).load_config().train.lr == 0.005 and (run / "notes.txt").read_text() == "mine"
    res = train_folds(changed, run, folds=[0], progress=False)  # the default continues: fold 0 is done
    assert res.models["eff"].folds[0].skipped


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refused_by_a_later_check_keeps_the_old_run(comp_dir, tmp_path):
    """exist_ok='overwrite' deletes the old run only after every check passed: a config refused in the fold
    plan or while reading its teacher leaves every old file byte for byte."""
    import shutil

    run = tmp_path / "run"
    cfg = load_config(write_config(comp_dir, tiny_config(comp_dir)))
    train_folds(cfg, run, progress=False)
    teacher = tmp_path / "teacher"
    shutil.copytree(run, teacher)
    before = _contents(run)
    too_many = cfg.replace(**{"folds.n_splits": 20})  # 12 groups: refused when the folds are planned
    with pytest.raises(CompError, match="only 12 groups"):
        train_folds(too_many, run, exist_ok="overwrite", progress=False)
    assert _contents(run) == before
    other_folds = cfg.replace(**{"folds.seed": 1, "loss.distill.teacher": str(teacher)})
    with pytest.raises(CompError, match="teacher fold .* but in student fold"):
        train_folds(other_folds, run, exist_ok="overwrite", progress=False)
    assert _contents(run) == before
    missing = cfg.replace(**{"loss.distill.teacher": str(tmp_path / "no-such-run")})
    with pytest.raises(CompError, match="no-such-run"):
        train_folds(missing, run, exist_ok="overwrite", progress=False)
    assert _contents(run) == before  # (a config that passes does start it again: the test above)


def test_the_cli_names_its_flags(comp_dir, tmp_path):
    run = tmp_path / "run"
    train_folds(load_config(write_config(comp_dir, tiny_config(comp_dir))), run, folds=[0], progress=False)
    changed = write_config(comp_dir, tiny_config(comp_dir, train__lr=0.005), "changed.yaml")
    base = ["train-folds", "--config", str(changed), "--run-dir", str(run), "--folds", "0", "--quiet"]
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 2 and "--exist-ok overwrite" in res.output and "exist_ok=" not in res.output
    res = CliRunner().invoke(main, [*base, "--exist-ok", "overwrite"])
    assert res.exit_code == 0, res.output
    assert RunDir(run).load_config().train.lr == 0.005
    assert arg("resume=True", "--resume") == "resume=True"  # the CLI's naming ended with its command


def test_arg_follows_the_caller():
    assert arg("resume=True", "--resume") == "resume=True"
    token = CLI_NAMES.set(True)
    try:
        assert arg("resume=True", "--resume") == "--resume"
    finally:
        CLI_NAMES.reset(token)


def test_comp_error_renders_as_one_line_in_ipython():
    err = CompError("data.train_csv: train.csv not found; fix the path")
    assert err._render_traceback_() == ["CompError: data.train_csv: train.csv not found; fix the path"]
