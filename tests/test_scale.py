"""Several devices and boxes: fold-parallel workers, DDP under torchrun (gloo on the CPU), shared tuning studies."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config

from comp.cli import main
from comp.config import load_config
from comp.errors import CompError
from comp.metrics import get_metric
from comp.training import WorkerError, resolve_devices, train_folds

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
# 3 epochs (a fold can be killed between epochs), 2 steps each: a few seconds per fold on one thread
FOLDS_KW = {"train__epochs": 3, "train__max_steps_per_epoch": 2}


def _comp(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "comp", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _probs(run: Path, model: str = "eff") -> pd.DataFrame:
    return (
        pd.read_csv(run / "models" / model / "oof.csv", dtype={"id": str, "target": str}).set_index("id").sort_index()
    )


def _same_checkpoints(a: Path, b: Path, folds=(0, 1)) -> None:
    for k in folds:
        sa = torch.load(a / f"models/eff/fold{k}.pt", weights_only=True)["state_dict"]
        sb = torch.load(b / f"models/eff/fold{k}.pt", weights_only=True)["state_dict"]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"fold {k}: {key} differs"


@pytest.fixture(scope="module")
def competition(tmp_path_factory) -> Path:
    return write_competition(tmp_path_factory.mktemp("scale") / "comp")


@pytest.fixture(scope="module")
def one_thread_run(competition) -> Path:
    """The reference: every fold in this process, one CPU thread (what each of two workers gets on 2 cores)."""
    cfg = load_config(write_config(competition, tiny_config(competition, **FOLDS_KW), "folds.yaml"))
    run = competition.parent / "single"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_folds(cfg, run, progress=False)
    finally:
        torch.set_num_threads(before)
    return run


# ---------------------------------------------------------------- devices


def test_resolve_devices():
    assert resolve_devices("cpu,cpu") == ["cpu", "cpu"] and resolve_devices(["cpu"]) == ["cpu"]
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(CompError, match=f"there is no GPU {n}"):
        resolve_devices(str(n))
    with pytest.raises(CompError, match="'gpu1' is not a GPU index"):
        resolve_devices("cpu,gpu1")
    if not n:
        with pytest.raises(CompError, match="no CUDA device is visible; list CPU workers"):
            resolve_devices("all")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--devices", "7"], "there is no GPU 7"),
        (["--ddp", "1"], "--ddp must be >= 2"),
        (["--ddp", "2", "--devices", "cpu,cpu"], "pass one of them"),
    ],
)
def test_bad_device_options(config_file, tmp_path, args, needle):
    res = CliRunner().invoke(
        main, ["train-folds", "--config", str(config_file), "--run-dir", str(tmp_path / "r"), *args]
    )
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output


def test_two_cpu_workers_equal_a_single_process(competition, one_thread_run, caplog):
    """Same artifacts, bit for bit, as one process with the same threads per process; lines name their worker."""
    cfg = load_config(competition / "folds.yaml")
    run = competition.parent / "workers"
    caplog.set_level(logging.INFO, logger="comp")
    result = train_folds(cfg, run, devices="cpu,cpu", progress=False)
    assert result.models["eff"].cv is not None and sorted(result.models["eff"].folds) == [0, 1]
    _same_checkpoints(one_thread_run, run)
    pd.testing.assert_frame_equal(_probs(one_thread_run), _probs(run), check_exact=True)
    assert json.loads((run / "models/eff/metrics.json").read_text()) == json.loads(
        (one_thread_run / "models/eff/metrics.json").read_text()
    )
    assert (run / "folds.csv").read_text() == (one_thread_run / "folds.csv").read_text()
    epochs = [r.getMessage() for r in caplog.records if "epoch 3/3" in r.getMessage()]
    assert len(epochs) == 2 and all(m.startswith(("[w0 cpu] eff fold", "[w1 cpu] eff fold")) for m in epochs), epochs
    assert not list(run.rglob("*.lock")) and not list(run.rglob("*.state.pt"))


def _kill_when(path_glob: str, root: Path, proc: subprocess.Popen, pid_of, timeout: float = 240) -> int:
    """SIGKILL the process ``pid_of(match)`` names as soon as a file matching ``path_glob`` appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for match in root.glob(path_glob):
            pid = pid_of(match)
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    return pid
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    raise AssertionError(f"nothing matched {path_glob} while the run was going: {proc.communicate()[0]}")


def _lock_pid(state: Path) -> int | None:
    try:
        return json.loads(state.with_name(state.name.replace(".state.pt", ".lock")).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_killed_worker_leaves_its_fold_resumable(competition, one_thread_run):
    """Kill the worker training a fold after its first epoch: the other goes on, the command says how to finish,
    and --resume ends with exactly the single-process result."""
    run = competition.parent / "killed"
    args = ["train-folds", "--config", str(competition / "folds.yaml"), "--run-dir", str(run), "--devices", "cpu,cpu"]
    proc = _comp(*args)
    _kill_when("models/eff/fold*.state.pt", run, proc, _lock_pid)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == WorkerError.exit_code, out
    assert "killed by signal 9 while training eff fold" in out and "--resume" in out and "Traceback" not in out, out
    assert len(list(run.glob("models/eff/fold*.state.pt"))) == 1 and not (run / "models/eff/oof.csv").exists()
    proc = _comp(*args, "--resume")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    _same_checkpoints(one_thread_run, run)
    pd.testing.assert_frame_equal(_probs(one_thread_run), _probs(run), check_exact=True)


# ---------------------------------------------------------------- DDP (gloo, two CPU processes)


def _ddp_config(competition: Path, epochs: int = 2) -> Path:
    # batch 4 per rank over 9 rows per rank: every epoch has several steps and a short last batch
    cfg = tiny_config(
        competition, device="cpu", train__epochs=epochs, train__batch_size=4, train__max_steps_per_epoch=3
    )
    return write_config(competition, cfg, f"ddp{epochs}.yaml")


def _check_exact_oof(run: Path, competition: Path) -> None:
    train = pd.read_csv(competition / "train.csv", dtype=str)
    oof = pd.read_csv(run / "models/eff/oof.csv", dtype={"id": str, "target": str})
    assert len(oof) == len(train) and not oof["id"].duplicated().any() and set(oof["id"]) == set(train["id"])
    metrics = json.loads((run / "models/eff/metrics.json").read_text())
    metric = get_metric(metrics["metric"])
    classes = ["c0", "c1", "c2"]
    y = oof["target"].map(classes.index).to_numpy()
    assert metrics["cv"] == metric(y, oof[classes].to_numpy())
    for k, score in enumerate(metrics["folds"]):
        rows = (oof["fold"] == k).to_numpy()
        assert score == metric(y[rows], oof[classes].to_numpy()[rows])


def test_ddp_two_processes_predict_every_row_once(competition):
    """--ddp 2 launches torchrun: OOF holds each row once, the metrics are the OOF's, checkpoints have no prefix."""
    run = competition.parent / "ddp"
    proc = _comp("train-folds", "--config", str(_ddp_config(competition)), "--run-dir", str(run), "--ddp", "2")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    _check_exact_oof(run, competition)
    assert out.count("eff fold 0 epoch 2/2") == 1 and "error" not in out, out  # rank 0 alone reports
    from comp.training import model_from_checkpoint

    ck = torch.load(run / "models/eff/fold0.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["state_dict"])
    model_from_checkpoint(run / "models/eff/fold0.pt")  # loads into a plain single-process model
    assert not list(run.rglob("*.lock")) and not list(run.rglob("*.state.pt"))


def _torchrun(cfg: Path, run: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "comp",
        "train-folds",
        "--config",
        str(cfg),
        "--run-dir",
        str(run),
        "--folds",
        "0",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        env={**ENV, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_ddp_resumed_equals_uninterrupted(competition):
    """torchrun killed after an epoch, then --resume: the same checkpoint and OOF as a run never interrupted."""
    # four epochs: the kill lands after the first one, well before the run could finish on a busy machine
    cfg = _ddp_config(competition, epochs=4)
    full, cut = competition.parent / "ddp-full", competition.parent / "ddp-cut"
    proc = _torchrun(cfg, full)
    assert proc.wait(timeout=300) == 0, proc.communicate()[0]
    proc = _torchrun(cfg, cut)
    _kill_when("models/eff/fold0.state.pt", cut, proc, lambda _: proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks, as a lost box would
    proc.wait(timeout=60)
    assert (cut / "models/eff/fold0.state.pt").is_file() and not (cut / "models/eff/fold0.pt").exists()
    proc = _torchrun(cfg, cut, "--resume")
    assert proc.wait(timeout=300) == 0, proc.communicate()[0]
    _same_checkpoints(full, cut, folds=(0,))
    a, b = (pd.read_csv(r / "models/eff/fold0.oof.csv", dtype=str) for r in (full, cut))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ha, hb = (pd.read_csv(r / "models/eff/fold0.history.csv") for r in (full, cut))
    pd.testing.assert_frame_equal(
        ha[["epoch", "loss", "score", "lr"]], hb[["epoch", "loss", "score", "lr"]], check_exact=True
    )


def test_sync_bn_needs_gpus_under_ddp(competition, monkeypatch):
    cfg = load_config(
        write_config(competition, tiny_config(competition, device="cpu", train__sync_bn=True), "sbn.yaml")
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(CompError, match="train.sync_bn needs GPUs"):
        train_folds(cfg, competition.parent / "sbn", progress=False)


def test_sync_bn_converts_and_keeps_the_checkpoint_format(competition):
    """With sync_bn, timm's converter swaps every BatchNorm (BatchNormAct2d keeps its activation) and the
    state_dict keys stay those of the plain model."""
    from timm.layers import convert_sync_batchnorm

    from comp.config import ModelConfig
    from comp.training import create_model

    cfg = load_config(write_config(competition, tiny_config(competition), "plain.yaml"))
    plain = create_model(ModelConfig("test_efficientnet", image_size=32), 3, cfg.train)
    synced = convert_sync_batchnorm(create_model(ModelConfig("test_efficientnet", image_size=32), 3, cfg.train))
    kinds = {type(m).__name__ for m in synced.modules()}
    assert any("Sync" in k for k in kinds) and not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    assert list(plain.state_dict()) == list(synced.state_dict())
    acts = [type(m.act).__name__ for m in synced.modules() if "Sync" in type(m).__name__ and hasattr(m, "act")]
    assert acts and set(acts) != {"Identity"}


@pytest.mark.gpu
def test_ddp_sync_bn_on_two_gpus(competition):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    cfg = write_config(competition, tiny_config(competition, device="cuda", train__sync_bn=True), "sbn-gpu.yaml")
    run = competition.parent / "sbn-gpu"
    proc = _comp("train-folds", "--config", str(cfg), "--run-dir", str(run), "--ddp", "2")
    assert proc.wait(timeout=600) == 0, proc.communicate()[0]
    _check_exact_oof(run, competition)
