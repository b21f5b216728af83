"""``comp bundle``: a run or a blend -> a folder an offline Kaggle notebook predicts with, without comp.

The folder holds one fused ONNX graph per model (all its folds and TTA views inside, ending in the task's
output), ``manifest.json`` (schema ``comp.bundle/2``, documented in ``bundle_predict.py``: the task, the
submission's kind and the decision it applies, as ``make_submission`` renders it) and ``predict.py``, a copy
of ``comp/inference/bundle_predict.py`` that needs only onnxruntime, numpy and Pillow. A bundle that reads the
test table (a metadata tower's second input, a gbdt blend's boosters: ``_bundle_tables``) is ``comp.bundle/3``.

Before anything is written, each graph is run on up to 16 test images read the way predict.py reads them
(Pillow, its resize, its normalisation) and must match comp's own pipeline (PyTorch after albumentations)
and, where ``comp predict`` left one, the model's ``test.csv``; a blend must also match the blend's
``test.csv``. Target values are compared relative to their size (``comp.inference._export.Parity``). The
folder is built under a hidden temporary name beside ``--out`` and renamed into place, so a killed bundle
never looks complete.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from comp._files import write_error
from comp._tables import Rendered, table_frame
from comp._version import __version__
from comp.data._augment import from_dict
from comp.data._table import ImageDataset
from comp.errors import CompError, RunFolderError
from comp.inference import bundle_predict as bp
from comp.inference._bundle_checks import (
    KAGGLE_METADATA,
    bundle_inputs,
    check_out,
    check_preprocessing,
    compare_with_test,
    cv2_resize,
    image_size,
    normal_modes,
    parity_images,
    publish,
    submission_spec,
)
from comp.inference._bundle_source import Member, Source, resolve_source, same_images
from comp.inference._bundle_tables import check_stack, stack_block, tower_entry, tower_rows
from comp.inference._export import (
    INPUT,
    MAX_OPSET,
    META,
    MIN_OPSET,
    OUTPUT,
    TOLERANCE,
    FusedModel,
    Parity,
    cpu_session,
    export_graph,
    metadata,
    predictor,
    relative_parity,
)
from comp.inference._int8 import Int8Options, note_speed, write_int8
from comp.inference._predict import fitted_decision
from comp.inference._tta import check_merge, parse_tta
from comp.metrics import get_metric
from comp.run import Checkpoint, RunDir, file_sha256, load_checkpoint, write_json
from comp.tasks import Decision
from comp.training._models import model_from_checkpoint

log = logging.getLogger(__name__)


@dataclass(repr=False)
class BundleResult(Rendered):
    """The written bundle folder and its manifest."""

    out: Path
    manifest: dict[str, Any]

    def title(self) -> str:
        return f"BundleResult: {self.out}"

    def table(self) -> pd.DataFrame:
        rows = [
            {
                "graph": g["file"],
                "model": g["model"],
                "folds": len(g["folds"]),
                "tta": ",".join(g["tta"]) or "none",
                "weight": g["weight"],
                "max_abs_diff": f"{g['max_abs_diff']:.1e}",
                "checked_on": g["checked_on"],
            }
            for g in self.manifest["graphs"]
        ]
        return table_frame(rows, ["graph", "model", "folds", "tta", "weight", "max_abs_diff", "checked_on"])

    def command(self) -> str:
        """The notebook's command line (the input paths are placeholders)."""
        table = self.manifest.get("test_table") or ("test.csv" if self.manifest["format"] == bp.TABLE_FORMAT else "")
        return (
            f"python {self.out.name}/predict.py --images /kaggle/input/<competition>/test "
            "--sample /kaggle/input/<competition>/sample_submission.csv --out submission.csv"
            + (f" --table /kaggle/input/<competition>/{table}" if table else "")
        )


class _Columns(nn.Module):
    """The fused model with its output columns reordered to the bundle's class order."""

    def __init__(self, inner: nn.Module, order: list[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))

    def forward(self, x: torch.Tensor, *meta: torch.Tensor) -> torch.Tensor:
        return self.inner(x, *meta).index_select(1, self.order)


# ---------------------------------------------------------------- one graph


@dataclass
class _Plan:
    member: Member
    paths: list[Path]
    ckpts: list[Checkpoint]
    tta: list[str]
    merge: str
    file: str = ""


def _plan(m: Member, tta: list[str] | None, tta_merge: str | None) -> _Plan:
    """Load and check one member's checkpoints: every fold, one size and class list, a reproducible eval transform."""
    by_fold = m.run.fold_checkpoints(m.model_id)
    paths = list(by_fold.values())
    n = m.cfg.folds.n_splits
    folds = sorted(by_fold)
    if folds != list(range(n)):
        missing = sorted(set(range(n)) - set(folds))
        raise RunFolderError(
            f"{m.run.model_dir(m.model_id)} has checkpoints for folds {folds} of {n}; train the rest "
            f"(comp train-folds --folds {','.join(map(str, missing))}) before bundling"
        )
    ckpts = [load_checkpoint(p) for p in paths]
    for p, ck in zip(paths, ckpts):
        check_preprocessing(ck.meta, p)
    first = ckpts[0].meta
    for p, ck in zip(paths, ckpts):
        if (ck.meta.image_size, ck.meta.classes, ck.meta.mean, ck.meta.std) != (
            first.image_size,
            first.classes,
            first.mean,
            first.std,
        ):
            raise RunFolderError(
                f"{p} differs from fold {first.fold} in image size, classes or mean/std; "
                "retrain the model's folds with one config"
            )
    views = parse_tta(m.cfg.predict.tta if tta is None else tta)
    merge = check_merge(tta_merge or m.cfg.predict.tta_merge, m.cfg.task)
    return _Plan(m, paths, ckpts, views, merge)


def _build_graph(
    plan: _Plan,
    folder: Path,
    classes: list[str],
    images: tuple[list[Path], list[str] | None, str],
    resize: bp.Resize,
    fp16: bool,
    opset: int,
    int8: Int8Options | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Export the member's fused graph into ``folder`` and check it (with ``int8``, then quantize it and check
    that against the float graph on held-out rows, shipping the int8 graph alone); returns its manifest entry
    and the float graph's parity rows."""
    m, first = plan.member, plan.ckpts[0].meta
    own = [str(c) for c in first.classes]
    if sorted(own) != sorted(classes):
        raise CompError(f"{m.name} predicts classes {own}, the bundle {classes}; bundle models of one competition")
    task = m.cfg.task
    predictors = [predictor(model_from_checkpoint(ck)[0], ck.meta) for ck in plan.ckpts]
    fused: nn.Module = FusedModel(predictors, plan.tta, plan.merge, task)
    if own != classes:
        fused = _Columns(fused, [own.index(c) for c in classes])
    fused.eval()
    paths, ids, checked_on = images
    raw = tower_rows(m.cfg.data, first.tower, ids, len(paths), plan.file) if first.tower else None
    extra = () if raw is None else (torch.from_numpy(raw),)
    with torch.no_grad():
        comp_batch = torch.stack(
            [x for x, _ in ImageDataset(paths, transform=from_dict(first.eval_transform))]  # type: ignore[attr-defined]
        )
        reference = fused(comp_batch.float(), *extra).double().numpy()
    precision, tol = ("fp16", TOLERANCE["fp16"]) if fp16 else ("fp32", TOLERANCE["fp32"])
    size = image_size(first)
    folds = [int(RunDir.fold_number(p) or 0) for p in plan.paths]
    digests = {str(k): file_sha256(p) for k, p in zip(folds, plan.paths)}
    meta = metadata(
        dataclasses.replace(first, classes=classes),
        folds=folds,
        precision=precision,
        tta=plan.tta,
        tta_merge=plan.merge,
        checkpoints=digests,
    )
    export_graph(fused, (comp_batch[:1].float(), *(e[:1] for e in extra)), folder / plan.file, opset, meta, fp16)
    feeds = {INPUT: bundle_inputs(paths, size, first.mean, first.std, resize)}
    if raw is not None:
        feeds[META] = raw
    got = cpu_session(folder / plan.file).run([OUTPUT], feeds)[0].astype(np.float64)
    relative = relative_parity(task)
    parity = Parity.of(got, reference, relative)
    if not parity.checked <= tol:
        how = "relative to its values " if relative else ""
        raise CompError(
            f"{plan.file}: predict.py's predictions differ from comp's (PyTorch after albumentations) {how}"
            f"by {parity.checked:.2e} > {tol:.0e} on {checked_on}; nothing written "
            "(try another --opset, or drop --fp16)"
        )
    compare_with_test(
        got,
        ids,
        m.run,
        m.model_id,
        classes,
        tol,
        plan.file,
        f"comp predict wrote it with other checkpoints or TTA; re-run comp predict, or pass the --tta it used "
        f"(this bundle: {','.join(plan.tta) or 'none'})",
        relative,
    )
    log.info(
        "bundle: %s (%s, %d folds, tta %s): predict.py against comp, %s on %s",
        plan.file,
        m.name,
        len(folds),
        ",".join(plan.tta) or "none",
        parity.describe(),
        checked_on,
    )
    entry = {
        "file": plan.file,
        "weight": m.weight,
        "image_size": list(size),
        "mean": [float(v) for v in first.mean],
        "std": [float(v) for v in first.std],
        "input": INPUT,
        "output": OUTPUT,
        **({"metadata": tower_entry(first.tower)} if first.tower else {}),
        # informational: predict.py reads only the keys above
        "model": m.name,
        "model_name": first.model_name,
        "folds": folds,
        "tta": plan.tta,
        "tta_merge": plan.merge,
        "precision": precision,
        "opset": opset,
        **parity.report(),
        "checked_on": checked_on,
        "checkpoints": digests,
    }
    if int8 is not None:
        name = plan.file.removesuffix(".onnx") + ".int8.onnx"
        check = write_int8(
            folder / plan.file,
            folder / name,
            cfg=m.cfg,
            run=m.run,
            meta=first,
            fold=None,
            options=int8,
            names=[INPUT],
            output=OUTPUT,
            label=f"{m.name}: {name}",
            columns=[classes.index(c) for c in own],
        )
        log.info("bundle: %s against its float32 graph, %s", name, check.describe())
        (folder / plan.file).unlink()  # the float graph was the reference; the bundle ships the int8 one
        entry.update(file=name, precision="int8", int8=check.report())
    return entry, got


def _file_names(plans: list[_Plan]) -> None:
    """``<model_id>.onnx``, or ``<run>-<model_id>.onnx`` where two members share a model id."""
    ids = [p.member.model_id for p in plans]
    for p in plans:
        mid = p.member.model_id
        p.file = f"{p.member.run.root.name}-{mid}.onnx" if ids.count(mid) > 1 else f"{mid}.onnx"
    files = [p.file for p in plans]
    if len(set(files)) != len(files):
        raise CompError(f"two bundle members would both be {files[0]}; blend models whose run/model names differ")


# ---------------------------------------------------------------- the folder


def _decision(src: Source, plans: list[_Plan], classes: list[str]) -> Decision | None:
    """The thresholds or cut-points the submission applies, as comp predict and comp ensemble apply them: a
    blend's or a single model's own (metrics.json), or fitted on the mean of a run's models' OOF predictions."""
    metric = get_metric(src.metric, src.task)
    if src.blend is not None and src.blend_name is not None:
        return fitted_decision(src.blend, [src.blend_name], metric, classes, id_column=src.data.id_column)
    run = plans[0].member.run
    mids = [p.member.model_id for p in plans]
    return fitted_decision(run, mids, metric, classes, id_column=src.data.id_column)


def bundle_run(
    source: str | Path,
    *,
    out: str | Path,
    models: list[str] | None = None,
    tta: list[str] | str | None = None,
    tta_merge: str | None = None,
    fp16: bool = False,
    opset: int = 17,
    int8: bool = False,
    calib: int = Int8Options.calib,
    max_drop: float = Int8Options.max_drop,
) -> BundleResult:
    """Write an offline inference bundle (fused ONNX graphs, manifest.json, predict.py) of a run or blend to ``out``.

    ``tta``/``tta_merge`` default to each model's config (``predict.tta``), as for ``comp predict``; a model's
    ``test.csv``, where present, must be reproduced by its graph. ``int8``: ship each graph quantized to int8
    (calibrated on ``calib`` training images of its run, refused when its metric on held-out rows drops by more
    than ``max_drop`` from the float graph's). Example::

        comp.bundle("runs/demo", out="bundle")   # then: python bundle/predict.py --images ... --sample ... --out ...
    """
    out = Path(out)
    options = Int8Options(calib=calib, max_drop=max_drop) if int8 else None
    if int8 and fp16:
        raise CompError("--int8 quantizes the float32 graphs; drop --fp16")
    if options is not None:
        note_speed()
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CompError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    tta_list = None if tta is None else parse_tta(tta)
    if tta_merge is not None:
        check_merge(tta_merge)
    src = resolve_source(source, models)
    if not src.members:
        raise CompError(f"blend {src.blend_name} gives every member weight 0; nothing to bundle")
    same_images(src.members, src.data, src.task)
    check_out(out)
    if tta_merge is not None:
        check_merge(tta_merge, src.task)
    plans = [_plan(m, tta_list, tta_merge) for m in src.members]
    classes = src.classes or [str(c) for c in plans[0].ckpts[0].meta.classes]
    spec = submission_spec(src.data, classes, src.task, _decision(src, plans, classes))
    _file_names(plans)
    images = parity_images(src.data)
    fingerprint = bp.resize_fingerprint(cv2_resize)  # the resize comp trained and evaluated with
    resize, how, _ = bp.choose_resize(fingerprint)
    if bp.resize_fingerprint(bp.resize_linear) != fingerprint:
        log.warning(
            "bundle: this OpenCV rounds INTER_LINEAR differently from predict.py's numpy resize; predict.py "
            "matches training exactly only where its cv2 reproduces the bundle's resize_fingerprint"
        )
    log.info("bundle: checking with the resize predict.py would use here: %s", how)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise CompError(f"cannot write beside --out {out} ({exc.strerror}); choose a writable place") from None
    try:
        entries, rows = [], []
        for plan in plans:
            entry, got = _build_graph(plan, tmp, classes, images, resize, fp16, opset, options)
            entries.append(entry)
            rows.append(entry["weight"] * got)
        stack, stack_files = None, list[str]()
        if src.stack is not None and src.blend is not None and src.blend_name is not None:
            stack, stack_files = stack_block(src.blend, src.blend_name, src.stack, tmp)
        elif src.blend is not None and src.blend_name is not None:
            blended = np.sum(rows, axis=0) / sum(e["weight"] for e in entries)
            compare_with_test(
                blended,
                images[1],
                src.blend,
                src.blend_name,
                classes,
                TOLERANCE["fp16" if fp16 else "fp32"],
                f"the bundle's blend of {len(entries)} graphs",
                "its members' test.csv changed since comp ensemble; "
                "re-run comp ensemble (or pass the --tta comp predict used)",
                relative_parity(src.task),
            )
        tables = stack is not None or any("metadata" in e for e in entries)
        manifest = {
            "format": bp.TABLE_FORMAT if tables else bp.FORMAT,
            "task": src.task,
            "classes": classes,
            "graphs": entries,
            **({"stack": stack} if stack is not None else {}),
            **({"test_table": Path(src.data.test_csv).name} if tables and src.data.test_csv else {}),
            "requires": ["onnxruntime", "numpy", "Pillow", *(["lightgbm"] if stack is not None else [])],
            **spec,
            "resize_fingerprint": fingerprint,
            "source": {"kind": src.kind, "path": str(src.path.resolve()), **src.info},
            "comp_version": __version__,
            # what comp wrote here: the only files a rebuild into this folder may delete
            "files": ["manifest.json", "predict.py", *(e["file"] for e in entries), *stack_files],
        }
        write_json(tmp / "manifest.json", manifest)
        shutil.copyfile(Path(bp.__file__), tmp / "predict.py")
        if stack is not None and src.blend is not None and src.blend_name is not None:
            members = [(p.member.run, p.member.model_id) for p in plans]
            diff = check_stack(tmp, src.blend, src.blend_name, members, src.data, classes)
            log.info("bundle: the GBDT stack reproduces %s's test.csv (max diff %.1e)", src.blend_name, diff)
        if (out / KAGGLE_METADATA).is_file():
            shutil.copyfile(out / KAGGLE_METADATA, tmp / KAGGLE_METADATA)
        # predict.py's own validation of what it will read: a BundleError here is a bug in comp
        bp.load_manifest(tmp)
        normal_modes(tmp)
        publish(tmp, out)
    except (OSError, RuntimeError) as exc:  # a full disk or unwritable folder while the graphs are written
        elsewhere = isinstance(exc, OSError) and exc.filename and not str(exc.filename).startswith(str(tmp))
        found = None if elsewhere else write_error(out, exc)
        if found is None:
            raise
        raise found from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle: wrote %s (%d graphs)", out, len(entries))
    return BundleResult(out, manifest)
