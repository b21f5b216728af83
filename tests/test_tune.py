"""comp tune: space validation, resume, pruning, failed trials, best config, shared storages."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from conftest import tiny_config, write_config

from comp.cli import main
from comp.config import load_config
from comp.errors import CompError
from comp.training._trainer import train_folds
from comp.tuning._tune import parse_space, tune

FAST = {"train__max_steps_per_epoch": 2}


def _cfg(comp_dir, space, **kw):
    cfg = tiny_config(comp_dir, **{**FAST, **kw})
    cfg["tune"] = {"space": space}
    return write_config(comp_dir, cfg)


LR = {"train.lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}}


@pytest.mark.parametrize(
    "space, needle",
    [
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, "'lrr' is not a key of train (did you mean 'lr'?)"),
        ({"train.lr": {"type": "float", "low": 1, "high": 0.1}}, "low (1) is above high (0.1)"),
        ({"train.lr": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
        ({"train.lr": {"type": "uniform", "low": 0, "high": 1}}, "type must be one of float, int, categorical"),
        ({"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
        ({"models.3.lr": {"type": "float", "low": 0.1, "high": 1}}, "index below 1"),
        ({"train": {"type": "float", "low": 0.1, "high": 1}}, "is a section"),
        ({"train.optimizer": {"type": "categorical", "choices": ["adamw", "lion"]}}, "must be one of adamw, sgd"),
    ],
)
def test_bad_spaces_rejected_before_any_trial(comp_dir, tmp_path, space, needle):
    res = CliRunner().invoke(main, ["tune", "--config", str(_cfg(comp_dir, space)), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "t" / "trials").exists()


def test_model_keys_searchable(comp_dir):
    cfg = load_config(_cfg(comp_dir, {"models.0.image_size": {"type": "int", "low": 24, "high": 40, "step": 8},
                                      "models.0.name": {"type": "categorical", "choices": ["test_efficientnet", "test_resnet"]}}))
    assert set(parse_space(cfg)) == {"models.0.image_size", "models.0.name"}


def test_resume_keeps_finished_trials_and_best_config_trains(comp_dir, tmp_path):
    cfg = load_config(_cfg(comp_dir, {**LR, "loss.label_smoothing": {"type": "float", "low": 0.0, "high": 0.2}}))
    out = tmp_path / "t"
    r1 = tune(cfg, out, n_trials=2, pruner="none")
    first = pd.read_csv(out / "trials.csv")
    assert r1.n_trials == 2 and (out / "study.db").is_file()
    r2 = tune(cfg, out, n_trials=3, pruner="none")
    after = pd.read_csv(out / "trials.csv")
    assert r2.n_trials == 3 and list(after["number"]) == [0, 1, 2]
    pd.testing.assert_frame_equal(first[["number", "value", "train.lr"]], after.head(2)[["number", "value", "train.lr"]])
    assert (out / "history.png").is_file() and (out / "importances.png").is_file()
    best = load_config(out / "best_config.yaml")
    assert best.train.lr == pytest.approx(r2.best_params["train.lr"])
    summary = train_folds(best, tmp_path / "from_best", progress=False)
    assert summary.models["eff"].cv is not None


def test_killed_study_resumes_without_a_stuck_trial(comp_dir, tmp_path, monkeypatch):
    cfg = load_config(_cfg(comp_dir, LR))
    import comp.tuning._tune as T

    real = T._run_trial
    calls = {"n": 0}

    def die_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(T, "_run_trial", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        tune(cfg, tmp_path / "t", n_trials=3, pruner="none")
    monkeypatch.setattr(T, "_run_trial", real)
    r = tune(cfg, tmp_path / "t", n_trials=3, pruner="none")
    trials = pd.read_csv(tmp_path / "t/trials.csv")
    assert (trials["state"] == "COMPLETE").sum() == 2 and r.states.get("FAIL") == 1
    assert trials.loc[trials["state"] == "FAIL", "fail_reason"].item() == "interrupted"


def _enqueue(out, cfg_dir_params):
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    out.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="comp", storage=storage, direction="maximize", load_if_exists=True)
    for p in cfg_dir_params:
        study.enqueue_trial(p)


def test_median_pruning_stops_a_bad_trial(comp_dir, tmp_path):
    space = {"train.lr": {"type": "categorical", "choices": [0.02, 1e-9]}}
    cfg = load_config(_cfg(comp_dir, space, train__epochs=3, train__scheduler="none", train__max_steps_per_epoch=None))
    out = tmp_path / "t"
    _enqueue(out, [{"train.lr": 0.02}] * 3 + [{"train.lr": 1e-9}])
    r = tune(cfg, out, n_trials=4, pruner="median")
    trials = pd.read_csv(out / "trials.csv")
    assert trials.loc[3, "state"] == "PRUNED" and r.states["COMPLETE"] == 3
    assert trials.loc[3, "last_step"] < 5  # stopped before its last epoch of its last fold


def test_failed_trial_is_recorded_and_study_goes_on(comp_dir, tmp_path):
    space = {"models.0.name": {"type": "categorical", "choices": ["test_efficientnet", "no_such_net"]}}
    cfg = load_config(_cfg(comp_dir, space))
    out = tmp_path / "t"
    _enqueue(out, [{"models.0.name": "no_such_net"}, {"models.0.name": "test_efficientnet"}])
    r = tune(cfg, out, n_trials=2, pruner="none")
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["state"]) == ["FAIL", "COMPLETE"]
    assert "unknown timm model 'no_such_net'" in trials.loc[0, "fail_reason"]
    assert r.best_params == {"models.0.name": "test_efficientnet"}


def test_wilcoxon_and_hyperband_run(comp_dir, tmp_path):
    cfg = load_config(_cfg(comp_dir, LR))
    for pruner in ("wilcoxon", "hyperband"):
        r = tune(cfg, tmp_path / pruner, n_trials=2, pruner=pruner)
        assert r.n_trials == 2 and r.best_config


def _workers(cfg_path, storage, out, n):
    cmd = [sys.executable, "-m", "comp.cli", "tune", "--config", str(cfg_path), "--storage", storage,
           "--n-trials", str(n), "--out", str(out), "--pruner", "none", "--folds", "0", "--epochs", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


def _check_shared(storage_obj, n):
    study = optuna.load_study(study_name="comp", storage=storage_obj)
    real = [t for t in study.trials if t.user_attrs.get("fail_reason") != "surplus"]
    assert len(real) == n and all(t.state == optuna.trial.TrialState.COMPLETE for t in real)
    assert len({t.number for t in real}) == n


def test_journal_storage_two_workers(comp_dir, tmp_path):
    cfg_path = _cfg(comp_dir, LR)
    journal = tmp_path / "study.journal"
    _workers(cfg_path, f"journal:{journal}", tmp_path / "t", 4)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    _check_shared(JournalStorage(JournalFileBackend(str(journal))), 4)


def _pg_bin():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) if Path("/usr/lib/postgresql").is_dir() else []
    return found[-1].parent if found else None


@pytest.fixture
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package 'postgresql'; .ci/run installs it)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="comp-pg-"))
    as_user = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        os.chmod(root, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "comp", "--auth=trust"], check=True, capture_output=True)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "comp", "study"],
                       check=True, capture_output=True)
        yield f"postgresql://comp@127.0.0.1:{port}/study"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.postgres
def test_postgres_two_workers_finish_n_trials(comp_dir, tmp_path, postgres_url):
    _workers(_cfg(comp_dir, LR), postgres_url, tmp_path / "t", 4)
    _check_shared(postgres_url, 4)


def test_tune_help_and_bad_folds(comp_dir, tmp_path):
    res = CliRunner().invoke(main, ["tune", "--config", str(_cfg(comp_dir, LR)), "--folds", "5", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "folds are numbered 0..1" in res.output
    with pytest.raises(CompError, match="tune.space"):
        parse_space(load_config(write_config(comp_dir, tiny_config(comp_dir))))
    assert yaml  # noqa


def test_resumed_study_does_not_replay_samples(comp_dir, tmp_path):
    cfg = load_config(_cfg(comp_dir, LR))
    tune(cfg, tmp_path / "t", n_trials=1, pruner="none")
    tune(cfg, tmp_path / "t", n_trials=2, pruner="none")
    lrs = pd.read_csv(tmp_path / "t/trials.csv")["train.lr"]
    assert lrs[0] != lrs[1]
