"""Experiment trackers for real: TensorBoard event files read back, MLflow against a local SQLite store, W&B
offline; a missing library is a one-line error, and a failing or stalled tracker never stops training."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import tiny_config, write_competition, write_config

from comp.cli import main
from comp.config import load_config
from comp.training import _tracking
from comp.training._trainer import train_folds


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def cfg_file(tmp_path):
    root = write_competition(tmp_path / "comp", n_groups=6)
    return write_config(root, tiny_config(root, train__epochs=2))


def test_tensorboard_events_read_back(cfg_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, run = tmp_path / "tb", tmp_path / "run"
    result = invoke("train-folds", "--config", cfg_file, "--run-dir", run, "--track", f"tensorboard={tb}", "--quiet")
    assert result.exit_code == 0, result.output
    acc = EventAccumulator(str(tb / "run"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"eff/fold0/accuracy", "eff/fold0/loss", "eff/fold1/accuracy", "eff/cv"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("eff/fold0/accuracy")] == [1, 2]
    assert all(e.value > 0 for e in acc.Scalars("eff/fold1/loss"))
    assert load_config(run / "config.yaml").track is not None  # recorded in the run's config
    metrics = json.loads((run / "models" / "eff" / "metrics.json").read_text())
    assert acc.Scalars("eff/cv")[0].value == pytest.approx(metrics["cv"], abs=1e-6)
    assert "eff/learning_curves" in tags["images"]
    assert any(t.startswith("config") for t in tags["tensors"])  # add_text lands as a tensor summary
    # a resumed run may add or drop a tracker: it is not part of what the run is
    again = invoke("train-folds", "--config", cfg_file, "--run-dir", run, "--quiet")
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_mlflow_against_a_local_store(cfg_file, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # artifacts of a SQLite store go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(cfg_file, overrides=[f"track.mlflow={uri}"])
    result = train_folds(cfg, tmp_path / "run", progress=False)
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("comp").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = client.get_metric_history(run.info.run_id, "eff/fold1/accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["eff/cv"] == pytest.approx(result.models["eff"].cv)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "eff")
    }
    assert {"config.yaml", "eff/metrics.json", "eff/learning_curves.png"} <= arts


def wandb_records(path):
    """The protobuf records of an offline run file: W&B writes LevelDB's log format (32 KiB blocks, chunks with
    a 7-byte header: crc32, length, type full/first/middle/last) after a 7-byte ':W&B' file header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


@pytest.mark.slow
def test_wandb_offline(cfg_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(cfg_file, overrides=["track.wandb=comp-test"])
    result = train_folds(cfg, tmp_path / "run", progress=False)
    (offline,) = (tmp_path / "run" / "wandb" / "wandb").glob("offline-run-*/*.wandb")
    history, summary, config = [], {}, {}
    for r in wandb_records(offline):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary.update({i.key or "/".join(i.nested_key): i.value_json for i in r.summary.update})
        elif kind == "run":
            config.update({i.key: i.value_json for i in r.run.config.update})
        elif kind == "exit":
            assert r.exit.exit_code == 0
    scores = [h for h in history if "eff/fold0/accuracy" in h]
    assert [h["epoch"] for h in scores] == [1, 2] and all("eff/fold0/loss" in h for h in scores)
    assert json.loads(summary["eff/cv"]) == pytest.approx(result.models["eff"].cv)
    assert "eff/learning_curves/path" in summary and "models" in config and "data" in config


def test_missing_library_is_one_line_before_training(cfg_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    run = tmp_path / "run"
    result = invoke("train-folds", "--config", cfg_file, "--run-dir", run, "--track", "mlflow=http://127.0.0.1:1")
    assert result.exit_code == 2 and 'pip install "comp[mlflow]"' in result.output
    assert len(result.output.strip().splitlines()) == 1 and not run.exists()
    bad = invoke("train-folds", "--config", cfg_file, "--run-dir", run, "--track", "neptune=x")
    assert bad.exit_code == 2 and "--track" in bad.output


def test_a_failing_tracker_warns_once_and_training_goes_on(cfg_file, tmp_path, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    calls = []

    def broken(self, values, step):
        calls.append(step)
        if len(calls) > 1:
            raise ConnectionError("server gone")
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    monkeypatch.setattr(_tracking.TensorBoard, "scalars", broken)
    cfg = load_config(cfg_file, overrides=[f"track.tensorboard={tmp_path / 'tb'}"])
    with caplog.at_level(logging.WARNING, logger="comp"):
        result = train_folds(cfg, tmp_path / "run", progress=False)
    assert result.models["eff"].cv is not None
    warned = [r.message for r in caplog.records if "tracker tensorboard failed" in r.message]
    assert len(warned) == 1 and "server gone" in warned[0] and len(calls) == 2


def test_a_stalled_tracker_does_not_hold_training(cfg_file, tmp_path, monkeypatch, caplog):
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(_tracking, "FINISH_TIMEOUT_S", 0.5)
    monkeypatch.setattr(_tracking.TensorBoard, "scalars", lambda self, values, step: time.sleep(30))
    cfg = load_config(cfg_file, overrides=[f"track.tensorboard={tmp_path / 'tb'}"])
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="comp"):
        train_folds(cfg, tmp_path / "run", progress=False)
    assert time.perf_counter() - start < 25
    assert any("still sending" in r.message for r in caplog.records)
