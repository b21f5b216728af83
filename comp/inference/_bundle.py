"""``comp bundle``: a run or a blend -> a folder an offline Kaggle notebook predicts with, without comp.

The folder holds one fused ONNX graph per model (all its folds and TTA views inside), ``manifest.json``
(schema ``comp.bundle/1``, documented in ``bundle_predict.py``) and ``predict.py``, a copy of
``comp/inference/bundle_predict.py`` that needs only onnxruntime, numpy and Pillow.

Before anything is written, each graph is run on up to 16 test images read the way predict.py reads them
(Pillow, its resize, its normalisation) and must match comp's own pipeline (PyTorch after albumentations)
and, where ``comp predict`` left one, the model's ``test.csv``; a blend must also match the blend's
``test.csv``. The folder is built under a hidden temporary name beside ``--out`` and renamed into place,
so a killed bundle never looks complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from comp._tables import format_table
from comp._version import __version__
from comp.config import Config, DataConfig
from comp.data._augment import from_dict
from comp.data._table import ImageDataset, load_test_table, load_train_table
from comp.errors import CompError, ConfigError, RunFolderError
from comp.inference import bundle_predict as bp
from comp.inference._export import (
    INPUT,
    MAX_OPSET,
    MIN_OPSET,
    OUTPUT,
    TOLERANCE,
    FusedModel,
    _session,
    export_graph,
    metadata,
    select_models,
)
from comp.inference._tta import check_merge, parse_tta
from comp.run import Checkpoint, CheckpointMeta, RunDir, file_sha256, load_checkpoint, locate, read_table, write_json
from comp.training._models import model_from_checkpoint

log = logging.getLogger(__name__)
PARITY_IMAGES = 16
# `kaggle datasets init -p DIR` writes this into the folder; a rebuild keeps it
KAGGLE_METADATA = "dataset-metadata.json"


@dataclass
class Member:
    """One model of the bundle: a run's model folder and its weight in the final mean."""

    run: RunDir
    model_id: str
    weight: float
    cfg: Config

    @property
    def name(self) -> str:
        return f"{self.run.root.name}/{self.model_id}"


@dataclass
class Source:
    """What ``comp bundle`` was pointed at, resolved: the models to fuse and where the competition's data is."""

    kind: str  # "run", "model" or "blend"
    path: Path
    members: list[Member]
    data: DataConfig
    classes: list[str] | None = None  # a blend's column order; None: the first model's
    blend: RunDir | None = None  # the blend's run folder, whose test.csv the bundle must reproduce
    blend_name: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class BundleResult:
    """The written bundle folder and its manifest."""

    out: Path
    manifest: dict[str, Any]

    def table(self) -> str:
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
        return format_table(rows, ["graph", "model", "folds", "tta", "weight", "max_abs_diff", "checked_on"])

    def command(self) -> str:
        """The notebook's command line (the input paths are placeholders)."""
        return (
            f"python {self.out.name}/predict.py --images /kaggle/input/<competition>/test "
            "--sample /kaggle/input/<competition>/sample_submission.csv --out submission.csv"
        )


# ---------------------------------------------------------------- what to bundle


def _blend_source(run: RunDir, name: str, blend: dict[str, Any], path: Path) -> Source:
    from comp.ensembling._blend import METHODS

    method, weights, members = blend["method"], blend.get("weights"), blend["members"]
    where = run.metrics(name)
    if blend.get("bias"):
        raise CompError(
            f"blend {name} adds per-class biases (--bias), which predict.py does not apply; "
            f"bundle the same blend made without --bias"
        )
    spec = METHODS.get(method)
    if not spec.weighted_mean or weights is None:
        able = ", ".join(n for n in METHODS if METHODS[n].weighted_mean)
        raise CompError(
            f"blend {name} uses method {method!r}, which is not a weighted mean of member probabilities; "
            f"bundle a blend made with {able}, or the runs themselves"
        )
    if not isinstance(members, list) or not isinstance(weights, list) or len(members) != len(weights):
        raise RunFolderError(f"{where} lists {len(members)} members and {len(weights)} weights; re-run comp ensemble")
    cfg = run.load_config()
    out = []
    for member, weight in zip(members, weights):
        mpath = Path(member)
        if not weight > 0:
            log.info("blend %s: member %s has weight 0; left out of the bundle", name, mpath)
            continue
        mrun = RunDir(mpath.parent.parent)
        if not mrun.checkpoints(mpath.name):
            raise RunFolderError(
                f"blend member {mpath} (listed in {where}) has no fold checkpoints; the bundle needs "
                "each member's checkpoints where comp ensemble found them"
            )
        out.append(Member(mrun, mpath.name, float(weight), mrun.load_config()))
    classes = run.read_oof(name, id_column=cfg.data.id_column).classes
    return Source("blend", path, out, cfg.data, classes, run, name, {"method": method, "weights": weights})


def resolve_source(source: str | Path, models: list[str] | None) -> Source:
    """A run folder (its models, or ``models``), a model folder ``RUN/models/<id>``, or a blend of comp ensemble."""
    hint = "pass a run folder, a model folder RUN/models/<id>, or a blend folder written by comp ensemble"
    if not Path(source).is_dir():
        raise RunFolderError(f"{source} not found; {hint}")
    try:
        found = locate(source, hint=hint)
    except RunFolderError:
        raise RunFolderError(f"{source} is not a run folder (no config.yaml); {hint}") from None
    run, path = found.run, Path(source)
    if found.model_id is None:
        if run.model_ids():
            cfg = run.load_config()
            return Source("run", path, [Member(run, m, 1.0, cfg) for m in select_models(run, models)], cfg.data)
        blends = [(n, b) for n in run.model_folders() if (b := run.blend_info(n))]
        if len(blends) != 1:
            raise RunFolderError(f"{path} holds no fold checkpoints and {len(blends)} blends; {hint}")
        name, blend = blends[0]
    else:
        name = found.model_id
        if run.checkpoints(name):
            if models and models != [name]:
                raise CompError(
                    f"--model {','.join(models)}: {path} is the model folder of {name}; pass the run folder"
                )
            cfg = run.load_config()
            return Source("model", path, [Member(run, name, 1.0, cfg)], cfg.data)
        info = run.blend_info(name)
        if info is None:
            raise RunFolderError(f"{path} has no fold checkpoints and is not a blend; {hint}")
        blend = info
    if models:
        raise CompError("--model picks models of a run folder; a blend bundles its own members")
    return _blend_source(run, name, blend, path)


# ---------------------------------------------------------------- checks that need no writing


def _image_size(meta: CheckpointMeta) -> tuple[int, int]:
    size = meta.image_size
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_preprocessing(meta: CheckpointMeta, where: Path) -> None:
    """Fail unless the checkpoint's eval transform is what predict.py reproduces: Resize (INTER_LINEAR), Normalize."""
    steps = meta.eval_transform.get("transform", {}).get("transforms", [])
    names = [str(s.get("__class_fullname__", "?")).rsplit(".", 1)[-1] for s in steps]
    fix = (
        "predict.py reproduces Resize (INTER_LINEAR) then Normalize; retrain without augment.valid "
        "(or with a Resize only) to bundle it"
    )
    if names != ["Resize", "Normalize", "ToTensorV2"]:
        raise CompError(f"{where}: the eval transform is {' -> '.join(names)}; {fix}")
    resize, norm = steps[0], steps[1]
    h, w = _image_size(meta)
    if (
        (resize.get("height"), resize.get("width")) != (h, w)
        or resize.get("interpolation") != 1
        or resize.get("area_for_downscale")
        or resize.get("p", 1.0) != 1.0
    ):
        raise CompError(f"{where}: the eval Resize is {resize} and the model takes {h}x{w}; {fix}")
    same = np.allclose(norm.get("mean"), meta.mean) and np.allclose(norm.get("std"), meta.std)
    if norm.get("max_pixel_value") != 255.0 or norm.get("normalization", "standard") != "standard" or not same:
        raise CompError(f"{where}: the eval Normalize is {norm}, not the model's mean/std on 0..255 pixels; {fix}")
    if meta.in_chans != 3:
        raise CompError(f"{where}: the model takes {meta.in_chans} channels; predict.py feeds RGB (3 channels)")


def _template_fields(template: str) -> list[str]:
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


def submission_spec(data: DataConfig, classes: list[str]) -> dict[str, Any]:
    """The manifest's id column, image naming and ``submission`` block, from the sample submission."""
    if not data.sample_submission:
        raise ConfigError(
            "data.sample_submission is not set in the run's config; a bundle writes the sample's "
            "format, so set it (e.g. comp predict --set data.sample_submission=FILE) and train or copy the run"
        )
    sample = read_table(data.sample_submission, "sample submission")
    columns = [str(c) for c in sample.columns]
    id_col = data.id_column if data.id_column in columns else columns[0]  # as make_submission does
    targets = [c for c in columns if c != id_col]
    if len(targets) == len(classes) and set(targets) == set(classes):
        block: dict[str, Any] = {"kind": "proba", "columns": columns}
    elif len(targets) == 1:
        block = {"kind": "label", "columns": columns, "target_column": targets[0]}
    else:
        raise CompError(
            f"{data.sample_submission} has target columns {targets}, neither one label column nor exactly "
            f"the classes {classes}; fix data.classes or data.sample_submission"
        )
    spec: dict[str, Any] = {"id_column": id_col}
    if data.path_template:
        missing = [f for f in _template_fields(data.path_template) if f not in columns]
        if missing:
            raise CompError(
                f"data.path_template {data.path_template!r} uses column {missing[0]!r}, which "
                f"{data.sample_submission} lacks; predict.py builds image paths from the sample's columns"
            )
        spec["path_template"] = data.path_template
    else:
        spec["image_ext"] = data.image_ext
    return {**spec, "submission": block}


def _same_images(members: list[Member], data: DataConfig) -> None:
    for m in members:
        d = m.cfg.data
        for key in ("id_column", "image_ext", "path_template"):
            if getattr(d, key) != getattr(data, key):
                raise CompError(
                    f"member {m.name} reads test images with data.{key}={getattr(d, key)!r}, the bundle's "
                    f"first model with {getattr(data, key)!r}; a bundle reads each image one way"
                )


def check_out(out: Path) -> None:
    """``--out`` must be new, an empty folder, or an earlier bundle (whose files a rebuild replaces)."""
    if out.exists() and not out.is_dir():
        raise CompError(f"--out {out} is a file; pass a folder for the bundle")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    try:
        fmt = json.loads((out / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt != bp.FORMAT:
        raise CompError(
            f"--out {out} exists and is not a comp bundle (it holds {names[0]}); pass a new or empty "
            "folder, or an earlier bundle to replace"
        )
    extra = [n for n in names if n not in ("manifest.json", "predict.py", KAGGLE_METADATA) and not n.endswith(".onnx")]
    if extra:
        raise CompError(
            f"--out {out} is an earlier bundle but also holds {extra[0]}, which a rebuild would delete; "
            "move it out or choose another --out"
        )


# ---------------------------------------------------------------- parity


def parity_images(data: DataConfig, n: int = PARITY_IMAGES) -> tuple[list[Path], list[str] | None, str]:
    """Up to ``n`` test images and their ids; training images (ids None) when the test images are not here."""
    try:
        df, paths = load_test_table(data)
        return paths[:n], [str(i) for i in df[data.id_column][:n]], f"{min(n, len(paths))} test images"
    except CompError as exc:
        log.info("bundle: test images unusable (%s); checking parity on training images", exc)
    try:
        paths = load_train_table(data).paths[:n]
    except CompError as exc:
        raise CompError(f"no images to check the bundle on (test and training images both unusable: {exc})") from None
    return paths, None, f"{len(paths)} training images"


def bundle_inputs(
    paths: list[Path], size: tuple[int, int], mean: list[float], std: list[float], resize: bp.Resize
) -> np.ndarray:
    """The float32 NCHW batch predict.py feeds a graph: its decoder, resize and normalisation."""
    lut = bp.normalize_lut(mean, std)
    return bp.normalize_batch(np.stack([resize(bp.load_rgb(p), *size) for p in paths]), lut)


def _cv2_resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return img if img.shape[:2] == (height, width) else cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def _compare(
    got: np.ndarray,
    ids: list[str] | None,
    run: RunDir,
    model_id: str,
    classes: list[str],
    tol: float,
    what: str,
    hint: str,
) -> None:
    """Fail unless ``got`` (the parity rows) matches the same rows of ``run``'s ``test.csv`` for ``model_id``."""
    path = run.test_pred(model_id)
    if ids is None or not path.is_file():
        return
    pred = run.read_test(model_id)
    if sorted(pred.classes) != sorted(classes):
        raise RunFolderError(f"{path} has classes {pred.classes}, the bundle {classes}; {hint}")
    want = pred.reorder(ids).probs[:, [pred.classes.index(c) for c in classes]]
    diff = np.abs(got - want).max(axis=1)
    if not diff.max() <= tol:
        i = int(diff.argmax())
        raise CompError(f"{what} differs from {path} by {diff[i]:.1e} (> {tol:.0e}) on id {ids[i]!r}; {hint}")


class _Columns(nn.Module):
    """The fused model with its probability columns reordered to the bundle's class order."""

    def __init__(self, inner: nn.Module, order: list[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).index_select(1, self.order)


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
    merge = check_merge(tta_merge or m.cfg.predict.tta_merge)
    return _Plan(m, paths, ckpts, views, merge)


def _build_graph(
    plan: _Plan,
    folder: Path,
    classes: list[str],
    images: tuple[list[Path], list[str] | None, str],
    resize: bp.Resize,
    fp16: bool,
    opset: int,
) -> tuple[dict[str, Any], np.ndarray]:
    """Export the member's fused graph into ``folder`` and check it; returns its manifest entry and parity rows."""
    m, first = plan.member, plan.ckpts[0].meta
    own = [str(c) for c in first.classes]
    if sorted(own) != sorted(classes):
        raise CompError(f"{m.name} predicts classes {own}, the bundle {classes}; bundle models of one competition")
    fused: nn.Module = FusedModel([model_from_checkpoint(ck)[0] for ck in plan.ckpts], plan.tta, plan.merge)
    if own != classes:
        fused = _Columns(fused, [own.index(c) for c in classes])
    fused.eval()
    paths, ids, checked_on = images
    with torch.no_grad():
        comp_batch = torch.stack(
            [x for x, _ in ImageDataset(paths, transform=from_dict(first.eval_transform))]  # type: ignore[attr-defined]
        )
        reference = fused(comp_batch.float()).double().numpy()
    precision, tol = ("fp16", TOLERANCE["fp16"]) if fp16 else ("fp32", TOLERANCE["fp32"])
    size = _image_size(first)
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
    export_graph(fused, comp_batch[:1].float(), folder / plan.file, opset, meta, fp16)
    x = bundle_inputs(paths, size, first.mean, first.std, resize)
    got = _session(folder / plan.file).run([OUTPUT], {INPUT: x})[0].astype(np.float64)
    diff = float(np.abs(got - reference).max())
    if not diff <= tol:
        raise CompError(
            f"{plan.file}: predict.py's probabilities differ from comp's (PyTorch after albumentations) "
            f"by {diff:.2e} > {tol:.0e} on {checked_on}; nothing written (try another --opset, or drop --fp16)"
        )
    _compare(
        got,
        ids,
        m.run,
        m.model_id,
        classes,
        tol,
        plan.file,
        f"comp predict wrote it with other checkpoints or TTA; re-run comp predict, or pass the --tta it used "
        f"(this bundle: {','.join(plan.tta) or 'none'})",
    )
    log.info(
        "bundle: %s (%s, %d folds, tta %s): max |predict.py - comp| = %.2e on %s",
        plan.file,
        m.name,
        len(folds),
        ",".join(plan.tta) or "none",
        diff,
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
        # informational: predict.py reads only the keys above
        "model": m.name,
        "model_name": first.model_name,
        "folds": folds,
        "tta": plan.tta,
        "tta_merge": plan.merge,
        "precision": precision,
        "opset": opset,
        "max_abs_diff": diff,
        "checked_on": checked_on,
        "checkpoints": digests,
    }
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


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an earlier bundle there is moved aside first, then deleted."""
    if out.is_dir() and any(out.iterdir()):
        check_out(out)  # still an earlier bundle, not something written there meanwhile
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, aside / out.name)
        os.replace(tmp, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, out)  # over an empty folder too


def _normal_modes(folder: Path) -> None:
    """mkdtemp's folder is private (0700); give the bundle the modes a fresh folder and files would have."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod((0o777 if p.name == "predict.py" else 0o666) & ~umask)


def bundle_run(
    source: str | Path,
    *,
    out: str | Path,
    models: list[str] | None = None,
    tta: list[str] | str | None = None,
    tta_merge: str | None = None,
    fp16: bool = False,
    opset: int = 17,
) -> BundleResult:
    """Write an offline inference bundle (fused ONNX graphs, manifest.json, predict.py) of a run or blend to ``out``.

    ``tta``/``tta_merge`` default to each model's config (``predict.tta``), as for ``comp predict``; a model's
    ``test.csv``, where present, must be reproduced by its graph. Example::

        comp.bundle("runs/demo", out="bundle")   # then: python bundle/predict.py --images ... --sample ... --out ...
    """
    out = Path(out)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise CompError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    tta_list = None if tta is None else parse_tta(tta)
    if tta_merge is not None:
        check_merge(tta_merge)
    src = resolve_source(source, models)
    if not src.members:
        raise CompError(f"blend {src.blend_name} gives every member weight 0; nothing to bundle")
    _same_images(src.members, src.data)
    check_out(out)
    plans = [_plan(m, tta_list, tta_merge) for m in src.members]
    classes = src.classes or [str(c) for c in plans[0].ckpts[0].meta.classes]
    spec = submission_spec(src.data, classes)
    _file_names(plans)
    images = parity_images(src.data)
    fingerprint = bp.resize_fingerprint(_cv2_resize)  # the resize comp trained and evaluated with
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
            entry, got = _build_graph(plan, tmp, classes, images, resize, fp16, opset)
            entries.append(entry)
            rows.append(entry["weight"] * got)
        if src.blend is not None and src.blend_name is not None:
            blended = np.sum(rows, axis=0) / sum(e["weight"] for e in entries)
            _compare(
                blended,
                images[1],
                src.blend,
                src.blend_name,
                classes,
                TOLERANCE["fp16" if fp16 else "fp32"],
                f"the bundle's blend of {len(entries)} graphs",
                "its members' test.csv changed since comp ensemble; "
                "re-run comp ensemble (or pass the --tta comp predict used)",
            )
        manifest = {
            "format": bp.FORMAT,
            "classes": classes,
            "graphs": entries,
            **spec,
            "resize_fingerprint": fingerprint,
            "source": {"kind": src.kind, "path": str(src.path.resolve()), **src.info},
            "comp_version": __version__,
        }
        write_json(tmp / "manifest.json", manifest)
        shutil.copyfile(Path(bp.__file__), tmp / "predict.py")
        if (out / KAGGLE_METADATA).is_file():
            shutil.copyfile(out / KAGGLE_METADATA, tmp / KAGGLE_METADATA)
        # predict.py's own validation of what it will read: a BundleError here is a bug in comp
        bp.load_manifest(tmp)
        _normal_modes(tmp)
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("bundle: wrote %s (%d graphs)", out, len(entries))
    return BundleResult(out, manifest)
