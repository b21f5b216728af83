"""Folds and tuning workers as Ray tasks: the same artifacts as a local run, bit for bit, a task killed mid-fold
retried, the run folder's layout, failures, tuning, and Ray missing.

By default the driver and the tasks run through an in-process stand-in for Ray's API (``ray_stand_in``): the
same comp code, no cluster. With COMP_TEST_RAY=1 the same checks also run on a real local cluster
(``ray.init(num_cpus=2)``, a task process really killed), which takes a minute or two on a 2-core box."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import ray_stand_in
import torch
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config

from comp.cli import main
from comp.config import load_config
from comp.errors import CompError
from comp.training import WorkerError, train_folds
from comp.training._ray import EXIT_ONCE_ENV

REAL = os.environ.get("COMP_TEST_RAY") == "1"
real_only = pytest.mark.skipif(not REAL, reason="a real local Ray cluster takes minutes here; set COMP_TEST_RAY=1")
# 2 epochs of 2 steps: a task can be killed after its first epoch
FOLDS_KW = {"train__epochs": 2, "train__max_steps_per_epoch": 2}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    root = write_competition(tmp_path_factory.mktemp("ray") / "comp", n_groups=8, per_group=2)
    write_config(root, tiny_config(root, **FOLDS_KW), "folds.yaml")
    return root


@pytest.fixture(scope="module", params=["stand-in", pytest.param("real", marks=real_only)])
def cluster(request, competition):
    """Ray (the stand-in, or a local cluster of 2 CPUs): the first task to finish an epoch dies, once. Yields the
    file that says it did."""
    marker = competition.parent / f"killed-once-{request.param}"
    marker.unlink(missing_ok=True)
    if request.param == "real":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {EXIT_ONCE_ENV: str(marker)}})
        yield marker
        ray.shutdown()
        return

    def die_once() -> None:
        if not marker.exists():
            marker.touch()
            raise ray_stand_in.Died

    with pytest.MonkeyPatch.context() as mp:
        for name, mod in ray_stand_in.module().items():
            mp.setitem(sys.modules, name, mod)
        mp.setattr("comp.training._ray_folds.exit_once_hook", die_once)
        yield marker


@pytest.fixture(scope="module")
def local_run(competition) -> Path:
    """The reference: every fold in this process with one CPU thread, what each Ray task gets (--ray-cpus 1)."""
    run = competition.parent / "local"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_folds(load_config(competition / "folds.yaml"), run, progress=False)
    finally:
        torch.set_num_threads(before)
    return run


@pytest.fixture(scope="module")
def ray_run(competition, cluster, local_run):
    run = competition.parent / f"on-ray-{cluster.name}"
    lines = Lines()
    logger = logging.getLogger("comp")
    logger.addHandler(lines)
    level = logger.level
    logger.setLevel(logging.INFO)
    epochs = []
    try:
        result = train_folds(
            load_config(competition / "folds.yaml"), run, ray=True, ray_cpus=1, progress=False, on_epoch=epochs.append
        )
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return run, result, lines.lines, epochs


def _tree(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob("*"))


def test_ray_run_equals_a_local_run_bit_for_bit(ray_run, local_run):
    run, result, _, epochs = ray_run
    assert sorted(result.models["eff"].folds) == [0, 1] and result.models["eff"].cv is not None
    for k in (0, 1):
        a = torch.load(local_run / f"models/eff/fold{k}.pt", weights_only=True)["state_dict"]
        b = torch.load(run / f"models/eff/fold{k}.pt", weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), f"fold {k}"
        assert (run / f"models/eff/fold{k}.oof.csv").read_bytes() == (
            local_run / f"models/eff/fold{k}.oof.csv"
        ).read_bytes()
    for name in ("folds.csv", "config.yaml", "models/eff/oof.csv", "models/eff/metrics.json"):
        assert (run / name).read_bytes() == (local_run / name).read_bytes(), name
    history = pd.read_csv(run / "models/eff/fold0.history.csv")
    assert history["epoch"].tolist() == [0, 1]
    # the caller's on_epoch hears every epoch of every fold (and each fold's end) from the tasks
    assert sorted((e.fold, e.epoch) for e in epochs if not e.fold_done) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_task_killed_mid_fold_is_retried_and_still_exact(ray_run, cluster, local_run):
    """The first task to finish an epoch exited its process; Ray ran it again and the result is the same."""
    run, _, lines, _ = ray_run
    assert cluster.is_file()  # the hook fired
    again = [m for m in lines if "started again (attempt 2)" in m]
    assert len(again) == 1 and again[0].startswith("[eff fold "), lines
    epoch_lines = [m for m in lines if "epoch 2/2" in m and "loss" in m]
    assert {m.split("]")[0] for m in epoch_lines} == {"[eff fold 0", "[eff fold 1"}, lines
    assert pd.read_csv(run / "models/eff/oof.csv").equals(pd.read_csv(local_run / "models/eff/oof.csv"))


def test_the_run_folder_layout_equals_a_local_runs(ray_run, local_run):
    run = ray_run[0]
    assert _tree(run) == _tree(local_run)
    assert not list(run.rglob("*.lock")) and not list(run.rglob("*.state.pt")) and not list(run.rglob(".commit-*"))


def test_a_finished_run_starts_no_task_and_options_conflict(ray_run, competition, tmp_path):
    run = ray_run[0]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("fold*.pt")}
    train_folds(load_config(competition / "folds.yaml"), run, ray=True, ray_cpus=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("fold*.pt")} == before
    cfg_path = str(competition / "folds.yaml")
    for extra, needle in [
        (["--ray", "--devices", "cpu,cpu"], "cannot be combined with --devices"),
        (["--ray", "--ddp", "2"], "--ddp and --ray"),
        (["--ray-cpus", "2"], "pass --ray too"),
        (["--ray", "--ray-cpus", "64"], "no node of the Ray cluster has that many CPUs"),
    ]:
        out = tmp_path / "bad"
        res = CliRunner().invoke(main, ["train-folds", "--config", cfg_path, "--run-dir", str(out), *extra])
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, (extra, res.output)
        assert not out.exists(), extra  # refused before the first write


def test_tune_trials_as_ray_tasks(competition, cluster, tmp_path):
    cluster.touch()  # no kill here
    cfg = tiny_config(competition, train__max_steps_per_epoch=2)
    cfg["tune"] = {"space": {"train.lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True}}}
    out = tmp_path / "tune"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["tune", "--config", str(write_config(competition, cfg, "tune.yaml")), "--out", str(out)]
    args += ["--n-trials", "2", "--folds", "0", "--epochs", "1", "--storage", storage, "--ray", "--ray-cpus", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    trials = pd.read_csv(out / "trials.csv")
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE"] and trials["value"].notna().all()
    assert (out / "best_config.yaml").is_file()
    # each trial's run folder came back from its task (checkpoints dropped, as without --keep-trials)
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial_0000", "trial_0001"]
    assert (out / "trials/trial_0000/folds.csv").is_file() and not (out / "trials/trial_0000/models").exists()


def _stand_in_only(cluster) -> None:
    if not cluster.name.endswith("stand-in"):
        pytest.skip("the stand-in's failures are chosen by the test")


def test_a_fold_that_keeps_dying_fails_the_run_with_the_fix(competition, cluster, tmp_path, monkeypatch):
    _stand_in_only(cluster)

    def die() -> None:
        raise ray_stand_in.Died

    monkeypatch.setattr("comp.training._ray_folds.exit_once_hook", die)
    run = tmp_path / "dies"
    cfg = load_config(competition / "folds.yaml")
    with pytest.raises(
        WorkerError, match=r"the Ray task of eff fold 0 failed 4 times \(WorkerCrashedError.*resume=True to finish"
    ):
        train_folds(cfg, run, folds=[0], ray=True, ray_cpus=1, progress=False)
    assert (run / "folds.csv").is_file() and not list(run.rglob("fold0.*"))
    # a user error inside a task keeps its one line and exit code; a leftover state is refused before any task
    monkeypatch.setattr("comp.training._ray_folds.train_fold", _raise_comp_error)
    with pytest.raises(CompError, match=r"^eff fold 1: the images moved$") as info:
        train_folds(cfg, run, folds=[1], ray=True, ray_cpus=1, progress=False)
    assert info.value.exit_code == 2
    (run / "models/eff").mkdir(parents=True, exist_ok=True)
    (run / "models/eff/fold1.state.pt").write_bytes(b"x")
    with pytest.raises(CompError, match="holds a partly trained fold; pass resume=True"):
        train_folds(cfg, run, folds=[1], ray=True, ray_cpus=1, progress=False)


def _raise_comp_error(ctx, resume):
    raise CompError("the images moved")


def test_missing_ray_is_one_line(competition, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main, ["train-folds", "--config", str(competition / "folds.yaml"), "--run-dir", str(out), "--ray"]
    )
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.strip().splitlines() == [
        'error: --ray needs Ray, which is not installed here: pip install "comp[ray]"'
    ]
    assert not out.exists()


def test_a_cluster_that_cannot_be_reached_is_one_line(monkeypatch):
    import types

    from comp.training._ray import ray_session

    def refuse(address=None, **kw):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    fake = types.ModuleType("ray")
    fake.__dict__.update(is_initialized=lambda: False, init=refuse)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(
        CompError, match=r"^--ray auto: cannot connect to a Ray cluster \(Could not find any .*ray start --head"
    ):
        with ray_session("auto"):
            pass
