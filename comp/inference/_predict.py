"""``comp predict``: fold models (onnxruntime or PyTorch) + TTA -> per-model ``test.csv``, optional TTA OOF, a submission.

Images are decoded once per batch and fed to every fold, so k folds cost one pass over the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from comp._progress import track
from comp._tables import format_table
from comp.config import Config, load_config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table, read_csv
from comp.errors import CompError
from comp.inference._export import INPUT, OUTPUT, ProbModel, export_model, select_models
from comp.inference._tta import check_merge, merge_probs, parse_tta, views
from comp.metrics import get_metric
from comp.run import Checkpoint, FileSet, Predictions, RunDir, file_sha256, read_graph_metadata
from comp.submission._format import make_submission, validate_submission
from comp.training._engine import resolve_device
from comp.training._models import model_from_checkpoint

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
log = logging.getLogger(__name__)


def providers() -> list[str]:
    """onnxruntime providers to try, best first; GPU ones only when a CUDA device is visible (the -gpu wheel lists them anyway)."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in avail] if torch.cuda.is_available() else []
    return gpu + ["CPUExecutionProvider"]


@dataclass
class EngineOptions:
    """How onnxruntime runs a graph; from the config's ``predict`` block (see ``provider_chain``)."""

    tensorrt: bool = True
    trt_fp16: bool = True
    cudnn_conv_algo_search: str = "exhaustive"
    cuda_graph: bool = False
    batch_size: int = 64
    cache_dir: Path | None = None  # TensorRT engine and timing caches (under the run folder)

    @classmethod
    def from_config(cls, cfg: Config, run: RunDir, batch_size: int) -> EngineOptions:
        p = cfg.predict
        return cls(p.tensorrt, p.trt_fp16, p.cudnn_conv_algo_search, p.cuda_graph, batch_size, run.trt_cache)


def provider_chain(
    available: list[str], options: EngineOptions, input_shape: tuple[int, ...]
) -> list[tuple[str, dict]]:
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
    """One onnxruntime session: float32 NCHW batch in, probabilities out (I/O binding on CUDA)."""

    def __init__(self, path: Path, threads: int | None = None, options: EngineOptions | None = None):
        import onnxruntime as ort

        self.options = options or EngineOptions()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # one process per machine is the norm here; torch's thread count already reflects the user's setting
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        available = providers()
        probe = (
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]) if len(available) > 1 else None
        )
        shape = tuple(probe.get_inputs()[0].shape) if probe is not None else ()
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
        shape = self.session.get_inputs()[0].shape
        self(np.zeros((1, *shape[1:]), np.float32))  # warm-up: first run allocates and picks kernels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
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


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class TorchRunner:
    """A PyTorch fold model with softmax: float32 NCHW batch in, probabilities out (optionally torch.compile'd)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, compile: str = "none"):
        self.model, self.device = ProbModel(model).eval().to(device), device
        if compile != "none":
            self.model = torch.compile(self.model, mode=compile)  # type: ignore[assignment]

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)).cpu().numpy()


class _Lazy:
    """Opens its onnxruntime session on first use: when predict runs fused.onnx, the per-fold sessions never open."""

    def __init__(self, make):
        self.make, self.runner = make, None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.runner is None:
            self.runner = self.make()
        return self.runner(x)


@dataclass
class Fold:
    """One fold's model, ready to run."""

    fold: int
    ckpt: Checkpoint
    runner: object


def graph_matches(onnx_path: Path, digests: dict[str, str]) -> bool:
    """Whether ``onnx_path`` was exported from exactly these checkpoints ({fold: sha256}), by its metadata.

    Timestamps are not trusted: a same-shaped graph copied from another run would otherwise be used."""
    if not onnx_path.is_file():
        return False
    try:
        meta = read_graph_metadata(onnx_path)
    except CompError:
        return False
    return meta.get("checkpoints") == digests


def load_folds(
    run: RunDir,
    model_id: str,
    cfg: Config,
    engine: str,
    *,
    expect_folds: int | None = None,
    batch_size: int | None = None,
) -> list[Fold]:
    """Every fold of a model as a runner; the onnx engine exports (with its parity check) graphs that are
    missing or were exported from other checkpoints."""
    by_fold = run.fold_checkpoints(model_id)
    paths = list(by_fold.values())
    if expect_folds is not None and len(paths) != expect_folds:
        have = sorted(by_fold)
        missing = sorted(set(range(expect_folds)) - set(have))
        raise CompError(
            f"{run.model_dir(model_id)} has checkpoints for folds {have} of {expect_folds}; train the rest "
            f"(comp train-folds --folds {','.join(map(str, missing))}) or pass --allow-missing-folds"
        )
    digests = {k: file_sha256(p) for k, p in by_fold.items()}
    if engine == "onnx" and any(not graph_matches(run.onnx(model_id, k), {str(k): digests[k]}) for k in by_fold):
        log.info(
            "%s: no ONNX graphs exported from these checkpoints; exporting them now (same as `comp export`)", model_id
        )
        export_model(run, model_id, cfg)
    device = resolve_device(cfg.device)
    options = EngineOptions.from_config(cfg, run, batch_size or cfg.predict.batch_size)
    out = []
    for k, p in by_fold.items():
        model, ckpt = model_from_checkpoint(p)
        runner = (
            _Lazy(lambda k=k: OrtRunner(run.onnx(model_id, k), options=options))
            if engine == "onnx"
            else TorchRunner(model, device, cfg.predict.compile)
        )
        out.append(Fold(k, ckpt, runner))
    sizes = {(f.ckpt.meta.image_size, tuple(f.ckpt.meta.classes)) for f in out}
    if len(sizes) > 1:
        raise CompError(
            f"folds of {run.model_dir(model_id)} disagree on image size or classes; retrain them with one config"
        )
    return out


def usable_fused(run: RunDir, model_id: str, folds: list[Fold], tta: list[str], merge: str) -> Path | None:
    """``fused.onnx`` when it was built from exactly these checkpoints (by their sha256) with the requested
    TTA views and merge; otherwise None and the per-fold graphs are used."""
    path = run.fused(model_id)
    digests = {str(k): file_sha256(c) for k, c in run.fold_checkpoints(model_id).items()}
    if not graph_matches(path, digests):
        return None
    meta = read_graph_metadata(path)
    same = (
        meta.get("folds") == [f.fold for f in folds]
        and list(meta.get("tta", [])) == list(tta)
        and (meta.get("tta_merge", "mean") == merge or not tta)
    )
    return path if same else None


def run_views(
    runners: list,
    paths: list[Path],
    transform,
    tta: list[str],
    merge: str,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """(plain, merged-TTA) probabilities, each (runners, N, C), decoding every image once for all runners."""
    loader: DataLoader = DataLoader(
        ImageDataset(paths, transform=transform),  # type: ignore[arg-type]
        batch_size=batch_size,
        num_workers=num_workers,
    )
    plain: list[list[np.ndarray]] = [[] for _ in runners]
    merged: list[list[np.ndarray]] = [[] for _ in runners]
    for x, _ in track(loader, desc, enabled=bool(desc)):
        xs = [v.float().numpy() for v in views(x.float(), tta)]
        for i, run in enumerate(runners):
            probs = np.stack([run(v) for v in xs])
            plain[i].append(probs[0])
            merged[i].append(merge_probs(probs, merge))
    return np.stack([np.concatenate(p) for p in plain]), np.stack([np.concatenate(m) for m in merged])


def _check_sample(data, test_ids: pd.Series) -> Path | None:
    """The sample submission path after checking it lists exactly the test ids (None when the config has none)."""
    if not data.sample_submission:
        return None
    path = Path(data.sample_submission)
    sample = read_csv(path, "sample submission")
    id_col = data.id_column if data.id_column in sample.columns else sample.columns[0]
    want, got = set(sample[id_col]), set(test_ids)
    if want != got:
        first = next(iter(sorted(want - got) or sorted(got - want)))
        raise CompError(
            f"{path}: {len(want - got)} ids missing from and {len(got - want)} extra in the test ids "
            f"(first: {first!r}); point data.sample_submission and data.test_csv at the same competition"
        )
    return path


def oof_tta(
    run: RunDir,
    model_id: str,
    cfg: Config,
    folds: list[Fold],
    tta: list[str],
    merge: str,
    batch_size: int,
    progress: bool,
) -> tuple[Predictions, float, float]:
    """Each fold's model with TTA on its own validation rows: (OOF with TTA, CV without, CV with TTA)."""
    data = cfg.data
    table = load_train_table(data)
    id_col = data.id_column
    fold_of = run.read_folds(id_col).reindex(table.df[id_col]).to_numpy()
    if pd.isna(fold_of).any():
        raise CompError(f"{run.folds} lacks some ids of {data.train_csv}; the training table changed since train-folds")
    classes = folds[0].ckpt.meta.classes
    plain = np.full((len(table.df), len(classes)), np.nan)
    merged = plain.copy()
    for f in folds:
        idx = np.flatnonzero(fold_of == f.fold)
        p, m = run_views(
            [f.runner],
            [table.paths[i] for i in idx],
            from_dict(f.ckpt.meta.eval_transform),
            tta,
            merge,
            batch_size,
            data.num_workers,
            f"{model_id} oof fold {f.fold}" if progress else "",
        )
        plain[idx], merged[idx] = p[0], m[0]
    done = ~np.isnan(merged[:, 0])
    metric = get_metric(cfg.metric)
    pred = Predictions(
        table.df[id_col].to_numpy(dtype=object),
        list(classes),
        merged,
        fold_of.astype(np.int64),
        np.asarray(table.classes, dtype=object)[table.targets],
        id_col,
    ).take(done)
    y = table.targets[done]
    return pred, float(metric(y, plain[done])), float(metric(y, merged[done]))


def resolve_options(cfg: Config, engine, tta, tta_merge, batch_size) -> tuple[str, list[str], str, int]:
    """Call options over the config's ``predict`` block, validated."""
    p = cfg.predict
    engine = engine or p.engine
    if engine not in ("onnx", "torch"):
        raise CompError(f"--engine must be onnx or torch, got {engine!r}")
    batch_size = p.batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise CompError(f"--batch-size must be >= 1, got {batch_size}")
    return engine, parse_tta(p.tta if tta is None else tta), check_merge(tta_merge or p.tta_merge), batch_size


@dataclass
class ModelPrediction:
    model_id: str
    folds: int
    test: Path
    fused: bool
    cv: float | None = None  # with --oof: CV without and with the TTA
    cv_tta: float | None = None
    oof_tta: Path | None = None


@dataclass
class PredictResult:
    """Per-model test predictions (``RUN/models/<id>/test.csv``) and the submission, if one was written."""

    run: RunDir
    engine: str
    tta: list[str]
    tta_merge: str
    models: dict[str, ModelPrediction]
    submission: Path | None

    def test(self, model_id: str) -> pd.DataFrame:
        """A model's test probabilities (id, one column per class)."""
        return self.run.read_test(model_id).frame()

    def table(self) -> str:
        rows = [
            {
                "model": m.model_id,
                "folds": m.folds,
                "engine": self.engine,
                "tta": ",".join(self.tta) or "none",
                "cv": m.cv,
                "cv_tta": m.cv_tta,
            }
            for m in self.models.values()
        ]
        return format_table(rows, ["model", "folds", "engine", "tta", "cv", "cv_tta"])


def predict_run(
    run_dir: str | Path,
    *,
    models: list[str] | None = None,
    engine: str | None = None,
    tta: list[str] | str | None = None,
    tta_merge: str | None = None,
    overrides: list[str] | dict | tuple = (),
    out: str | Path | None = None,
    oof: bool = False,
    batch_size: int | None = None,
    allow_missing_folds: bool = False,
    progress: bool = True,
) -> PredictResult:
    """Predict the test set with every chosen model of a run; write test.csv per model and the submission."""
    run = RunDir(run_dir)
    mids = select_models(run, models)
    cfg = load_config(run.load_config(), overrides=overrides)
    engine, tta_views, merge, bs = resolve_options(cfg, engine, tta, tta_merge, batch_size)
    data = cfg.data
    test_df, paths = load_test_table(data)
    sample = _check_sample(data, test_df[data.id_column])
    out_path = Path(out) if out else Path("submissions") / f"{run.root.resolve().name}.csv"
    results: dict[str, ModelPrediction] = {}
    probs_by_model, classes = [], None
    files = FileSet(run.root)  # every model's test.csv (and oof_tta.csv) and the submission land together
    try:
        for mid in mids:
            folds = load_folds(
                run, mid, cfg, engine, expect_folds=None if allow_missing_folds else cfg.folds.n_splits, batch_size=bs
            )
            ck = folds[0].ckpt.meta
            if classes is not None and ck.classes != classes:
                raise CompError(
                    f"{mid} predicts classes {ck.classes} but {mids[0]} predicts {classes}; predict them separately"
                )
            classes = ck.classes
            fused = usable_fused(run, mid, folds, tta_views, merge) if engine == "onnx" else None
            if fused is not None:  # one session call per batch does every fold and TTA view
                log.info(
                    "%s: using %s (folds %s, tta %s)",
                    mid,
                    fused,
                    [f.fold for f in folds],
                    ",".join(tta_views) or "none",
                )
                runners: list[Any] = [OrtRunner(fused, options=EngineOptions.from_config(cfg, run, bs))]
                views_tta: list[str] = []
            else:
                runners, views_tta = [f.runner for f in folds], tta_views
            _, merged = run_views(
                runners,
                paths,
                from_dict(ck.eval_transform),
                views_tta,
                merge,
                bs,
                data.num_workers,
                f"{mid} test" if progress else "",
            )
            probs = merged.mean(0)
            test_pred = Predictions(
                test_df[data.id_column].to_numpy(dtype=object), list(classes), probs, id_column=data.id_column
            )
            info = ModelPrediction(mid, len(folds), run.test_pred(mid), fused is not None)
            if oof:
                pred, info.cv, info.cv_tta = oof_tta(run, mid, cfg, folds, tta_views, merge, bs, progress)
                info.oof_tta = run.write_oof(mid, pred, tta=True, into=files)
            run.write_test(mid, test_pred, into=files)
            results[mid] = info
            probs_by_model.append(probs)
        result = PredictResult(run, engine, tta_views, merge, results, None)
        if sample is None:
            log.warning(
                "no data.sample_submission in the config: wrote test.csv only (set it with --set data.sample_submission=FILE)"
            )
        else:
            assert classes is not None
            sub = make_submission(
                test_df[data.id_column], np.mean(probs_by_model, axis=0), classes, sample, data.id_column
            )
            validate_submission(sub, sample, classes, data.id_column)
            result.submission = files.csv(out_path, sub)
    except BaseException:
        files.discard()  # nothing of this call is committed
        raise
    files.commit()
    return result
