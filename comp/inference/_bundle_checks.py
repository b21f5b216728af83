"""The bundle's checks: what predict.py can reproduce (preprocessing, the sample's format, the folder it
replaces), and the parity images and inputs the fused graphs are checked on, read the way predict.py reads them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from comp.config import DataConfig
from comp.data._table import load_test_table, train_paths
from comp.errors import CompError, ConfigError, RunFolderError
from comp.inference import bundle_predict as bp
from comp.inference._export import PARITY_IMAGES, Parity
from comp.run import CheckpointMeta, RunDir, read_table
from comp.submission._format import submission_kind
from comp.tasks import Decision

log = logging.getLogger(__name__)
# `kaggle datasets init -p DIR` writes this into the folder; a rebuild keeps it
KAGGLE_METADATA = "dataset-metadata.json"


def image_size(meta: CheckpointMeta) -> tuple[int, int]:
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
    h, w = image_size(meta)
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


def template_fields(template: str) -> list[str]:
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


def submission_spec(
    data: DataConfig, classes: list[str], task: str = "classification", decision: Decision | None = None
) -> dict[str, Any]:
    """The manifest's id column, image naming and ``submission`` block, from the sample submission: the kind
    ``make_submission`` renders for the task (proba, names, codes, tags, values) and the decision it applies
    (per-label thresholds, QWK cut-points)."""
    if not data.sample_submission:
        raise ConfigError(
            "data.sample_submission is not set in the run's config; a bundle writes the sample's "
            "format, so set it (e.g. comp predict --set data.sample_submission=FILE) and train or copy the run"
        )
    sample = read_table(data.sample_submission, "sample submission")
    columns = [str(c) for c in sample.columns]
    id_col = data.id_column if data.id_column in columns else columns[0]  # as make_submission does
    targets = [c for c in columns if c != id_col]
    kind = submission_kind(sample, targets, classes, task, str(data.sample_submission))
    block: dict[str, Any] = {"kind": kind, "columns": columns}
    if not (len(targets) == len(classes) and set(targets) == set(classes)):  # one column: labels, tags, a value
        block["target_column"] = targets[0]
    if kind == "codes":
        block["codes"] = None  # the class index, as make_submission writes it
    block["decision"] = _rendered(kind, decision)
    spec: dict[str, Any] = {"id_column": id_col}
    if data.path_template:
        missing = [f for f in template_fields(data.path_template) if f not in columns]
        if missing:
            raise CompError(
                f"data.path_template {data.path_template!r} uses column {missing[0]!r}, which "
                f"{data.sample_submission} lacks; predict.py builds image paths from the sample's columns"
            )
        spec["path_template"] = data.path_template
    else:
        spec["image_ext"] = data.image_ext
    return {**spec, "submission": block}


def written_files(manifest: dict[str, Any]) -> set[str]:
    """The files a bundle's manifest says comp wrote into its folder: the ones a rebuild may delete."""
    names = {"manifest.json", "predict.py"}
    listed = manifest.get("files")
    if isinstance(listed, list):  # bundles since the list was added name every file they wrote
        names |= {f for f in listed if isinstance(f, str)}
    for g in manifest.get("graphs") or []:
        if isinstance(g, dict) and isinstance(g.get("file"), str):
            names.add(g["file"])
    return names


def _rendered(kind: str, decision: Decision | None) -> Decision | None:
    """The part of a decision the submission kind renders with (a proba submission needs no thresholds)."""
    if not decision:
        return None
    if kind == "tags" and "thresholds" in decision:
        return {"thresholds": [float(t) for t in decision["thresholds"]]}
    if kind == "values" and "cutpoints" in decision:
        return {
            "cutpoints": [float(c) for c in decision["cutpoints"]],
            "grades": [float(g) for g in decision["grades"]],
        }
    return None


def check_out(out: Path) -> None:
    """``--out`` must be new, an empty folder, or an earlier bundle holding only what its manifest says comp
    wrote there (and ``dataset-metadata.json``, which a rebuild keeps): anything else would be deleted."""
    if out.exists() and not out.is_dir():
        raise CompError(f"--out {out} is a file; pass a folder for the bundle")
    if not out.is_dir():
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") not in bp.READABLE_FORMATS:
        raise CompError(
            f"--out {out} exists and is not a comp bundle (it holds {names[0]}); pass a new or empty "
            "folder, or an earlier bundle to replace"
        )
    ours = written_files(manifest) | {KAGGLE_METADATA}
    extra = [n for n in names if n not in ours]
    if extra:
        raise CompError(
            f"--out {out} is an earlier bundle but also holds {extra[0]}, which comp did not write there and a "
            "rebuild would delete; move it out or choose another --out"
        )


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an earlier bundle there is moved aside first, then deleted."""
    if out.is_dir() and any(out.iterdir()):
        check_out(out)  # still an earlier bundle, not something written there meanwhile
        aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, aside / out.name)
        os.replace(tmp, out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, out)  # over an empty folder too


def normal_modes(folder: Path) -> None:
    """mkdtemp's folder is private (0700); give the bundle the modes a fresh folder and files would have."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        p.chmod((0o777 if p.name == "predict.py" else 0o666) & ~umask)


# ---------------------------------------------------------------- parity


def parity_images(data: DataConfig, n: int = PARITY_IMAGES) -> tuple[list[Path], list[str] | None, str]:
    """Up to ``n`` test images and their ids; training images (ids None) when the test images are not here."""
    try:
        df, paths = load_test_table(data)
        return paths[:n], [str(i) for i in df[data.id_column][:n]], f"{min(n, len(paths))} test images"
    except CompError as exc:
        log.info("bundle: test images unusable (%s); checking parity on training images", exc)
    try:
        paths = train_paths(data)[:n]
    except CompError as exc:
        raise CompError(f"no images to check the bundle on (test and training images both unusable: {exc})") from None
    return paths, None, f"{len(paths)} training images"


def bundle_inputs(
    paths: list[Path], size: tuple[int, int], mean: list[float], std: list[float], resize: bp.Resize
) -> np.ndarray:
    """The float32 NCHW batch predict.py feeds a graph: its decoder, resize and normalisation."""
    lut = bp.normalize_lut(mean, std)
    return bp.normalize_batch(np.stack([resize(bp.load_rgb(p), *size) for p in paths]), lut)


def cv2_resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return img if img.shape[:2] == (height, width) else cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def compare_with_test(
    got: np.ndarray,
    ids: list[str] | None,
    run: RunDir,
    model_id: str,
    classes: list[str],
    tol: float,
    what: str,
    hint: str,
    relative: bool = False,
) -> None:
    """Fail unless ``got`` (the parity rows) matches the same rows of ``run``'s ``test.csv`` for ``model_id``
    (relative to the values for regression, see ``comp.inference._export.Parity``)."""
    path = run.test_pred(model_id)
    if ids is None or not path.is_file():
        return
    pred = run.read_test(model_id)
    if sorted(pred.classes) != sorted(classes):
        raise RunFolderError(f"{path} has classes {pred.classes}, the bundle {classes}; {hint}")
    want = pred.reorder(ids).probs[:, [pred.classes.index(c) for c in classes]]
    diff = np.array([Parity.of(g, w, relative).checked for g, w in zip(got, want)])
    if not diff.max() <= tol:
        i = int(diff.argmax())
        how = "relative to its values " if relative else ""
        raise CompError(f"{what} differs from {path} {how}by {diff[i]:.1e} (> {tol:.0e}) on id {ids[i]!r}; {hint}")
