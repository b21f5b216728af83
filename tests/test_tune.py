"""comp tune: space validation, resume, pruning, failed trials, best config, shared storages."""

import os
import re
import shutil
import signal
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
from conftest import snapshot, tiny_config, write_config

from comp.cli import main
from comp.config import load_config
from comp.errors import CompError
from comp.training._trainer import train_folds
from comp.tuning import parse_space, tune
from comp.tuning._optuna import record_heartbeat

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
    cfg = load_config(
        _cfg(
            comp_dir,
            {
                "models.0.image_size": {"type": "int", "low": 24, "high": 40, "step": 8},
                "models.0.name": {"type": "categorical", "choices": ["test_efficientnet", "test_resnet"]},
            },
        )
    )
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
    pd.testing.assert_frame_equal(
        first[["number", "value", "train.lr"]], after.head(2)[["number", "value", "train.lr"]]
    )
    assert (out / "history.png").is_file() and (out / "importances.png").is_file()
    best = load_config(out / "best_config.yaml")
    assert best.train.lr == pytest.approx(r2.best_params["train.lr"])
    summary = train_folds(best, tmp_path / "from_best", progress=False)
    assert summary.models["eff"].cv is not None


def test_killed_study_resumes_without_a_stuck_trial(comp_dir, tmp_path, monkeypatch):
    cfg = load_config(_cfg(comp_dir, LR))
    import comp.tuning._trials as T

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


def _tune_cmd(cfg_path, storage, out, n, *extra: str) -> list[str]:
    """`comp tune` in a new interpreter: one fold, one epoch, no pruner, on a shared study."""
    return [
        *(sys.executable, "-m", "comp", "tune", "--config", str(cfg_path), "--storage", storage),
        *("--n-trials", str(n), "--out", str(out), "--pruner", "none", "--folds", "0", "--epochs", "1"),
        *extra,
    ]


def _spawn(cmd: list[str], n: int = 1) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True) for _ in range(n)
    ]


def _workers(cfg_path, storage, out, n):
    procs = _spawn(_tune_cmd(cfg_path, storage, out, n), 2)
    outs = [p.communicate(timeout=300)[0] for p in procs]
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
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "comp", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "-l", str(root / "log"), "start"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            [*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "comp", "study"],
            check=True,
            capture_output=True,
        )
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
    res = CliRunner().invoke(
        main, ["tune", "--config", str(_cfg(comp_dir, LR)), "--folds", "5", "--out", str(tmp_path)]
    )
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


# ---------------------------------------------------------------- a study is keyed by its space and objective


def test_a_changed_space_or_objective_is_refused_with_nothing_written(comp_dir, tmp_path):
    """Reopening a study for another space or objective would report its old trials under a best_config.yaml
    written from the new space: refused, naming what changed; the same space and objective resume as before."""
    out = tmp_path / "t"
    cfg = load_config(_cfg(comp_dir, LR))
    tune(cfg, out, n_trials=1, pruner="none", folds=[0], epochs=1)
    before = snapshot(out)
    wider = {"train.lr": {**LR["train.lr"], "high": 0.1}}
    args = [
        "tune",
        "--config",
        str(_cfg(comp_dir, wider)),
        "--out",
        str(out),
        "--folds",
        "0",
        "--epochs",
        "1",
        "--pruner",
        "none",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert "tune.space.train.lr.high: 0.05 -> 0.1" in res.output and "another --out or --study-name" in res.output
    for change, needle in [
        ({"epochs": 2}, "epochs: 1 -> 2"),
        ({"folds": [0, 1]}, "folds: [0] -> [0, 1]"),
        ({"cfg": load_config(_cfg(comp_dir, LR, train__batch_size=4))}, "train.batch_size: 8 -> 4"),
    ]:
        kw = {"cfg": cfg, "folds": [0], "epochs": 1, **change}
        with pytest.raises(CompError, match=re.escape(needle)):
            tune(kw.pop("cfg"), out, n_trials=2, pruner="none", **kw)
    assert snapshot(out) == before
    # more trials, another pruner, the loader's workers: the same study, resumed
    same = load_config(_cfg(comp_dir, LR, data__num_workers=1))
    r = tune(same, out, n_trials=2, pruner="median", folds=[0], epochs=1)
    assert r.n_trials == 2 and pd.read_csv(out / "trials.csv")["number"].tolist() == [0, 1]


def test_the_study_key_leaves_out_where_and_how_fast_trials_run(comp_dir, tmp_path):
    """Workers on two boxes keep the competition in other folders, with their own loaders and devices: one study."""
    from comp.tuning._study import Plan, study_key

    def key(root, **kw) -> str:
        cfg = load_config(_cfg(root, LR, **kw))
        plan = Plan(
            base=cfg,
            space=parse_space(cfg),
            out_dir=tmp_path,
            storage=None,
            study_name="comp",
            direction="maximize",
            pruner="none",
            total_steps=1,
            n_trials=1,
            folds=[0],
            keep_trials=False,
            timeout=None,
            heartbeat=60,
            seed=0,
        )
        return study_key(plan)["sha256"]

    elsewhere = shutil.copytree(comp_dir, tmp_path / "box2" / "comp")
    assert key(comp_dir) == key(elsewhere, data__num_workers=2, device="cpu", predict__batch_size=4, train__lr=0.5)
    assert key(comp_dir) != key(comp_dir, train__batch_size=4)


# ---------------------------------------------------------------- workers that die, workers that share


def _journal(path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _finished(study) -> list:
    """The trials that count: not surplus, not the dead worker's trial that was run again."""
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in study.trials if t.user_attrs.get("fail_reason") != "surplus" and t.number not in retried]


def _kill_a_worker_mid_trial(storage_obj, spare_pid: int, procs, timeout: float = 240) -> int:
    """SIGKILL the first worker seen running a trial (any but ``spare_pid``); returns the trial's number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        try:
            trials = optuna.load_study(study_name="comp", storage=storage_obj).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            trials = []
        for t in trials:
            host, pid, number = (str(t.user_attrs.get("worker", "")).rsplit(":", 2) + ["", "", ""])[:3]
            training = t.state == optuna.trial.TrialState.RUNNING and t.params  # sampled: its run has begun
            if training and number == str(t.number) and int(pid) != spare_pid:
                os.kill(int(pid), signal.SIGKILL)
                return t.number
        time.sleep(0.2)
    raise AssertionError("no worker was seen running a trial")


def _check_retried(study, n: int, killed: int) -> None:
    finished = _finished(study)
    assert len(finished) == n and all(t.state == optuna.trial.TrialState.COMPLETE for t in finished), [
        (t.number, t.state.name, t.user_attrs) for t in study.trials
    ]
    dead = study.trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL
    retry = [t for t in study.trials if t.system_attrs.get("retry_history") == [killed]]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0] in finished


def test_killed_device_worker_on_a_journal_study_is_retried(comp_dir, tmp_path):
    """comp tune --devices cpu,cpu on a journal: one worker is killed mid-trial; the other fails that trial, runs
    it again, and the study ends with exactly --n-trials finished trials."""
    journal = tmp_path / "study.journal"
    cmd = _tune_cmd(
        _cfg(comp_dir, LR), f"journal:{journal}", tmp_path / "t", 3, "--devices", "cpu,cpu", "--heartbeat", "1"
    )
    [parent] = _spawn(cmd)
    killed = _kill_a_worker_mid_trial(_journal(journal), parent.pid, [parent])
    out = parent.communicate(timeout=300)[0]
    assert parent.returncode == 0 and "killed by signal 9; another worker ran its trial again" in out, out
    study = optuna.load_study(study_name="comp", storage=_journal(journal))
    _check_retried(study, 3, killed)
    trials = pd.read_csv(tmp_path / "t/trials.csv", keep_default_na=False)
    assert trials.loc[killed, "fail_reason"].startswith("worker died; retried as trial")


@pytest.mark.postgres
@pytest.mark.slow
def test_killed_worker_on_a_postgres_study_is_retried(comp_dir, tmp_path, postgres_url):
    """Two `comp tune` processes (as on two boxes) on PostgreSQL; one is killed mid-trial."""
    procs = _spawn(_tune_cmd(_cfg(comp_dir, LR), postgres_url, tmp_path / "t", 3, "--heartbeat", "1"), 2)
    killed = _kill_a_worker_mid_trial(postgres_url, -1, procs)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert sorted(p.returncode for p in procs) == [-signal.SIGKILL, 0], outs
    _check_retried(optuna.load_study(study_name="comp", storage=postgres_url), 3, killed)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # this test asks as the lost worker did
@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_trial_of_a_silent_worker_elsewhere_is_failed_and_retried(comp_dir, tmp_path, backend):
    """A RUNNING trial whose worker, on another box, stopped beating: after the grace period a worker here fails
    it through Optuna's fail_stale_trials, runs its parameters again, and counts it once."""
    from comp.tuning._storage import make_storage

    out = tmp_path / "t"
    url = f"journal:{tmp_path / 'study.journal'}" if backend == "journal" else None
    storage = make_storage(url, out, heartbeat=1)
    study = optuna.create_study(study_name="comp", storage=storage, direction="maximize")
    lost = study.ask()
    lost.suggest_float("train.lr", 1e-3, 5e-2, log=True)
    lost.set_user_attr("worker", f"other-box:1:{lost.number}")
    record_heartbeat(storage, lost)
    r = tune(load_config(_cfg(comp_dir, LR)), out, n_trials=2, pruner="none", storage=url, heartbeat=1, folds=[0])
    study = optuna.load_study(study_name="comp", storage=make_storage(url, out, heartbeat=1))
    _check_retried(study, 2, lost.number)
    assert r.states == {"COMPLETE": 2, "FAIL": 1}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_second_worker_leaves_the_running_trial_of_the_first_alone(comp_dir, tmp_path):
    """Default SQLite study: a worker that starts while another's trial runs (beating) must not fail it, and
    waits for it rather than leaving the study short if that worker died."""
    import threading

    from comp.tuning._storage import make_storage

    out = tmp_path / "t"
    storage = make_storage(None, out, heartbeat=1)
    study = optuna.create_study(study_name="comp", storage=storage, direction="maximize")
    first = study.ask()
    first.suggest_float("train.lr", 1e-3, 5e-2, log=True)
    first.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}:{first.number}")
    stop = threading.Event()

    def first_worker():  # beats like a live worker for 4 s, then reports its result
        for _ in range(8):
            record_heartbeat(storage, first)
            if stop.wait(0.5):
                return
        study.tell(first, 0.5)

    thread = threading.Thread(target=first_worker)
    thread.start()
    try:
        r = tune(load_config(_cfg(comp_dir, LR)), out, n_trials=2, pruner="none", heartbeat=1, folds=[0])
    finally:
        stop.set()
        thread.join()
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"] and trials.loc[0, "value"] == 0.5, trials
    assert r.n_trials == 2


def test_only_the_adapter_touches_optuna_private_names():
    """Optuna's private names (a module under ``optuna.*._x``, trial ids, a study's storage, the stale-trial hook)
    live in comp/tuning/_optuna.py alone, so an Optuna release that moves them breaks one file."""
    comp_dir = Path(__file__).resolve().parents[1] / "comp"
    adapter = comp_dir / "tuning" / "_optuna.py"
    # (?<!tuning): comp.tuning._storage is comp's own storage module, not a study's private attribute
    private = re.compile(r"optuna\.[a-z_.]*\._|\._trial_id\b|(?<!tuning)\._storage\b|_get_stale_trial_ids")
    found = [
        f"{path.relative_to(comp_dir.parent)}:{i}: {line.strip()}"
        for path in sorted(comp_dir.rglob("*.py"))
        if path != adapter
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line)
    ]
    assert not found, "Optuna private names outside comp/tuning/_optuna.py (add a function there):\n" + "\n".join(found)
    assert private.search(adapter.read_text(encoding="utf-8"))  # the pattern still finds what the adapter wraps
