"""``comp export``: fold checkpoints -> ONNX graphs that output the task's predictions, checked against PyTorch.

A graph ends in its checkpoint's own output head (``comp.training._outputs.Predictor``): softmax rows
(classification, and every checkpoint written before tasks existed), a sigmoid per label (multilabel), or
the target values in their own units (regression: the identity or a sigmoid, then the scaling fitted on that
fold's training part). The fused graph merges each fold's TTA views, then averages the folds, in those units.

Each graph carries its preprocessing in the ONNX metadata (mean, std, image size, classes, timm name, eval
transform) and its task and output head, so inference needs only the file. A graph that misses the parity
tolerance is never written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from comp.config import Config
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table
from comp.errors import CompError
from comp.inference._fp16 import to_fp16
from comp.inference._int8 import Int8Check, Int8Options, note_speed, write_int8
from comp.inference._tta import check_merge, merge_torch, parse_tta, views
from comp.run import (
    CheckpointMeta,
    FileSet,
    RunDir,
    atomic_write,
    check_output,
    data_inputs,
    file_sha256,
    graph_metadata,
    read_graph_metadata,
)
from comp.tasks import get_task
from comp.training._models import model_from_checkpoint
from comp.training._outputs import OutputSpec, Predictor
from comp.training._tower import test_metadata, train_metadata

read_metadata = read_graph_metadata
log = logging.getLogger(__name__)
MIN_OPSET, MAX_OPSET = 9, 20
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
PARITY_IMAGES = 16
# the output keeps its name "probs" whatever the task (graphs and bundles of earlier versions read it so);
# it holds probabilities, or target values in their units for regression
INPUT, OUTPUT = "input", "probs"
META = "meta"  # a metadata tower's second input: raw (N, features) float32, NaN where missing


def predictor(model: nn.Module, meta: CheckpointMeta) -> Predictor:
    """A fold's model followed by its checkpoint's own output head (a format-1 checkpoint: softmax)."""
    return Predictor(model, OutputSpec.from_dict(meta.output))


class FusedModel(nn.Module):
    """Every fold (and TTA view) in one graph: per fold merge the views, then average the folds.

    ``folds`` are :class:`Predictor` s, so each fold's predictions are in the task's units before they are
    merged and averaged (regression: each fold through its own target scaling, then the mean of the folds)."""

    def __init__(
        self,
        folds: Sequence[nn.Module],
        tta: list[str] | tuple[str, ...] = (),
        merge: str = "mean",
        task: str = "classification",
    ):
        super().__init__()
        self.folds = nn.ModuleList(folds)
        self.tta, self.merge, self.task = list(tta), check_merge(merge, task), task

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        xs = views(x, self.tta)
        extra = () if meta is None else (meta,)  # TTA views change the image only
        per_fold = [merge_torch([m(v, *extra) for v in xs], self.merge, self.task) for m in self.folds]
        return torch.stack(per_fold).mean(0)


@dataclass(frozen=True)
class Parity:
    """How far a graph is from its reference: the largest absolute difference and, for values in a target's
    units, the largest ``|diff| / (1 + |value|)``.

    Why relative for values: float32 rounding through a network grows with the magnitude of what it computes,
    so a correct graph predicting prices in the thousands differs from PyTorch by ~1e-3, which an absolute 1e-4
    would refuse; dividing by ``1 + |value|`` keeps the absolute check near zero (where a relative one would
    blow up) and, for values in [0, 1], stays within a factor two of it. Probabilities keep the absolute check."""

    abs: float
    rel: float | None = None

    @classmethod
    def of(cls, got: np.ndarray, reference: np.ndarray, relative: bool) -> Parity:
        got, reference = np.asarray(got, np.float64), np.asarray(reference, np.float64)
        diff = np.abs(got - reference)
        rel = float((diff / (1.0 + np.abs(reference))).max()) if relative and diff.size else None
        return cls(float(diff.max()) if diff.size else 0.0, rel)

    @property
    def checked(self) -> float:
        """The figure held against the tolerance."""
        return self.abs if self.rel is None else self.rel

    def describe(self) -> str:
        return f"max |diff| = {self.abs:.2e}" + (
            "" if self.rel is None else f", max |diff|/(1+|value|) = {self.rel:.2e}"
        )

    def report(self) -> dict[str, float]:
        return {"max_abs_diff": self.abs, **({} if self.rel is None else {"max_rel_diff": self.rel})}


def relative_parity(task: str) -> bool:
    """Whether graphs of ``task`` are checked relative to their values (target values, not probabilities)."""
    return not get_task(task).probabilistic


def metadata(meta: CheckpointMeta, **extra) -> dict[str, str]:
    """The preprocessing and provenance a consumer of the graph needs, as ONNX metadata strings: with the
    task and the output head, so a graph written before heads existed is never taken for one that has it."""
    head = OutputSpec.from_dict(meta.output).to_dict()
    return graph_metadata(meta, input=INPUT, output=OUTPUT, task=meta.task, output_head=head, **extra)


def export_graph(
    module: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    meta: dict[str, str],
    fp16: bool,
) -> None:
    """Trace ``module`` to ONNX at ``path`` (dynamic batch), optionally convert to fp16, attach metadata.
    ``example``: images, or (images, raw metadata rows) for a metadata tower (inputs ``input`` and ``meta``)."""
    example = example if isinstance(example, tuple) else (example,)
    names = [INPUT, META][: len(example)]
    module.eval()  # the exporter restores the wrapper's mode afterwards, so it must already be eval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy; it needs no onnxscript
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT: {0: "batch"}},
            opset_version=opset,
        )
    model = onnx.load(str(path))
    if fp16:
        model = to_fp16(model)
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def cpu_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_batch(cfg: Config, meta: CheckpointMeta, run: RunDir, n: int = PARITY_IMAGES) -> tuple[torch.Tensor, str]:
    """Up to ``n`` preprocessed validation images of the checkpoint's fold (test images when those are gone)."""
    inputs, source = parity_inputs(cfg, meta, run, n)
    return inputs[0], source


def parity_inputs(
    cfg: Config, meta: CheckpointMeta, run: RunDir, n: int = PARITY_IMAGES
) -> tuple[tuple[torch.Tensor, ...], str]:
    """Up to ``n`` preprocessed validation images of the checkpoint's fold (test images when those are gone),
    as the graph's inputs: (images,), or (images, raw metadata rows) for a metadata tower."""
    transform = from_dict(meta.eval_transform)
    data = cfg.data
    paths, source, rows = [], "", None
    try:
        table = load_train_table(data, task=cfg.task)
        fold_of = run.fold_of(data.id_column).reindex(table.df[data.id_column]).to_numpy()
        idx = np.flatnonzero(fold_of == meta.fold)[:n]
        paths = [table.paths[i] for i in idx]
        rows = train_metadata(data, meta.tower, table.df)[idx] if meta.tower else None
        source = f"fold {meta.fold} validation images"
    except (CompError, OSError, KeyError):
        paths = []
    if not paths:
        try:
            paths, source = load_test_table(data)[1][:n], "test images"
            rows = test_metadata(data, meta.tower)[:n] if meta.tower else None
        except CompError as exc:
            raise CompError(f"no images to check ONNX parity on (train and test both unusable: {exc})") from None
    ds = ImageDataset(paths, transform=transform)
    images = torch.stack([ds[i][0] for i in range(len(ds))]).float()
    return ((images,) if rows is None else (images, torch.from_numpy(rows))), source


def write_checked(
    module: nn.Module,
    reference: np.ndarray,
    batch: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    meta: dict[str, str],
    fp16: bool,
    relative: bool = False,
    *,
    into: FileSet | None = None,
) -> tuple[Parity, Path]:
    """Export to a temporary file, compare with ``reference`` on ``batch`` (relative to the values for a
    regression graph, see :class:`Parity`), and rename into place only on pass (or, ``into`` a set of files,
    at its commit). Returns the parity and where the graph is now (the staged temporary, within a set)."""
    precision = "fp16" if fp16 else "fp32"
    found: list[Parity] = []
    where: list[Path] = []

    def write(tmp: Path) -> None:
        where.append(tmp)
        export_graph(module, tuple(b[:1] for b in batch), tmp, opset, meta, fp16)
        got = cpu_session(tmp).run([OUTPUT], dict(zip([INPUT, META], (b.numpy() for b in batch))))[0]
        found.append(Parity.of(got, reference, relative))
        if not found[0].checked <= TOLERANCE[precision]:
            what = "relative to its values (|diff| / (1 + |value|))" if relative else "by"
            raise CompError(
                f"{path.name}: ONNX ({precision}) differs from PyTorch {what} {found[0].checked:.2e} > "
                f"{TOLERANCE[precision]:.0e}; nothing written (try another --opset, or drop --fp16)"
            )

    if into is None:
        atomic_write(path, write)
        return found[0], path
    into.add(path, write)
    return found[0], where[0]


def _torch_probs(module: nn.Module, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The module's predictions on ``batch`` (its inputs) in float64 (the parity reference)."""
    with torch.no_grad():
        return module.eval()(*batch).double().numpy()


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
    int8: Int8Options | None = None,
) -> dict:
    """Export every fold of one model (and optionally the fused graph, and with ``int8`` each graph's int8
    twin, checked on held-out rows); write and return ``export.json``. Every graph and the report are committed
    together: a refused graph leaves the folder as it was."""
    by_fold = run.fold_checkpoints(model_id)
    if not by_fold:
        raise CompError(f"{run.model_dir(model_id)} has no fold checkpoints; run `comp train-folds` first")
    if int8 is not None and fp16:
        raise CompError("--int8 quantizes the float32 graphs; drop --fp16")
    tta = parse_tta(tta)
    reads = [*((f"the fold {k} checkpoint", p) for k, p in by_fold.items()), *data_inputs(cfg.data)]
    outs = [run.onnx(model_id, k, int8=q) for k in by_fold for q in (False, True)]
    for out in [*outs, run.fused(model_id), run.fused(model_id, int8=True), run.export_report(model_id)]:
        check_output(out, reads, label="export's output", fix="remove that link and export again")
    check_merge(tta_merge, cfg.task)
    relative = relative_parity(cfg.task)
    precision = "fp16" if fp16 else "fp32"
    files, modules, batches, digests, quantized = [], [], [], {}, []
    staged = FileSet(run.model_dir(model_id))

    def quantize(graph: Path, out: Path, meta: CheckpointMeta, fold: int | None) -> None:
        if int8 is None:
            return
        checks: list[Int8Check] = []
        names = [INPUT, META]
        args = dict(cfg=cfg, run=run, meta=meta, fold=fold, options=int8, names=names, output=OUTPUT, label=out.name)
        staged.add(out, lambda tmp: checks.append(write_int8(graph, tmp, **args)))  # type: ignore[arg-type]
        log.info(f"{out}: int8 against float32, {checks[0].describe()}")
        quantized.append({"file": out.name, **({} if fold is None else {"fold": fold}), **checks[0].report()})

    try:
        for fold, path in by_fold.items():
            model, ckpt = model_from_checkpoint(path)
            meta = ckpt.meta
            batch, source = parity_inputs(cfg, meta, run)
            module = predictor(model, meta)
            out = run.onnx(model_id, fold)
            parity, graph = write_checked(
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
                relative,
                into=staged,
            )
            log.info(f"{out}: onnx against torch, {parity.describe()} on {len(batch[0])} {source} ({precision})")
            files.append(
                {"file": out.name, "fold": fold, **parity.report(), "images": len(batch[0]), "checked_on": source}
            )
            quantize(graph, run.onnx(model_id, fold, int8=True), meta, fold)
            digests[str(fold)] = file_sha256(path)
            modules.append(module)
            batches.append(batch)
        if fuse:
            batch = tuple(torch.cat(parts)[:PARITY_IMAGES] for parts in zip(*batches))
            fused = FusedModel(modules, tta, tta_merge, cfg.task)
            out = run.fused(model_id)
            folds = [f["fold"] for f in files]
            parity, graph = write_checked(
                fused,
                _torch_probs(fused, batch),
                batch,
                out,
                opset,
                metadata(meta, folds=folds, precision=precision, tta=tta, tta_merge=tta_merge, checkpoints=digests),
                fp16,
                relative,
                into=staged,
            )
            log.info(
                f"{out}: onnx against the mean of torch folds, {parity.describe()} on {len(batch[0])} images "
                f"({precision}, tta {tta or 'none'})"
            )
            files.append(
                {
                    "file": out.name,
                    "folds": folds,
                    "tta": tta,
                    "tta_merge": tta_merge,
                    **parity.report(),
                    "images": len(batch[0]),
                }
            )
            quantize(graph, run.fused(model_id, int8=True), meta, None)
        report = {
            "model_id": model_id,
            "task": cfg.task,
            "precision": precision,
            "opset": opset,
            "tolerance": TOLERANCE[precision],
            "files": files,
        }
        if int8 is not None:
            report["int8"] = {"calib": int8.calib, "max_drop": int8.max_drop, "method": int8.method, "files": quantized}
        staged.json(run.export_report(model_id), report)
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    stale = [p for p in (*outs, run.fused(model_id), run.fused(model_id, int8=True)) if p.is_file()]
    for p in stale:
        if p.name not in {f["file"] for f in [*files, *quantized]}:
            p.unlink()  # built from the previous graphs: predict must not pick it up
            log.info(f"{p}: removed (built by the previous export; export with the same --fuse/--int8 to rebuild it)")
    return report


def select_models(run: RunDir, model_ids: list[str] | tuple[str, ...] | None) -> list[str]:
    """The requested model ids (all trained ones when none), failing on unknown or untrained ids."""
    run.require()
    have = run.trained_ids()
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
    int8: bool = False,
    calib: int = Int8Options.calib,
    max_drop: float = Int8Options.max_drop,
) -> dict[str, dict]:
    """Export the chosen models of a run folder (all by default); returns {model_id: export report}.

    ``tta`` views go inside the fused graph, so they need ``fuse=True`` (per-fold graphs take TTA at predict time).
    ``int8``: also write each graph quantized to int8 (``fold<k>.int8.onnx``, ``fused.int8.onnx``), calibrated
    on ``calib`` training images and refused when the metric on held-out rows drops by more than ``max_drop``.
    """
    options = Int8Options(calib=calib, max_drop=max_drop) if int8 else None
    if int8 and fp16:
        raise CompError("--int8 quantizes the float32 graphs; drop --fp16")
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
    check_merge(tta_merge, cfg.task)  # geometric renormalises class rows: refused for other tasks, before any write
    if options is not None:
        note_speed()
    return {
        mid: export_model(
            run, mid, cfg, fp16=fp16, fuse=fuse, opset=opset, tta=tta or [], tta_merge=tta_merge, int8=options
        )
        for mid in mids
    }
