"""The ``onnx`` engine: each fold's exported graph (or the fused one) run by onnxruntime.

Graphs missing or exported from other checkpoints are exported first (``comp export``, with its parity
check). Provider choice and options (TensorRT, CUDA, CPU), I/O binding and CUDA-graph replay live here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from comp.config import Config
from comp.errors import CompError
from comp.inference._engines import ENGINES, Engine, Runner
from comp.inference._export import INPUT, META, OUTPUT, export_model
from comp.inference._int8 import Int8Options, note_speed
from comp.run import Checkpoint, RunDir, file_sha256, read_graph_metadata

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
log = logging.getLogger(__name__)


def providers() -> list[str]:
    """onnxruntime providers to try, best first; GPU ones only when a CUDA device is visible (the -gpu wheel lists them anyway)."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in avail] if torch.cuda.is_available() else []
    return gpu + ["CPUExecutionProvider"]


@dataclass
class OrtOptions:
    """How onnxruntime runs a graph; from the config's ``predict`` block (see ``provider_chain``)."""

    tensorrt: bool = True
    trt_fp16: bool = True
    cudnn_conv_algo_search: str = "exhaustive"
    cuda_graph: bool = False
    batch_size: int = 64
    cache_dir: Path | None = None  # TensorRT engine and timing caches (under the run folder)

    @classmethod
    def from_config(cls, cfg: Config, run: RunDir, batch_size: int) -> OrtOptions:
        p = cfg.predict
        return cls(p.tensorrt, p.trt_fp16, p.cudnn_conv_algo_search, p.cuda_graph, batch_size, run.trt_cache)


def provider_chain(available: list[str], options: OrtOptions, input_shape: tuple[int, ...]) -> list[tuple[str, dict]]:
    """onnxruntime providers with their options, best first; the session falls back along the chain.

    CUDA: cuDNN's convolution search is EXHAUSTIVE (benchmark once per shape; right for fixed-size batches) or
    HEURISTIC, never DEFAULT, which is known to pick algorithms several times slower; the largest workspace.
    TensorRT: fp16 kernels, engine and timing caches under the run folder (built once, minutes saved on every
    later predict), and an explicit batch profile 1..batch_size so no engine is rebuilt per batch size."""
    chain: list[tuple[str, dict]] = []
    dims3 = list(input_shape[-3:]) if len(input_shape) >= 3 else [-1, -1, -1]
    c, h, w = (int(d) if isinstance(d, int) else -1 for d in dims3)
    if options.tensorrt and "TensorrtExecutionProvider" in available and min(c, h, w) > 0:
        dims = lambda n: f"{INPUT}:{n}x{c}x{h}x{w}"  # noqa: E731
        trt: dict[str, object] = {
            "trt_fp16_enable": options.trt_fp16,
            "trt_profile_min_shapes": dims(1),
            "trt_profile_opt_shapes": dims(options.batch_size),
            "trt_profile_max_shapes": dims(options.batch_size),
        }
        if options.cache_dir is not None:
            cache = str(options.cache_dir)
            trt.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=cache,
                trt_timing_cache_enable=True,
                trt_timing_cache_path=cache,
            )
        chain.append(("TensorrtExecutionProvider", trt))
    if "CUDAExecutionProvider" in available:
        cuda: dict[str, object] = {
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search.upper(),
            "cudnn_conv_use_max_workspace": "1",
        }
        if options.cuda_graph:
            cuda["enable_cuda_graph"] = "1"
        chain.append(("CUDAExecutionProvider", cuda))
    chain.append(("CPUExecutionProvider", {}))
    return chain


def fixed_batches(x: np.ndarray, batch: int, run) -> np.ndarray:
    """Run ``run`` on batches of exactly ``batch`` rows (the last one padded with zeros), as CUDA graphs need
    one fixed input shape; returns the rows of ``x`` only."""
    out = []
    for start in range(0, len(x), batch):
        part = x[start : start + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]), part.dtype)])
        out.append(run(part)[: min(batch, len(x) - start)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class OrtRunner:
    """One onnxruntime session: float32 NCHW batch in, the graph's predictions out (I/O binding on CUDA)."""

    def __init__(self, path: Path, threads: int | None = None, options: OrtOptions | None = None):
        import onnxruntime as ort

        self.options = options or OrtOptions()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # one process per machine is the norm here; torch's thread count already reflects the user's setting
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        available = providers()
        probe = (
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]) if len(available) > 1 else None
        )
        shape = tuple(probe.get_inputs()[0].shape) if probe is not None else ()
        if probe is not None and len(probe.get_inputs()) > 1:  # a tower graph: the TensorRT profile names one input
            self.options = dataclasses.replace(self.options, tensorrt=False)
        if self.options.cache_dir is not None and "TensorrtExecutionProvider" in available:
            self.options.cache_dir.mkdir(parents=True, exist_ok=True)
        chain, errors = provider_chain(available, self.options, shape), []
        while chain:
            try:
                self.session = ort.InferenceSession(str(path), opts, providers=chain)
                break
            except Exception as exc:  # noqa: BLE001 - a GPU provider that cannot start falls back to the next one
                errors.append(f"{chain[0][0]}: {type(exc).__name__}")
                chain = chain[1:]
        else:
            raise CompError(f"onnxruntime cannot open {path} ({'; '.join(errors)}); re-run `comp export`")
        self.provider = self.session.get_providers()[0]
        self.cuda = "CUDAExecutionProvider" in self.session.get_providers()
        self.graph = self.cuda and self.options.cuda_graph and self.provider == "CUDAExecutionProvider"
        self._bound: tuple | None = None
        inputs = self.session.get_inputs()
        self.tower = len(inputs) > 1  # a metadata tower's graph: images and raw metadata rows
        warm = [np.zeros((1, *i.shape[1:]), np.float32) for i in inputs]
        self(*warm)  # warm-up: first run allocates and picks kernels

    def __call__(self, x: np.ndarray, meta: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.tower != (meta is not None):
            raise CompError(
                "this ONNX graph takes images and metadata rows" if self.tower else "this ONNX graph takes images only"
            )
        if meta is not None:  # a second input: no CUDA-graph replay (its buffers are bound for the image alone)
            feeds = {INPUT: x, META: np.ascontiguousarray(meta, dtype=np.float32)}
            return self.session.run([OUTPUT], feeds)[0]
        if self.graph:
            return fixed_batches(x, self.options.batch_size, self._run_graph)
        if self.cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(INPUT, x)
            binding.bind_output(OUTPUT, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([OUTPUT], {INPUT: x})[0]

    def _run_graph(self, x: np.ndarray) -> np.ndarray:
        """CUDA graph replay: the input and output live in fixed device buffers bound once."""
        import onnxruntime as ort

        if self._bound is None:
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            n_out = self.session.get_outputs()[0].shape[-1]
            y_dev = ort.OrtValue.ortvalue_from_shape_and_type((len(x), int(n_out)), np.float32, "cuda", 0)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(INPUT, x_dev)
            binding.bind_ortvalue_output(OUTPUT, y_dev)
            self._bound = (binding, x_dev, y_dev)
        binding, x_dev, y_dev = self._bound
        x_dev.update_inplace(x)
        self.session.run_with_iobinding(binding)
        return y_dev.numpy()


class _Lazy:
    """Opens its onnxruntime session on first use: when predict runs fused.onnx, the per-fold sessions never open."""

    def __init__(self, make):
        self.make, self.runner = make, None

    def __call__(self, x: np.ndarray, *meta: np.ndarray) -> np.ndarray:
        if self.runner is None:
            self.runner = self.make()
        return self.runner(x, *meta)


def graph_matches(onnx_path: Path, digests: dict[str, str], task: str = "classification") -> bool:
    """Whether ``onnx_path`` was exported from exactly these checkpoints ({fold: sha256}) for ``task``, by its
    metadata.

    Timestamps are not trusted: a same-shaped graph copied from another run would otherwise be used. A graph
    that names no task was exported before graphs ended in their task's output (always in a softmax): right
    for a classifier, stale for any other task."""
    if not onnx_path.is_file():
        return False
    try:
        meta = read_graph_metadata(onnx_path)
    except CompError:
        return False
    return meta.get("checkpoints") == digests and meta.get("task", "classification") == task


def usable_fused(
    run: RunDir, model_id: str, folds: list[int], tta: list[str], merge: str, *, int8: bool = False
) -> Path | None:
    """``fused.onnx`` (``fused.int8.onnx``) when it was built from exactly these checkpoints (by their sha256)
    with the requested TTA views and merge; otherwise None and the per-fold graphs are used."""
    path = run.fused(model_id, int8=int8)
    digests = {str(k): file_sha256(c) for k, c in run.fold_checkpoints(model_id).items()}
    if not path.is_file() or not graph_matches(path, digests, run.load_config().task):
        return None
    meta = read_graph_metadata(path)
    same = (
        meta.get("folds") == folds
        and list(meta.get("tta", [])) == list(tta)
        and (meta.get("tta_merge", "mean") == merge or not tta)
    )
    return path if same else None


@ENGINES.register("onnx")
class OnnxEngine(Engine):
    """Per-fold graphs (exported on demand), or ``fused.onnx`` when it was built for exactly this request."""

    int8 = False

    def __init__(self, options: OrtOptions):
        self.options = options

    @classmethod
    def from_config(cls, cfg: Config, run: RunDir, *, batch_size: int) -> OnnxEngine:
        return cls(OrtOptions.from_config(cfg, run, batch_size))

    def prepare(self, run: RunDir, model_id: str, cfg: Config) -> None:
        by_fold = run.fold_checkpoints(model_id)
        task, q = cfg.task, self.int8
        if any(
            not graph_matches(run.onnx(model_id, k, int8=q), {str(k): file_sha256(p)}, task) for k, p in by_fold.items()
        ):
            log.info(
                "%s: no %sONNX graphs exported from these checkpoints; exporting them now (same as `comp export%s`)",
                model_id,
                "int8 " if q else "",
                " --int8" if q else "",
            )
            export_model(run, model_id, cfg, int8=Int8Options() if q else None)

    def runner(self, run: RunDir, model_id: str, fold: int, ckpt: Checkpoint) -> Runner:
        return _Lazy(lambda: OrtRunner(run.onnx(model_id, fold, int8=self.int8), options=self.options))

    def fused(self, run: RunDir, model_id: str, folds: list[int], tta: list[str], merge: str) -> Runner | None:
        path = usable_fused(run, model_id, folds, tta, merge, int8=self.int8)
        if path is None:
            return None
        log.info("%s: using %s (folds %s, tta %s)", model_id, path, folds, ",".join(tta) or "none")
        return OrtRunner(path, options=self.options)


@ENGINES.register("int8")
class Int8Engine(OnnxEngine):
    """The int8 graphs of ``comp export --int8`` (``fold<k>.int8.onnx``, ``fused.int8.onnx`` when built for
    this request), exported and checked on demand like the float ones; onnxruntime runs them on the CPU."""

    int8 = True

    @classmethod
    def from_config(cls, cfg: Config, run: RunDir, *, batch_size: int) -> Int8Engine:
        note_speed(accelerated=providers()[0] != "CPUExecutionProvider")
        return cls(OrtOptions.from_config(cfg, run, batch_size))
