"""``comp export``: fold checkpoints -> ONNX graphs that output probabilities, checked against PyTorch.

Each graph carries its preprocessing in the ONNX metadata (mean, std, image size, classes, timm name, eval
transform), so inference needs only the file. A graph that misses the parity tolerance is never written.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from comp.config import Config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table
from comp.errors import CompError
from comp.inference._tta import TTA_OPS, check_merge, merge_torch, parse_tta
from comp.run import (
    CheckpointMeta,
    RunDir,
    atomic_write,
    check_output,
    data_inputs,
    file_sha256,
    graph_metadata,
    read_graph_metadata,
    write_json,
)
from comp.training._models import model_from_checkpoint

read_metadata = read_graph_metadata
log = logging.getLogger(__name__)
MIN_OPSET, MAX_OPSET = 9, 20
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
PARITY_IMAGES = 16
INPUT, OUTPUT = "input", "probs"


class ProbModel(nn.Module):
    """A classifier whose output is softmax probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if logits.dtype != torch.float32:  # traced statically: an fp32 graph gets no Cast the fp16 converter mishandles
            logits = logits.float()
        return torch.softmax(logits, dim=1)


class FusedModel(nn.Module):
    """Every fold (and TTA view) in one graph: per fold merge the views, then average the folds."""

    def __init__(self, models: list[nn.Module], tta: list[str] | tuple[str, ...] = (), merge: str = "mean"):
        super().__init__()
        self.folds = nn.ModuleList(ProbModel(m) for m in models)
        self.tta, self.merge = list(tta), merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [x] + [TTA_OPS[n](x) for n in self.tta]
        per_fold = [merge_torch([m(v) for v in xs], self.merge) for m in self.folds]
        return torch.stack(per_fold).mean(0)


def metadata(meta: CheckpointMeta, **extra) -> dict[str, str]:
    """The preprocessing and provenance a consumer of the graph needs, as ONNX metadata strings."""
    return graph_metadata(meta, input=INPUT, output=OUTPUT, **extra)


def export_graph(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, meta: dict[str, str], fp16: bool
) -> None:
    """Trace ``module`` to ONNX at ``path`` (dynamic batch), optionally convert to fp16, attach metadata."""
    module.eval()  # the exporter restores the wrapper's mode afterwards, so it must already be eval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy; it needs no onnxscript
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=opset,
        )
    model = onnx.load(str(path))
    if fp16:
        model = to_fp16(model)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


# Nodes kept in float32 in an fp16 graph: reductions, exponentials and normalisations lose the most precision
# in half (softmax over logits, layer norms' mean/variance, the fused graph's geometric TTA merge).
FP32_OPS = (
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "LayerNormalization",
    "Erf",
)


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations with float32 inputs/outputs and the sensitive nodes in float32
    (onnxconverter-common's converter, the maintained one)."""
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP32_OPS]
    )
    return _float32_outputs(half)


def _float32_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converter can leave a graph output in float16 when its producer is in the block list; cast it back,
    so every graph, fp16 or not, returns float32 probabilities."""
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16:
            continue
        inner = f"{out.name}_fp16"
        for node in model.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        model.graph.node.append(onnx.helper.make_node("Cast", [inner], [out.name], to=onnx.TensorProto.FLOAT))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return model


def cpu_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_batch(cfg: Config, meta: CheckpointMeta, run: RunDir, n: int = PARITY_IMAGES) -> tuple[torch.Tensor, str]:
    """Up to ``n`` preprocessed validation images of the checkpoint's fold (test images when those are gone)."""
    transform = from_dict(meta.eval_transform)
    data = cfg.data
    paths, source = [], ""
    try:
        table = load_train_table(data, task=cfg.task)
        fold_of = run.read_folds(data.id_column).reindex(table.df[data.id_column]).to_numpy()
        paths = [p for p, f in zip(table.paths, fold_of) if f == meta.fold][:n]
        source = f"fold {meta.fold} validation images"
    except (CompError, OSError, KeyError):
        paths = []
    if not paths:
        try:
            paths, source = load_test_table(data)[1][:n], "test images"
        except CompError as exc:
            raise CompError(f"no images to check ONNX parity on (train and test both unusable: {exc})") from None
    ds = ImageDataset(paths, transform=transform)
    return torch.stack([ds[i][0] for i in range(len(ds))]).float(), source


def write_checked(
    module: nn.Module,
    reference: np.ndarray,
    batch: torch.Tensor,
    path: Path,
    opset: int,
    meta: dict[str, str],
    fp16: bool,
) -> float:
    """Export to a temporary file, compare with ``reference`` on ``batch``, and rename into place only on pass."""
    precision = "fp16" if fp16 else "fp32"
    diffs: list[float] = []

    def write(tmp: Path) -> None:
        export_graph(module, batch[:1], tmp, opset, meta, fp16)
        got = cpu_session(tmp).run([OUTPUT], {INPUT: batch.numpy()})[0]
        diffs.append(float(np.abs(got.astype(np.float64) - reference).max()))
        if not diffs[0] <= TOLERANCE[precision]:
            raise CompError(
                f"{path.name}: ONNX ({precision}) differs from PyTorch by {diffs[0]:.2e} > "
                f"{TOLERANCE[precision]:.0e}; nothing written (try another --opset, or drop --fp16)"
            )

    atomic_write(path, write)
    return diffs[0]


def _torch_probs(module: nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(batch).double().numpy()


def export_model(
    run: RunDir,
    model_id: str,
    cfg: Config,
    *,
    fp16: bool = False,
    fuse: bool = False,
    opset: int = 17,
    tta: list[str] | None = None,
    tta_merge: str = "mean",
) -> dict:
    """Export every fold of one model (and optionally the fused graph); write and return ``export.json``."""
    by_fold = run.fold_checkpoints(model_id)
    if not by_fold:
        raise CompError(f"{run.model_dir(model_id)} has no fold checkpoints; run `comp train-folds` first")
    tta = parse_tta(tta)
    reads = [*((f"the fold {k} checkpoint", p) for k, p in by_fold.items()), *data_inputs(cfg.data)]
    for out in [*(run.onnx(model_id, k) for k in by_fold), run.fused(model_id), run.export_report(model_id)]:
        check_output(out, reads, label="export's output", fix="remove that link and export again")
    precision = "fp16" if fp16 else "fp32"
    files, models, batches, digests = [], [], [], {}
    for fold, path in by_fold.items():
        model, ckpt = model_from_checkpoint(path)
        meta = ckpt.meta
        batch, source = parity_batch(cfg, meta, run)
        module = ProbModel(model)
        out = run.onnx(model_id, fold)
        diff = write_checked(
            module,
            _torch_probs(module, batch),
            batch,
            out,
            opset,
            metadata(
                meta,
                fold=fold,
                precision=precision,
                tta=[],
                tta_merge="mean",
                checkpoints={str(fold): file_sha256(path)},
            ),
            fp16,
        )
        log.info(f"{out}: max |onnx - torch| = {diff:.2e} on {len(batch)} {source} ({precision})")
        files.append({"file": out.name, "fold": fold, "max_abs_diff": diff, "images": len(batch), "checked_on": source})
        digests[str(fold)] = file_sha256(path)
        models.append(model)
        batches.append(batch)
    if fuse:
        batch = torch.cat(batches)[:PARITY_IMAGES]
        fused = FusedModel(models, tta, tta_merge)
        out = run.fused(model_id)
        folds = [f["fold"] for f in files]
        diff = write_checked(
            fused,
            _torch_probs(fused, batch),
            batch,
            out,
            opset,
            metadata(meta, folds=folds, precision=precision, tta=tta, tta_merge=tta_merge, checkpoints=digests),
            fp16,
        )
        log.info(
            f"{out}: max |onnx - mean of torch folds| = {diff:.2e} on {len(batch)} images ({precision}, tta {tta or 'none'})"
        )
        files.append(
            {
                "file": out.name,
                "folds": folds,
                "tta": tta,
                "tta_merge": tta_merge,
                "max_abs_diff": diff,
                "images": len(batch),
            }
        )
    elif (stale := run.fused(model_id)).is_file():
        stale.unlink()  # built from the previous graphs: predict must not pick it up
        log.info(f"{stale}: removed (built from the previous export; pass --fuse to rebuild it)")
    report = {
        "model_id": model_id,
        "precision": precision,
        "opset": opset,
        "tolerance": TOLERANCE[precision],
        "files": files,
    }
    write_json(run.export_report(model_id), report)
    return report


def select_models(run: RunDir, model_ids: list[str] | tuple[str, ...] | None) -> list[str]:
    """The requested model ids (all trained ones when none), failing on unknown or untrained ids."""
    run.require()
    have = run.model_ids()
    if not have:
        raise CompError(f"{run.root} holds no fold checkpoints under models/; run `comp train-folds` first")
    for mid in model_ids or ():
        if mid not in have:
            raise CompError(
                f"--model {mid}: no checkpoints in {run.model_dir(mid)}; trained models are {', '.join(have)}"
            )
    return list(model_ids) if model_ids else have


def export_run(
    run_dir: str | Path,
    *,
    models: list[str] | None = None,
    fp16: bool = False,
    fuse: bool = False,
    opset: int = 17,
    tta: list[str] | None = None,
    tta_merge: str = "mean",
) -> dict[str, dict]:
    """Export the chosen models of a run folder (all by default); returns {model_id: export report}.

    ``tta`` views go inside the fused graph, so they need ``fuse=True`` (per-fold graphs take TTA at predict time).
    """
    if tta and not fuse:
        raise CompError("--tta only applies to the fused graph; add --fuse (per-fold graphs take TTA at predict time)")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CompError(
            f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (the range the exporter writes), got {opset}"
        )
    check_merge(tta_merge)
    run = RunDir(run_dir)
    mids = select_models(run, models)
    cfg = run.load_config()
    return {
        mid: export_model(run, mid, cfg, fp16=fp16, fuse=fuse, opset=opset, tta=tta or [], tta_merge=tta_merge)
        for mid in mids
    }
