"""int8 graphs: ``comp export --int8`` on every task, the int8 engine, the refusal on a metric drop (nothing
written), the bundle shipping int8 graphs, a two-input (metadata tower) graph, and the VNNI note.

The trained runs are conftest's session-wide ones (``trained_run`` and ``task_runs``), copied before writing."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from comp.cli import main
from comp.errors import CompError
from comp.inference import _int8 as Q
from comp.inference import bundle_predict as bp
from comp.inference import bundle_run, export_run, predict_run
from comp.inference._export import INPUT, META, OUTPUT, export_graph
from comp.inference._onnxruntime import graph_matches, usable_fused
from comp.run import RunDir, file_sha256, read_graph_metadata
from tests.conftest import snapshot

CALIB = 16  # the tiny runs' folds hold about 18 rows each


@pytest.fixture
def run_copy(trained_run, run_of, tmp_path):
    """``copy(kind)``: a private copy of a trained run of ``classification`` or a ``task_runs`` kind."""

    def copy(kind: str) -> Path:
        if kind != "classification":
            return run_of(kind)
        shutil.copytree(trained_run.parent, tmp_path / "cls")
        return tmp_path / "cls" / trained_run.name

    return copy


def _float_output(path: Path) -> bool:
    """Whether the graph's output is computed in float (its producer is no DequantizeLinear)."""
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    return producer[OUTPUT].op_type != "DequantizeLinear"


@pytest.mark.parametrize("kind", ["classification", "multilabel", "regression"])
def test_int8_export_and_engine_every_task(run_copy, kind):
    run_dir = run_copy(kind)
    run, cfg = RunDir(run_dir), RunDir(run_dir).load_config()
    fuse = kind == "classification"  # the fused graph's quantization is the same code; the bundle test runs it too
    args = ["export", str(run_dir), "--int8", "--calib", str(CALIB), "--quiet", *(["--fuse"] if fuse else [])]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    printed = [ln for ln in res.output.splitlines() if "int8.onnx" in ln]  # both scores, for every int8 graph
    assert len(printed) == 2 + fuse and all("float32 ->" in ln and "max |diff|" in ln for ln in printed)
    report = json.loads(run.export_report("eff").read_text())
    by_fold = run.fold_checkpoints("eff")
    checks = report["int8"]["files"]
    fused = ["fused.int8.onnx"] if fuse else []
    assert [c["file"] for c in checks] == [*(f"fold{k}.int8.onnx" for k in by_fold), *fused]
    for c in checks:  # scored with the task's metric on held-out rows, within the default bound
        assert c["drop"] <= 0.005 and c["rows"] > 0 and report["int8"]["calib"] == CALIB
        assert c["max_abs_diff"] > 0  # really quantized: not the float graph copied
    for k, p in by_fold.items():
        path = run.onnx("eff", k, int8=True)
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and _float_output(path)
        meta = read_graph_metadata(path)
        assert meta["precision"] == "int8" and meta["int8"]["calib_images"] <= CALIB
        assert graph_matches(path, {str(k): file_sha256(p)}, cfg.task)
    fused_int8 = usable_fused(run, "eff", sorted(by_fold), [], "mean", int8=True)
    assert fused_int8 == (run.fused("eff", int8=True) if fuse else None)

    # the int8 engine (the fused int8 graph where it fits the request) against the float graphs
    test_float = pd.read_csv(predict_run(run_dir, engine="onnx", progress=False).models["eff"].test)
    int8 = predict_run(run_dir, engine="int8", progress=False).models["eff"]
    test_int8 = pd.read_csv(int8.test)
    assert int8.fused == fuse and list(test_int8.columns) == list(test_float.columns)
    cols = [c for c in test_float.columns if c != cfg.data.id_column]
    a, b = test_float[cols].to_numpy(), test_int8[cols].to_numpy()
    assert np.abs(a - b).max() <= 0.1 * (1 + np.abs(a).max()) and not np.array_equal(a, b)


def test_int8_refused_on_a_drop_writes_nothing(run_copy):
    run_dir = run_copy("classification")
    files = lambda: {k: v for k, v in snapshot(run_dir).items() if (run_dir / k).is_file()}  # noqa: E731
    before = files()
    res = CliRunner().invoke(main, ["export", str(run_dir), "--int8", "--calib", str(CALIB), "--max-drop", "-1"])
    assert res.exit_code == 2, res.output
    line = res.output.strip().splitlines()[-1]
    assert "fold0.int8.onnx" in line and "accuracy" in line and "drop" in line and "--max-drop -1" in line
    assert "Traceback" not in res.output
    assert files() == before  # neither the int8 graph nor the float ones staged with it nor export.json


def test_int8_calibration_image_that_fails_to_decode(run_copy, tmp_path):
    run_dir = run_copy("classification")
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    images = shutil.copytree(raw["data"]["image_dir"], tmp_path / "images")  # the shared run's images stay whole
    raw["data"]["image_dir"] = str(images)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw))
    cfg = RunDir(run_dir).load_config()
    ids = RunDir(run_dir).read_folds(cfg.data.id_column)
    last = ids[ids["fold"] == 0][cfg.data.id_column].iloc[-1]  # past the 16 images of the parity check
    (images / f"{last}{cfg.data.image_ext}").write_bytes(b"not an image")
    res = CliRunner().invoke(main, ["export", str(run_dir), "--int8", "--calib", str(CALIB)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"{last}{cfg.data.image_ext} is unreadable" in res.output.strip().splitlines()[-1]
    assert not RunDir(run_dir).onnx("eff", 0, int8=True).exists()


def test_bundle_int8_runs_in_predict_py(run_copy, tmp_path):
    run_dir = run_copy("classification")
    predict_run(run_dir, engine="torch", progress=False)  # comp's own test.csv, which the bundle must reproduce
    result = bundle_run(run_dir, out=tmp_path / "bundle", int8=True, calib=CALIB)
    (graph,) = result.manifest["graphs"]
    assert graph["file"] == "eff.int8.onnx" and graph["precision"] == "int8" and graph["int8"]["drop"] <= 0.005
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["eff.int8.onnx", "manifest.json", "predict.py"]
    cfg = RunDir(run_dir).load_config()
    out = tmp_path / "sub.csv"
    probs = tmp_path / "probs.csv"
    cmd = [sys.executable, str(tmp_path / "bundle" / "predict.py"), "--images", cfg.data.test_image_dir]
    cmd += ["--sample", cfg.data.sample_submission, "--out", str(out), "--probs", str(probs), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    comp_test = pd.read_csv(RunDir(run_dir).test_pred("eff"))
    got = pd.read_csv(probs)
    cols = [c for c in comp_test.columns if c != cfg.data.id_column]
    assert np.abs(got[cols].to_numpy() - comp_test[cols].to_numpy()).max() < 0.1
    assert len(pd.read_csv(out)) == len(comp_test)


class _Tower(nn.Module):
    """Images and raw metadata rows (NaN where missing), as comp's metadata tower takes them."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1))
        self.meta = nn.Linear(2, 4)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        m = self.meta(torch.nan_to_num(meta))
        return self.head(torch.cat([self.conv(x).flatten(1), m], 1)).softmax(1)


def test_two_input_graph_quantizes_with_both_inputs(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 16, 16)).astype(np.float32)
    meta = rng.normal(size=(40, 2)).astype(np.float32)
    meta[::3, 1] = np.nan
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_graph(
        _Tower(), (torch.from_numpy(x[:1]), torch.from_numpy(meta[:1])), src, 17, {"precision": '"fp32"'}, False
    )
    calib = Q.Rows((x[:32], meta[:32]), np.zeros(32))
    Q.quantize(src, dst, calib, [INPUT, META])
    names = [i.name for i in onnx.load(str(dst)).graph.input]
    assert names == [INPUT, META] and read_graph_metadata(dst)["precision"] == "int8"
    f = Q.run_graph(src, (x[32:], meta[32:]), [INPUT, META], OUTPUT)
    q = Q.run_graph(dst, (x[32:], meta[32:]), [INPUT, META], OUTPUT)
    assert np.isfinite(q).all() and np.abs(q - f).max() < 0.05 and _float_output(dst)
    kept = set(Q.float_nodes(onnx.load(str(src)), [INPUT, META]))
    model = onnx.load(str(src))
    assert any("meta" in n.name for n in model.graph.node if n.name in kept)  # the metadata branch stays float


def test_options_and_vnni_note(caplog, monkeypatch):
    with pytest.raises(CompError, match="--calib must be"):
        Q.Int8Options(calib=0)
    with pytest.raises(CompError, match="--max-drop must be"):
        Q.Int8Options(max_drop=float("nan"))
    with pytest.raises(CompError, match="drop --fp16"):
        export_run("nowhere", int8=True, fp16=True)
    rmse = Q.Int8Check("rmse", 60.0, 60.3, False, 0.1, 10, "rows")  # in the target's units: relative
    assert rmse.drop == pytest.approx(0.005) and Q.Int8Check("acc", 0.9, 0.8, True, 0.1, 10, "r").drop == pytest.approx(
        0.1
    )
    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
    assert Q.has_vnni(x86) is False and Q.has_vnni(x86.replace("avx2", "avx2 avx512_vnni")) is True
    assert Q.has_vnni("Features\t: fp asimd asimddp\n") is True
    monkeypatch.setattr(Q, "_noted", [])
    with caplog.at_level(logging.WARNING):
        assert Q.note_speed(cpuinfo=x86) is True
        assert Q.note_speed(cpuinfo=x86) is False  # once per process
    assert len([r for r in caplog.records if "may not be faster" in r.message]) == 1
    monkeypatch.setattr(Q, "_noted", [])
    assert Q.note_speed(cpuinfo=x86.replace("avx2", "avx_vnni")) is False
    assert Q.note_speed(accelerated=True, cpuinfo=x86.replace("avx2", "avx_vnni")) is True
    graph = bp.Graph("g.onnx", 1.0, (8, 8), (0, 0, 0), (1, 1, 1), "input", "probs", precision="int8")
    assert "VNNI" in (bp.int8_note([graph], "CPUExecutionProvider", x86) or "")
    assert bp.int8_note([graph], "CPUExecutionProvider", x86.replace("avx2", "avx512_vnni")) is None
    assert "CUDA" in (bp.int8_note([graph], "CUDAExecutionProvider", x86) or "")
    assert bp.int8_note([bp.Graph("g.onnx", 1.0, (8, 8), (0, 0, 0), (1, 1, 1), "i", "o")], "cpu", x86) is None
    res = CliRunner().invoke(main, ["export", "nowhere", "--int8", "--calib", "0"])
    assert res.exit_code == 2 and "--calib must be" in res.output
