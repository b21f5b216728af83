"""Inference engine options: onnxruntime provider chains, fixed-size batches for CUDA graphs, fp16 graphs,
torch.compile. The GPU paths themselves are in tests marked gpu."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

import comp
from comp.config import PredictConfig
from comp.errors import CompError
from comp.inference import ENGINES
from comp.inference import _onnxruntime as O
from comp.run import RunDir, load_checkpoint

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_every_engine_is_a_config_choice():
    # predict.engine (and the CLI's --engine) list the registry's names: a new engine adds itself to both
    assert list(ENGINES) == list(typing.get_args(typing.get_type_hints(PredictConfig)["engine"]))


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_runners_return_probabilities_per_row(name, trained_run, tmp_path):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained_run, run.root)
    cfg = run.load_config()
    engine = ENGINES[name].from_config(cfg, run, batch_size=4)
    engine.prepare(run, "eff", cfg)
    runner = engine.runner(run, "eff", 0, load_checkpoint(run.checkpoint("eff", 0)))
    probs = runner(np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32))
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_unknown_engine_lists_the_registered_ones(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(CompError, match="unknown inference engine 'trt'; choose from onnx, int8, torch"):
        comp.predict(tmp_path / "run", engine="trt", out=tmp_path / "s.csv", progress=False)
    assert not (tmp_path / "s.csv").exists()


def test_provider_chain_on_a_gpu_box(tmp_path):
    opts = O.OrtOptions(batch_size=32, cache_dir=tmp_path / "trt", cudnn_conv_algo_search="heuristic", cuda_graph=True)
    chain = O.provider_chain([TRT, CUDA, CPU], opts, ("batch", 3, 224, 192))
    assert [name for name, _ in chain] == [TRT, CUDA, CPU]
    trt, cuda = chain[0][1], chain[1][1]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_timing_cache_enable"] is True
    assert (
        trt["trt_profile_min_shapes"] == "input:1x3x224x192" and trt["trt_profile_max_shapes"] == "input:32x3x224x192"
    )
    assert cuda["cudnn_conv_algo_search"] == "HEURISTIC" and cuda["cudnn_conv_use_max_workspace"] == "1"
    assert cuda["enable_cuda_graph"] == "1"


@pytest.mark.parametrize("search", ["exhaustive", "heuristic"])
def test_cudnn_search_is_never_default(search):
    chain = dict(O.provider_chain([CUDA, CPU], O.OrtOptions(cudnn_conv_algo_search=search), (3, 8, 8)))
    assert chain[CUDA]["cudnn_conv_algo_search"] in ("EXHAUSTIVE", "HEURISTIC")
    assert "enable_cuda_graph" not in chain[CUDA]


def test_provider_chain_without_gpu_or_with_tensorrt_off():
    assert O.provider_chain([CPU], O.OrtOptions(), (3, 8, 8)) == [(CPU, {})]
    names = [n for n, _ in O.provider_chain([TRT, CUDA, CPU], O.OrtOptions(tensorrt=False), (3, 8, 8))]
    assert names == [CUDA, CPU]
    # a dynamic spatial size cannot get an explicit TensorRT profile: TensorRT is skipped, not misconfigured
    assert [n for n, _ in O.provider_chain([TRT, CPU], O.OrtOptions(), ("b", 3, "h", "w"))] == [CPU]


@pytest.mark.parametrize("n", [1, 7, 8, 9, 17])
def test_fixed_batches_pad_and_return_only_real_rows(n):
    seen = []

    def run(x):
        seen.append(x.shape[0])
        return x.reshape(len(x), -1)[:, :2] * 2

    x = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    out = O.fixed_batches(x, 8, run)
    assert set(seen) == {8}  # every call has the fixed shape
    np.testing.assert_array_equal(out, x[:, :2] * 2)


def test_a_gpu_provider_that_cannot_start_falls_back_to_cpu(trained_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    comp.export(run, models=["eff"])
    monkeypatch.setattr(O, "providers", lambda: [CUDA, CPU])  # this machine lists CUDA but has no GPU
    runner = O.OrtRunner(run / "models/eff/fold0.onnx", options=O.OrtOptions())
    assert runner.provider == CPU and runner(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 3)


def test_fp16_graph_keeps_float32_io_and_sensitive_nodes(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    report = comp.export(run, models=["eff"], fp16=True)["eff"]
    assert all(f["max_abs_diff"] <= 1e-2 for f in report["files"])  # parity against the fp32 torch model
    graph = onnx.load(str(run / "models/eff/fold0.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmax  # kept in float32: its input is cast up from half first
    producers = {o: n for n in graph.node for o in n.output}
    assert all(producers[n.input[0]].op_type == "Cast" for n in softmax)


def test_predict_compile_option_reaches_torch_compile(trained_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    modes = []

    def fake_compile(module, mode=None, **kw):
        modes.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    res = comp.predict(
        run, engine="torch", overrides=["predict.compile=max-autotune"], out=tmp_path / "s.csv", progress=False
    )
    assert modes and set(modes) == {"max-autotune"} and res.submission is not None


@pytest.mark.slow
def test_compiled_torch_engine_matches_eager(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    eager = comp.predict(run, engine="torch", out=tmp_path / "e.csv", progress=False).test("eff")
    compiled = comp.predict(
        run, engine="torch", overrides=["predict.compile=default"], out=tmp_path / "c.csv", progress=False
    ).test("eff")
    cols = list(eager.columns[1:])
    np.testing.assert_allclose(compiled[cols].to_numpy(float), eager[cols].to_numpy(float), atol=1e-5)
    assert Path(tmp_path / "c.csv").is_file() and pd.read_csv(tmp_path / "c.csv").shape[0] == len(eager)
