#!/usr/bin/env python3
"""Offline predictor shipped inside a comp bundle as ``predict.py``: images + sample CSV -> submission CSV.

Needs only ``onnxruntime`` (or ``onnxruntime-gpu``), ``numpy`` and ``Pillow`` (and ``lightgbm`` for a GBDT stack); ``opencv-python(-headless)``
is used for resizing when present and only when it reproduces the training resize (see below). It reads
the image folder and the bundle folder and writes nothing beside them.

Usage::

    python predict.py --images DIR --sample sample_submission.csv --out submission.csv
        [--table test.csv] [--bundle DIR (default: this file's folder)] [--batch-size 32] [--threads N]
        [--provider cpu|cuda|auto] [--quiet] [--probs probs.csv]

Errors the user can fix (bad manifest, missing graph or image, unreadable image, a sample that does not
fit the bundle) print one ``error: ...`` line on stderr and exit with status 2.

manifest.json (``"format": "comp.bundle/2"``), in the bundle folder::

    {
      "format": "comp.bundle/2",
      "task": "classification",                    # or "multilabel" or "regression"
      "classes": ["cat", "dog", "fox"],           # output columns: classes, labels or regression targets;
                                                   #     prediction column j is classes[j]
      "graphs": [                                  # one or more ONNX graphs, blended by weight
        {"file": "fused_a.onnx",                   # path relative to the bundle folder
         "weight": 2.0,                            # > 0; final = sum(w_i * p_i) / sum(w_i)
         "image_size": [224, 224],                 # [height, width] the graph takes
         "mean": [0.485, 0.456, 0.406],            # per RGB channel, on the 0..1 scale
         "std": [0.229, 0.224, 0.225],
         "input": "input",                         # float32 NCHW normalised batch
         "output": "probs"}                        # (N, len(classes)) predictions in the task's units: class
                                                   #     or label probabilities, target values; folds/TTA inside
      ],
      "id_column": "id",                           # the sample's id column
      "image_ext": ".png",                         # image file = id + image_ext ("" when ids carry one) ...
      "path_template": "{id}.jpg",                 # ... or a str.format template over the sample's columns
                                                   #     (wins over image_ext when both are set)
      "submission": {
        "kind": "names",                           # classification: "names" (argmax class name in
                                                   #     target_column), "codes" (its integer code), "proba"
                                                   #     (one probability column per class);
                                                   # multilabel: "tags" (the space-separated labels whose
                                                   #     probability reaches its threshold), "proba";
                                                   # regression: "values" (one column per target, or one
                                                   #     target_column for one target; grades at cut-points)
        "columns": ["id", "label"],                # the sample's header the bundle was built for
        "target_column": "label",                  # for names, codes, tags and one-column values
        "codes": null,                             # for codes: {"cat": 3, ...}, or null = class index
        "decision": null                           # fitted on OOF: {"thresholds": [per label]} for tags,
                                                   #     {"cutpoints": [...], "grades": [...]} for values
      },
      "resize_fingerprint": "9f2c..."              # optional: resize_fingerprint(cv2.resize) at build time
    }

A bundle that reads the test table (``--table``, its rows matched to the sample's ids) is ``comp.bundle/3``,
the same schema plus, per graph of a metadata-tower model, ``"metadata": {"input": "meta", "numeric": [...],
"categorical": [...], "levels": {column: [training values in code order]}}`` (the graph's second input: float32
rows of numeric values, NaN where missing, then category codes), and for a GBDT blend ``"stack": {"method":
"gbdt", "members": <graphs>, "features": <columns as above> or null, "group_column": name or null, "boosters":
[{"file": "stack-booster0.txt"} or {"constant": [v]}]}``: the graphs' predictions are then not averaged but fed,
with the metadata and the group-relative features, to the LightGBM boosters (``pip install lightgbm``), whose
outputs are concatenated (and scaled to sum to one for classification).

A ``comp.bundle/1`` manifest (classification only, before tasks) is read too: no ``task``, kinds
``"label"`` and ``"code"`` for names and codes, no ``decision``. The submission is rendered exactly as comp's
``make_submission`` renders it: tags at ``probability >= threshold`` (0.5 without a decision), in the
order of ``classes``, an empty cell for an image with none; a grade is ``grades[i]`` for the values between
cut ``i-1`` and cut ``i`` (written as integers when every grade is one).

``comp bundle`` writes this file. It adds provenance that this script ignores: per graph the model, timm
name, folds, TTA views and merge inside the graph, precision, opset, the parity figure and the sha256 of each
fold checkpoint; at the top the source run or blend and the comp version.

Preprocessing reproduces comp's evaluation pipeline exactly: Pillow decodes the file (never OpenCV, whose
JPEG decoder differs), comp's RGB conversion (16-bit and float images scaled, transparency on white), then
albumentations ``Resize`` = OpenCV ``INTER_LINEAR`` on uint8, then ``Normalize`` (float32 lookup table,
bit-identical to albumentations), then HWC -> CHW.

``resize_linear`` is a numpy port of OpenCV's uint8 ``INTER_LINEAR`` arithmetic (11-bit fixed-point
weights; the exact 2x shrink goes through OpenCV's 2x2 box average) and is bit-identical to ``cv2.resize``
of OpenCV 4.13+/5.x. Older OpenCV builds round the last few values of a row differently, so cv2 is used
only when it reproduces the manifest's ``resize_fingerprint`` (or, without one, the numpy result) on
probe images. ``COMP_BUNDLE_NO_CV2=1`` in the environment skips cv2 altogether.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

FORMAT = "comp.bundle/2"
TABLE_FORMAT = "comp.bundle/3"  # a bundle that reads the test table: older predict.py must refuse it, not ignore it
READABLE_FORMATS = ("comp.bundle/1", FORMAT, TABLE_FORMAT)
TASK_KINDS = {  # the submission kinds each task renders (comp.submission's make_submission)
    "classification": ("proba", "names", "codes"),
    "multilabel": ("proba", "tags"),
    "regression": ("values",),
}
V1_KINDS = {"label": "names", "code": "codes", "proba": "proba"}  # comp.bundle/1's names
COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS: interpolation weights are integers out of 2**11
DBL_EPSILON = 2.220446049250313e-16
EXIT_USAGE = 2
NO_CV2_ENV = "COMP_BUNDLE_NO_CV2"
CUDA = "CUDAExecutionProvider"

Resize = Callable[[np.ndarray, int, int], np.ndarray]


class BundleError(Exception):
    """A problem the user can fix; ``main`` prints it as one ``error:`` line and exits with status 2."""


# ---------------------------------------------------------------------------------------------------------
# decoding


# The value that maps to white, per mode: 16-bit modes and mode I (32-bit integers, which is how older Pillow
# and some TIFF writers give 16-bit images) are 0..65535; mode F (32-bit float) is 0..1. Values outside clip.
FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL image -> RGB uint8 (H, W, 3), exactly as comp reads training images."""
    full = FULL_SCALE.get(im.mode)
    if full is not None:  # one scale per mode, never guessed from the pixel values (README: image modes)
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        arr = np.clip(arr / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file ("not found", "is a folder", "is not a regular file (a FIFO)"),
    or None for a regular file: a FIFO would block the reader forever and a device never end (comp's
    ``comp._files.file_problem``, copied because this script runs without comp)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder"
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is not a regular file ({kind})"


def load_rgb(path: Path) -> np.ndarray:
    """Decode one file with Pillow as RGB uint8; OSError & co. propagate to the caller, which names the row."""
    problem = file_problem(path)
    if problem:
        raise OSError(f"the path {problem}")
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


# ---------------------------------------------------------------------------------------------------------
# OpenCV INTER_LINEAR for uint8, in numpy


def _taps(src: int, dst: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and integer weights (w0, w1), summing to 2**11, for each output position.

    OpenCV derives the scale as 1 / (dst / src) in double, the position in float32, and rounds weights
    half-to-even. Along x it pins out-of-range positions to the edge pixel with weights (1, 0); along y it
    keeps the fractional weights and only clamps the row indices. Blending a row with itself is not a
    no-op in the vertical pass's truncating arithmetic, so the two edges are reproduced as they are.
    """
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    base = np.floor(pos)
    frac = (pos - base).astype(np.float32)
    i0 = base.astype(np.int64)
    if clamp_weights:
        edge = (i0 < 0) | (i0 >= src - 1)
        frac[edge] = 0.0
        i0 = np.clip(i0, 0, src - 1)
    one = np.float32(1 << COEF_BITS)
    w0 = np.rint((np.float32(1.0) - frac) * one).astype(np.int32)
    w1 = np.rint(frac * one).astype(np.int32)
    return np.clip(i0, 0, src - 1), np.clip(i0 + 1, 0, src - 1), w0, w1


def _is_exact_half(src: int, dst: int) -> bool:
    """Whether OpenCV sees this axis as an exact 2x shrink (it then averages 2x2 blocks instead)."""
    return abs(1.0 / (dst / src) - 2.0) < DBL_EPSILON


def _half(img: np.ndarray) -> np.ndarray:
    """OpenCV's INTER_AREA fast path for an exact 2x shrink: rounded mean of each 2x2 block."""
    a = img.astype(np.int32)
    total = a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]
    return ((total + 2) >> 2).astype(np.uint8)


def resize_linear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)`` for uint8 (H, W, C), bit for bit."""
    src_h, src_w = img.shape[:2]
    if (src_h, src_w) == (height, width):
        return img
    if _is_exact_half(src_h, height) and _is_exact_half(src_w, width):
        return _half(img)
    x0, x1, a0, a1 = _taps(src_w, width, clamp_weights=True)
    y0, y1, b0, b1 = _taps(src_h, height, clamp_weights=False)
    rows, where = np.unique(np.concatenate([y0, y1]), return_inverse=True)
    r = rows[:, None]
    # horizontal pass: exact integers (values * 2**11), only on the rows the vertical pass reads
    horiz = img[r, x0].astype(np.int32) * a0[:, None] + img[r, x1].astype(np.int32) * a1[:, None]
    horiz >>= 4
    # vertical pass: OpenCV's 16-bit SIMD arithmetic (>>4, high half of the 16x16 product, +2 >>2),
    # which its scalar tail reproduces too, so every column rounds the same way
    top, bottom = horiz[where[:height]], horiz[where[height:]]
    out = ((top * b0[:, None, None]) >> 16) + ((bottom * b1[:, None, None]) >> 16)
    return ((out + 2) >> 2).astype(np.uint8)


PROBES = (((61, 83), (32, 45)), ((61, 83), (97, 131)), ((64, 96), (32, 48)), ((300, 257), (224, 224)))


def _probe_image(height: int, width: int) -> np.ndarray:
    """A deterministic noisy RGB image (integer hash of the coordinates, identical on every platform)."""
    axes = (np.arange(height, dtype=np.int64), np.arange(width, dtype=np.int64), np.arange(3, dtype=np.int64))
    y, x, c = np.meshgrid(*axes, indexing="ij")
    mixed = (x * 7919 + y * 104729 + c * 15485863) * 2654435761
    return ((mixed >> 13) & 255).astype(np.uint8)


def resize_fingerprint(resize: Resize) -> str:
    """sha256 of ``resize`` applied to fixed probe images: equal fingerprints mean the same resize rounding."""
    digest = hashlib.sha256()
    for (src_h, src_w), (dst_h, dst_w) in PROBES:
        out = np.ascontiguousarray(resize(_probe_image(src_h, src_w), dst_h, dst_w), dtype=np.uint8)
        digest.update(out.tobytes())
    return digest.hexdigest()


def _cv2_resize() -> tuple[Resize | None, str]:
    """cv2.resize as a ``Resize`` when cv2 is importable and allowed, else None; plus its version."""
    if os.environ.get(NO_CV2_ENV, "") not in ("", "0"):
        return None, f"cv2 off by {NO_CV2_ENV}"
    try:
        import cv2
    except Exception:  # noqa: BLE001 - absent or broken (e.g. missing system libraries): numpy does it
        return None, "cv2 not importable"
    cv2.setNumThreads(1)  # images are decoded and resized in parallel already

    def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
        if img.shape[:2] == (height, width):
            return img
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)

    return resize, f"cv2 {cv2.__version__}"


def choose_resize(fingerprint: str | None) -> tuple[Resize, str, str | None]:
    """The resize to use, how it was chosen, and a warning when neither implementation matches the bundle.

    cv2 wins when it reproduces the bundle's fingerprint (or, without one, the numpy port); otherwise the
    numpy port runs, which matches OpenCV 4.13+/5.x.
    """
    fn, note = _cv2_resize()
    mine = resize_fingerprint(resize_linear)
    want = fingerprint or mine
    if fn is not None:
        if resize_fingerprint(fn) == want:
            return fn, note, None
        note += " rounds differently"
    if mine == want:
        return resize_linear, f"numpy ({note})", None
    warning = "this resize does not reproduce the bundle's resize_fingerprint; images may differ from training by a grey level"
    return resize_linear, f"numpy ({note})", warning


# ---------------------------------------------------------------------------------------------------------
# normalisation


def normalize_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, 256) float32 table: the values albumentations' ``Normalize`` gives each uint8 level, bit for bit."""
    mean_px = np.asarray(mean, dtype=np.float32) * 255.0
    inv_std = np.reciprocal(np.asarray(std, dtype=np.float32) * 255.0)
    levels = np.arange(256, dtype=np.float32)
    return ((levels - mean_px[:, None]) * inv_std[:, None]).astype(np.float32)


def normalize_batch(batch: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 through the per-channel lookup table."""
    out = np.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=np.float32)
    for c in range(3):
        out[:, c] = lut[c][batch[..., c]]
    return out


# ---------------------------------------------------------------------------------------------------------
# manifest


@dataclass(frozen=True)
class Graph:
    """One ONNX graph of the bundle and how to feed it."""

    file: str
    weight: float
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input: str
    output: str
    meta: Columns | None = None  # a metadata tower's second input: the raw metadata rows of the test table
    meta_input: str = "meta"
    precision: str = "fp32"  # informational: "int8" graphs get a note where they may not be faster


@dataclass(frozen=True)
class Columns:
    """Metadata columns of the test table: numeric ones, then categorical ones coded over their training levels."""

    numeric: list[str]
    categorical: list[str]
    levels: dict[str, list[str]]

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass(frozen=True)
class Stack:
    """A GBDT stack over the graphs' predictions (one member each, in graph order), metadata and groups."""

    columns: Columns | None
    group_column: str | None
    boosters: list[tuple[str | None, list[float] | None]]  # (LightGBM text file, None) or (None, a constant)
    normalise: bool  # classification: the multiclass booster's rows scaled to sum to one


@dataclass(frozen=True)
class Manifest:
    """The validated contents of manifest.json."""

    classes: list[str]
    graphs: list[Graph]
    id_column: str
    image_ext: str | None
    path_template: str | None
    kind: str
    columns: list[str]
    target_column: str | None
    codes: dict[str, int] | None
    fingerprint: str | None
    task: str = "classification"
    thresholds: np.ndarray | None = None  # tags: per label
    cutpoints: np.ndarray | None = None  # values: grades[i] between cut i-1 and cut i
    grades: np.ndarray | None = None
    stack: Stack | None = None

    @property
    def table_columns(self) -> list[str]:
        """The test table's columns this bundle reads (none: it needs no --table)."""
        cols = [c for g in self.graphs if g.meta for c in g.meta.names]
        if self.stack is not None:
            cols += [
                *(self.stack.columns.names if self.stack.columns else []),
                *filter(None, [self.stack.group_column]),
            ]
        return list(dict.fromkeys(cols))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(key: str, want: str, got: Any) -> BundleError:
    return BundleError(f"manifest.json {key} must be {want}, got {json.dumps(got)}; fix it or rebuild the bundle")


def _get(d: dict, key: str, where: str, check: Callable[[Any], bool], want: str, default: Any = ...) -> Any:
    """``d[key]`` after ``check``; a missing key is an error unless a default is given."""
    name = f"{where}.{key}" if where else key
    if key not in d:
        if default is not ...:
            return default
        raise BundleError(f"manifest.json lacks {name} ({want}); rebuild the bundle with comp bundle")
    if not check(d[key]):
        raise _bad(name, want, d[key])
    return d[key]


def _numbers(n: int, positive: bool = False) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) and (x > 0 or not positive) for x in v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _rgb(v: list) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])


def _parse_graph(g: Any, i: int, bundle: Path) -> Graph:
    """Validate ``graphs[i]`` and check that its file exists."""
    where = f"graphs[{i}]"
    if not isinstance(g, dict):
        raise _bad(where, "an object", g)
    file = _get(g, "file", where, _nonempty_str, "a file name inside the bundle")
    path = bundle / file
    if not path.resolve().is_relative_to(bundle.resolve()):
        raise _bad(f"{where}.file", "a path inside the bundle folder", file)
    problem = file_problem(path)
    if problem:
        raise BundleError(
            f"graph file {path} (manifest.json {where}.file) {'is missing' if problem == 'not found' else problem}; "
            f"copy it into {bundle} or rebuild the bundle"
        )
    size = _get(
        g,
        "image_size",
        where,
        lambda v: _numbers(2, True)(v) and all(isinstance(x, int) for x in v),
        "[height, width] in pixels",
    )
    meta = None
    if "metadata" in g:
        meta = _parse_columns(
            _get(g, "metadata", where, lambda v: isinstance(v, dict), "an object"), f"{where}.metadata"
        )
    return Graph(
        meta=meta,
        meta_input=_get(g.get("metadata") or {}, "input", f"{where}.metadata", _nonempty_str, "an input name", "meta"),
        file=file,
        weight=float(_get(g, "weight", where, lambda v: _is_number(v) and v > 0, "a positive number")),
        size=(int(size[0]), int(size[1])),
        mean=_rgb(_get(g, "mean", where, _numbers(3), "3 numbers (RGB, 0..1 scale)")),
        std=_rgb(_get(g, "std", where, _numbers(3, True), "3 positive numbers (RGB, 0..1 scale)")),
        input=_get(g, "input", where, _nonempty_str, "the graph's input name"),
        output=_get(g, "output", where, _nonempty_str, "the graph's output name"),
        precision=str(g.get("precision", "fp32")),
    )


def _parse_columns(d: dict, where: str) -> Columns:
    """``numeric``, ``categorical`` (column names) and ``levels`` (each categorical column's training values)."""
    names = lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v)  # noqa: E731
    numeric = _get(d, "numeric", where, names, "a list of column names")
    cats = _get(d, "categorical", where, names, "a list of column names")
    levels = _get(d, "levels", where, lambda v: isinstance(v, dict) and all(names(v.get(c)) for c in cats), "levels")
    return Columns(list(numeric), list(cats), {c: list(levels[c]) for c in cats})


def _parse_stack(d: Any, bundle: Path, n_graphs: int, task: str) -> Stack:
    """The ``stack`` block: its metadata columns, group column and boosters (files inside the bundle)."""
    if not isinstance(d, dict):
        raise _bad("stack", "an object", d)
    _get(d, "method", "stack", lambda v: v == "gbdt", '"gbdt"')
    _get(d, "members", "stack", lambda v: v == n_graphs, f"{n_graphs} (one member per graph)")
    feats = _get(d, "features", "stack", lambda v: v is None or isinstance(v, dict), "an object or null", None)
    group = _get(d, "group_column", "stack", lambda v: v is None or _nonempty_str(v), "a column name or null", None)
    raw = _get(d, "boosters", "stack", lambda v: isinstance(v, list) and bool(v), "a non-empty list")
    boosters: list[tuple[str | None, list[float] | None]] = []
    for i, b in enumerate(raw):
        where = f"stack.boosters[{i}]"
        if isinstance(b, dict) and "constant" in b:
            boosters.append((None, [float(v) for v in _get(b, "constant", where, _numbers(1), "[a number]")]))
            continue
        file = _get(b if isinstance(b, dict) else {}, "file", where, _nonempty_str, "a booster file in the bundle")
        problem = file_problem(bundle / file)
        if problem or not (bundle / file).resolve().is_relative_to(bundle.resolve()):
            raise BundleError(
                f"booster {bundle / file} (manifest.json {where}) {problem or 'leaves the bundle'}; rebuild the bundle"
            )
        boosters.append((file, None))
    columns = None if feats is None else _parse_columns(feats, "stack.features")
    return Stack(columns, group, boosters, task == "classification")


def _parse_submission(
    s: Any, classes: list[str], id_column: str, task: str, v1: bool
) -> tuple[str, list[str], str | None, dict | None]:
    """Validate the ``submission`` block against the task and classes: (kind, columns, target_column, codes)."""
    if not isinstance(s, dict):
        raise _bad("submission", "an object", s)
    kinds = list(V1_KINDS) if v1 else list(TASK_KINDS[task])
    raw = _get(s, "kind", "submission", lambda v: v in kinds, " or ".join(map(json.dumps, kinds)))
    kind = V1_KINDS[raw] if v1 else raw
    columns = _get(s, "columns", "submission", _str_list, "the sample's header (distinct names)")
    if id_column not in columns:
        raise _bad("submission.columns", f"a header holding id_column {json.dumps(id_column)}", columns)
    target = codes = None
    wide = sorted(columns) == sorted([id_column, *classes])
    if kind == "proba" or (kind == "values" and (wide or len(columns) != 2)):
        if not wide:
            raise _bad("submission.columns", f"the id column plus one column per output for kind {kind}", columns)
    elif kind == "values" and len(classes) != 1:
        raise _bad("submission.columns", "the id column plus one column per target for several targets", columns)
    else:
        target = _get(
            s,
            "target_column",
            "submission",
            lambda v: v in columns and v != id_column,
            "a non-id column of submission.columns",
        )
    if kind == "codes":
        codes = _get(s, "codes", "submission", lambda v: v is None or isinstance(v, dict), "an object or null", None)
        if codes is None:
            codes = {c: i for i, c in enumerate(classes)}
        elif sorted(codes) != sorted(classes) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in codes.values()
        ):
            raise _bad("submission.codes", "an integer code for exactly each class", codes)
    return kind, columns, target, codes


def _parse_decision(
    s: dict, kind: str, classes: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """The ``submission.decision`` block: (thresholds, cutpoints, grades), each None when not given."""
    d = _get(s, "decision", "submission", lambda v: v is None or isinstance(v, dict), "an object or null", None)
    if not d:
        return None, None, None
    where = "submission.decision"
    thresholds = cutpoints = grades = None
    if kind == "tags" and "thresholds" in d:
        n = len(classes)
        thresholds = np.asarray(_get(d, "thresholds", where, _numbers(n), f"{n} numbers, one per label"), np.float64)
    if kind == "values" and "cutpoints" in d:
        cuts = _get(d, "cutpoints", where, lambda v: isinstance(v, list) and all(map(_is_number, v)), "numbers")
        grades = _get(d, "grades", where, _numbers(len(cuts) + 1), f"{len(cuts) + 1} numbers (one more than cutpoints)")
        if any(b < a for a, b in zip(cuts, cuts[1:])):
            raise _bad(f"{where}.cutpoints", "numbers in increasing order", cuts)
        cutpoints, grades = np.asarray(cuts, np.float64), np.asarray(grades, np.float64)
    return thresholds, cutpoints, grades


def load_manifest(bundle: Path) -> Manifest:
    """Read and validate ``bundle/manifest.json``; every graph file must exist."""
    path = bundle / "manifest.json"
    problem = file_problem(path)
    if problem:
        raise BundleError(
            f"{path} {problem}; pass --bundle with the bundle folder (it holds manifest.json and the .onnx files)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); rebuild the bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object; rebuild the bundle")
    fmt = data.get("format")
    if fmt not in READABLE_FORMATS:
        raise BundleError(
            f"manifest.json format is {json.dumps(fmt)}, this predict.py reads "
            f"{' and '.join(map(json.dumps, READABLE_FORMATS))}; use the predict.py of the same bundle"
        )
    v1 = fmt == "comp.bundle/1"
    task = "classification"
    if not v1:
        task = _get(data, "task", "", lambda v: v in TASK_KINDS, " or ".join(map(json.dumps, TASK_KINDS)))
    classes = _get(data, "classes", "", _str_list, "a list of distinct class names")
    graphs_raw = _get(data, "graphs", "", lambda v: isinstance(v, list) and bool(v), "a non-empty list of graphs")
    graphs = [_parse_graph(g, i, bundle) for i, g in enumerate(graphs_raw)]
    id_column = _get(data, "id_column", "", _nonempty_str, "the sample's id column name")
    ext = _get(data, "image_ext", "", lambda v: isinstance(v, str), 'a file extension such as ".png" (or "")', None)
    template = _get(data, "path_template", "", _nonempty_str, 'a format string such as "{id}.jpg"', None)
    if ext is None and template is None:
        raise BundleError('manifest.json sets neither image_ext nor path_template; add one (e.g. "image_ext": ".png")')
    kind, columns, target, codes = _parse_submission(data.get("submission"), classes, id_column, task, v1)
    thresholds, cutpoints, grades = (None, None, None) if v1 else _parse_decision(data["submission"], kind, classes)
    fingerprint = _get(data, "resize_fingerprint", "", _nonempty_str, "a sha256 hex string", None)
    stack = None if data.get("stack") is None else _parse_stack(data["stack"], bundle, len(graphs), task)
    if (stack is not None or any(g.meta for g in graphs)) and fmt != TABLE_FORMAT:
        raise _bad("format", json.dumps(TABLE_FORMAT) + " for a bundle that reads the test table", fmt)
    return Manifest(
        classes,
        graphs,
        id_column,
        ext,
        template,
        kind,
        columns,
        target,
        codes,
        fingerprint,
        task,
        thresholds,
        cutpoints,
        grades,
        stack,
    )


# ---------------------------------------------------------------------------------------------------------
# sample and images


@dataclass(frozen=True)
class Sample:
    """The sample submission read as strings: header, rows and each row's line number in the file."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]


def _read_csv(path: Path, what: str, fix: str) -> tuple[list[str], list[list[str]], list[int]]:
    """(header, rows, line numbers): every cell as the exact string in the file (no NA guessing), blank lines
    skipped, as comp reads a competition CSV."""
    problem = file_problem(path)
    if problem:
        raise BundleError(f"{what} {path} {problem}; {fix}")
    header: list[str] | None = None
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                if not row:
                    continue
                if header is None:
                    header = row
                elif len(row) != len(header):
                    raise BundleError(
                        f"{path} line {reader.line_num} has {len(row)} fields, the header {len(header)}; fix the CSV"
                    )
                else:
                    rows.append(row)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BundleError(f"{path} is not a readable UTF-8 CSV ({exc}); {fix}") from None
    if header is None or not rows:
        raise BundleError(f"{path} has no data rows; it needs a header and one row per test image")
    return header, rows, lines


def read_sample(path: Path) -> Sample:
    """Every cell as the exact string in the file (no NA guessing); blank lines are skipped."""
    fix = "pass --sample with the competition's sample_submission.csv"
    return Sample(path, *_read_csv(path, "sample submission", fix))


def check_sample(sample: Sample, m: Manifest) -> None:
    """The sample must have the id column and the columns the bundle was built for."""
    name, header = sample.path, sample.header
    if len(set(header)) != len(header):
        raise BundleError(f"{name} repeats a column name in its header {header}; fix the CSV")
    if m.id_column not in header:
        raise BundleError(
            f"{name} has no id column {m.id_column!r} (its columns: {', '.join(header)}); "
            "pass the competition's sample_submission.csv or fix id_column in manifest.json"
        )
    if sorted(header) != sorted(m.columns):
        raise BundleError(
            f"{name} columns {header} differ from the bundle's {m.columns} (manifest.json submission.columns); "
            "pass the sample the bundle was built for or rebuild the bundle"
        )
    col = header.index(m.id_column)
    for row, line in zip(sample.rows, sample.lines):
        if not row[col]:
            raise BundleError(f"{name} line {line} has an empty {m.id_column!r}; every row needs an id")


def image_paths(sample: Sample, m: Manifest, images: Path) -> list[Path]:
    """Each sample row's image file under ``images``; all must exist and stay inside the folder."""
    if not images.is_dir():
        raise BundleError(f"image folder {images} not found; pass --images with the folder of test images")
    root = images.resolve()
    col = sample.header.index(m.id_column)
    out = []
    for row, line in zip(sample.rows, sample.lines):
        rel = _relative_path(m, dict(zip(sample.header, row)), row[col], sample.path, line)
        p = Path(os.path.normpath(root / rel))  # as comp: by the names, so links into a shared pool are fine
        if not p.is_relative_to(root):
            raise BundleError(f"{sample.path} line {line}: image path {rel!r} leaves the image folder {root}")
        problem = file_problem(p)
        if problem:
            how = "path_template" if m.path_template else "image_ext"
            fix = f"check --images and {how} in manifest.json" if problem == "not found" else "replace the file"
            raise BundleError(f"{sample.path} line {line} (id {row[col]!r}): image {p} {problem}; {fix}")
        out.append(p)
    return out


def _relative_path(m: Manifest, record: dict[str, str], row_id: str, where: Path, line: int) -> str:
    """The image's path relative to the image folder, from path_template or id + image_ext."""
    if not m.path_template:
        return f"{row_id}{m.image_ext or ''}"
    try:
        return m.path_template.format(**record)
    except KeyError as exc:
        raise BundleError(
            f"manifest.json path_template {m.path_template!r} names column {exc} which {where} lacks"
        ) from None
    except (IndexError, ValueError) as exc:
        raise BundleError(
            f"manifest.json path_template {m.path_template!r} is not a valid template ({exc}) at {where} line {line}"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# the test table: metadata rows and groups, for metadata-tower graphs and GBDT stacks (comp.data._features)

NA_TEXT = ("nan", "na", "null", "none")  # text that means missing in a numeric column, as comp reads it


@dataclass(frozen=True)
class Table:
    """The test table's cells of the columns the bundle reads, one row per sample row (matched by id)."""

    path: Path
    cells: dict[str, list[str]]
    lines: list[int]  # each row's line in the table


def read_table(path: Path | None, sample: Sample, m: Manifest) -> Table | None:
    """The test table's rows of the sample's ids (None when the bundle reads no table)."""
    needed = m.table_columns
    if not needed:
        return None
    if path is None:
        raise BundleError(
            f"this bundle reads {', '.join(needed)} from the test table; pass --table with the competition's "
            "test CSV (the data.test_csv comp predict read)"
        )
    header, rows, lines = _read_csv(path, "test table", "pass --table with the competition's test CSV")
    missing = [c for c in [m.id_column, *needed] if c not in header]
    if missing:
        raise BundleError(f"test table {path} has no column {missing[0]!r} (its columns: {', '.join(header)})")
    col = header.index(m.id_column)
    where: dict[str, int] = {}
    for i, row in enumerate(rows):
        if where.setdefault(row[col], i) != i:
            raise BundleError(f"{path} line {lines[i]}: duplicate id {row[col]!r}; ids must be unique")
    at = []
    for row, line in zip(sample.rows, sample.lines):
        sid = row[sample.header.index(m.id_column)]
        if sid not in where:
            raise BundleError(f"{sample.path} line {line}: id {sid!r} is not in the test table {path}; pass its table")
        at.append(where[sid])
    cells = {c: [rows[i][header.index(c)] for i in at] for c in needed}
    return Table(path, cells, [lines[i] for i in at])


def _number(text: str, table: Table, column: str, i: int) -> float:
    t = text.strip()
    if not t or t.lower() in NA_TEXT:
        return math.nan
    try:
        value = float(t) if "_" not in t else math.nan  # pandas reads no digit separators
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BundleError(f"{table.path} line {table.lines[i]}: column {column!r} holds {text!r}, not a finite number")
    return value


def metadata_matrix(table: Table, cols: Columns) -> np.ndarray:
    """(rows, F) float64: numeric values (NaN missing), then each categorical column's code over its training
    levels (NaN missing): comp's ``Features.matrix()``. A value training never had is refused by name."""
    out = np.full((len(table.lines), len(cols.names)), np.nan)
    for j, name in enumerate(cols.numeric):
        out[:, j] = [_number(t, table, name, i) for i, t in enumerate(table.cells[name])]
    for j, name in enumerate(cols.categorical, start=len(cols.numeric)):
        code = {v: k for k, v in enumerate(cols.levels[name])}
        for i, text in enumerate(table.cells[name]):
            v = text.strip()
            if v and v not in code:
                raise BundleError(
                    f"{table.path} line {table.lines[i]}: column {name!r} holds {v!r}, a value the training table "
                    "never has; map it to a known value or leave the cell empty (missing)"
                )
            out[i, j] = code[v] if v else math.nan
    return out


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (pandas' ``rank(method="average")``)."""
    order = np.argsort(v, kind="mergesort")
    s = v[order]
    start = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    end = np.r_[start[1:], len(v)]
    ranks = np.empty(len(v))
    for a, b in zip(start, end):
        ranks[order[a:b]] = (a + b + 1) / 2
    return ranks


def group_relative(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's deviation from its group's mean and its rank in the group as a fraction in (0, 1]; NaN
    stays NaN and is skipped (comp.ensembling._side.group_relative on test rows, in numpy)."""
    dev, rank = np.full(values.shape, np.nan), np.full(values.shape, np.nan)
    _, inverse = np.unique(groups, return_inverse=True)
    for g in range(int(inverse.max()) + 1 if len(inverse) else 0):
        rows = np.flatnonzero(inverse == g)
        v = values[rows]
        for j in range(v.shape[1]):
            ok = ~np.isnan(v[:, j])
            if ok.any():
                dev[rows, j] = v[:, j] - v[ok, j].mean()
                rank[rows[ok], j] = _average_ranks(v[ok, j]) / ok.sum()
    return dev, rank


def stack_design(P: np.ndarray, X: np.ndarray, n_numeric: int, groups: np.ndarray | None) -> np.ndarray:
    """The stack's feature matrix (comp.ensembling._side.design): every member's prediction of every column, the
    metadata, then with groups the deviation and rank of the members' mean prediction and the numeric metadata."""
    M, n, C = P.shape
    parts = [P.transpose(1, 0, 2).reshape(n, M * C), X]
    if groups is not None:
        dev, rank = group_relative(np.concatenate([P.mean(axis=0), X[:, :n_numeric]], axis=1), groups)
        parts += [dev, rank]
    return np.concatenate(parts, axis=1)


def run_stack(bundle: Path, stack: Stack, P: np.ndarray, table: Table | None) -> np.ndarray:
    """The GBDT stack's predictions (n, C) of the members' predictions ``P`` (M, n, C) and the table's rows."""
    try:
        import lightgbm
    except ImportError:
        raise BundleError("this bundle's GBDT stack needs LightGBM; pip install lightgbm") from None
    n = P.shape[1]
    X, n_numeric = np.zeros((n, 0)), 0
    if stack.columns is not None and table is not None:
        X, n_numeric = metadata_matrix(table, stack.columns), len(stack.columns.numeric)
    groups = None
    if stack.group_column is not None and table is not None:
        groups = np.array([c or "nan" for c in table.cells[stack.group_column]])  # comp: an empty group is 'nan'
    design = stack_design(P, X, n_numeric, groups)
    out = []
    for file, constant in stack.boosters:
        if constant is not None:
            out.append(np.tile(np.asarray(constant, np.float64), (n, 1)))
            continue
        try:
            booster = lightgbm.Booster(model_file=str(bundle / str(file)))
        except Exception as exc:  # noqa: BLE001 - LightGBM raises its own error types
            raise BundleError(
                f"booster {bundle / str(file)} cannot be loaded ({_first_line(exc)}); rebuild the bundle"
            ) from None
        out.append(np.asarray(booster.predict(design), np.float64).reshape(n, -1))
    probs = np.concatenate(out, axis=1)
    return probs / probs.sum(axis=1, keepdims=True) if stack.normalise else probs


# ---------------------------------------------------------------------------------------------------------
# onnxruntime


class Runner:
    """One graph's onnxruntime session: normalised float32 NCHW batch in, (N, classes) predictions out."""

    def __init__(self, session: Any, graph: Graph, n_classes: int):
        self.session, self.graph, self.n_classes = session, graph, n_classes
        self.fixed_batch, self.dtype = self._check_io()

    def _check_io(self) -> tuple[int | None, type]:
        """Validate the manifest's names and shapes against the graph: (its fixed batch size or None, dtype)."""
        g = self.graph
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if g.input not in inputs:
            raise BundleError(
                f"graph {g.file} has no input {g.input!r} (it has {', '.join(inputs)}); fix its input in manifest.json"
            )
        if g.output not in outputs:
            raise BundleError(
                f"graph {g.file} has no output {g.output!r} (it has {', '.join(outputs)}); fix its output in manifest.json"
            )
        want_inputs = {g.input, g.meta_input} if g.meta else {g.input}
        if set(inputs) != want_inputs:
            what = "an image batch and metadata rows" if g.meta else "one image batch"
            raise BundleError(
                f"graph {g.file} takes inputs {', '.join(inputs)}; manifest.json says {what}; rebuild the bundle"
            )
        shape = list(inputs[g.input].shape)
        want = [3, g.size[0], g.size[1]]
        if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape[1:], want)):
            raise BundleError(f"graph {g.file} takes shape {shape}, manifest.json says N x {want}; rebuild the bundle")
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(inputs[g.input].type)
        if dtype is None:
            raise BundleError(
                f"graph {g.file} takes {inputs[g.input].type}, not a float image batch; rebuild the bundle"
            )
        return (shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None), dtype

    def __call__(self, x: np.ndarray, meta: np.ndarray | None = None) -> np.ndarray:
        step = self.fixed_batch or len(x)
        parts = [
            self._run(x[i : i + step], step, None if meta is None else meta[i : i + step])
            for i in range(0, len(x), step)
        ]
        probs = np.concatenate(parts)[: len(x)]
        if probs.shape != (len(x), self.n_classes):
            raise BundleError(
                f"graph {self.graph.file} returned shape {probs.shape}, expected ({len(x)}, {self.n_classes})"
            )
        return probs.astype(np.float64)

    def _run(self, x: np.ndarray, step: int, meta: np.ndarray | None) -> np.ndarray:
        # a graph with a fixed batch size: pad the last chunk with copies of its first image
        if len(x) < step:
            x = np.concatenate([x, np.repeat(x[:1], step - len(x), axis=0)])
            meta = None if meta is None else np.concatenate([meta, np.repeat(meta[:1], step - len(meta), axis=0)])
        try:
            feed: dict[str, np.ndarray] = {self.graph.input: x.astype(self.dtype, copy=False)}
            if meta is not None:  # raw rows, float32 whatever the graph's precision: scaling happens inside
                feed[self.graph.meta_input] = np.ascontiguousarray(meta, dtype=np.float32)
            return np.asarray(self.session.run([self.graph.output], feed)[0])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(
                f"graph {self.graph.file} failed on a batch of {len(x)} images: {_first_line(exc)}"
            ) from None


def _first_line(exc: BaseException) -> str:
    """An exception's message as one line (onnxruntime's can span many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError(
            "onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu), e.g. from a Kaggle dataset of wheels"
        ) from None
    ort.set_default_logger_severity(3)
    return ort


def _session(ort: Any, path: Path, providers: list[str], threads: int | None) -> Any:
    """An onnxruntime session on ``providers``, quiet below errors, ``threads`` intra-op threads if given."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def open_runners(bundle: Path, m: Manifest, provider: str, threads: int | None) -> tuple[list[Runner], str]:
    """A session per graph on the requested provider; ``auto`` falls back to CPU when CUDA cannot start."""
    ort = _import_ort()
    available = ort.get_available_providers()
    if provider == "cuda" and CUDA not in available:
        raise BundleError(
            f"--provider cuda: this onnxruntime has no {CUDA} (it has {', '.join(available)}); "
            "install onnxruntime-gpu or use --provider auto"
        )
    use_cuda, note = provider != "cpu" and CUDA in available, ""
    runners, used = [], []
    for g in m.graphs:
        session = None
        if use_cuda:
            session, why = _try_cuda(ort, bundle / g.file, threads, show_logs=provider == "cuda")
            if session is None and provider == "cuda":
                raise BundleError(f"--provider cuda: {why}; use --provider auto or cpu")
            if session is None:
                use_cuda, note = False, f" ({why})"
        if session is None:
            session = _open_cpu(ort, bundle / g.file, threads)
        runners.append(Runner(session, g, len(m.classes)))
        used.append(session.get_providers()[0])
    return runners, ", ".join(dict.fromkeys(used)) + note


def _try_cuda(ort: Any, path: Path, threads: int | None, show_logs: bool) -> tuple[Any | None, str]:
    """A CUDA session, or None and why; onnxruntime's own log of the failure shows only when CUDA was asked for."""
    if not show_logs:
        ort.set_default_logger_severity(4)
    try:
        session = _session(ort, path, [CUDA, "CPUExecutionProvider"], threads)
    except Exception as exc:  # noqa: BLE001 - any failure to start CUDA means: use the CPU
        return None, f"CUDA failed to start: {_first_line(exc)}"
    finally:
        ort.set_default_logger_severity(3)
    if session.get_providers()[0] != CUDA:  # onnxruntime may quietly run a CUDA session on the CPU
        return None, "CUDA failed to start"
    return session, ""


def _open_cpu(ort: Any, path: Path, threads: int | None) -> Any:
    """A CPU session; a graph onnxruntime cannot load is a BundleError."""
    try:
        return _session(ort, path, ["CPUExecutionProvider"], threads)
    except Exception as exc:  # noqa: BLE001 - a corrupt or unsupported graph file
        raise BundleError(
            f"graph {path} cannot be loaded by onnxruntime ({_first_line(exc)}); rebuild the bundle"
        ) from None


def int8_note(graphs: list[Graph], provider: str, cpuinfo: str | None = None) -> str | None:
    """Why int8 graphs may not be faster here (a GPU runs them, or the CPU has no int8 dot-product
    instructions: avx512_vnni, avx_vnni, Arm asimddp), or None."""
    if not any(g.precision == "int8" for g in graphs):
        return None
    if CUDA in provider:
        return "the int8 graphs run on CUDA, where they may not be faster than float32"
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = {w for line in cpuinfo.splitlines() if line.lower().startswith(("flags", "features")) for w in line.split()}
    if flags.intersection({"avx512_vnni", "avx_vnni", "asimddp"}):
        return None
    return "this CPU has no int8 dot-product instructions (VNNI); the int8 graphs may not be faster than float32"


# ---------------------------------------------------------------------------------------------------------
# prediction loop


class Progress:
    """In-place progress on a terminal, a line per 10% otherwise, nothing when quiet."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet = total, quiet
        self.tty = sys.stderr.isatty()
        self.shown = 0
        self.open = False  # an in-place line without its newline yet

    def update(self, done: int) -> None:
        if self.quiet or not self.total:
            return
        pct = 100 * done // self.total
        if self.tty:
            print(f"\rpredict {done}/{self.total} ({pct}%)", end="", file=sys.stderr, flush=True)
            self.open = True
        elif pct // 10 > self.shown // 10 or done >= self.total:
            print(f"predict {done}/{self.total} ({pct}%)", file=sys.stderr, flush=True)
            self.shown = pct

    def close(self) -> None:
        """End the in-place line, so whatever follows (an error too) starts on a line of its own."""
        if self.open:
            print(file=sys.stderr, flush=True)
            self.open = False


def _prepare(path: Path, line: int, sample: Path, sizes: list[tuple[int, int]], resize: Resize) -> dict:
    """Decode one image and resize it to every graph size, naming the sample row when the file is bad."""
    try:
        img = load_rgb(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        kind = "not an image" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise BundleError(f"image {path} ({sample} line {line}) is unreadable ({kind}); replace the file") from None
    return {size: resize(img, size[0], size[1]) for size in sizes}


def _batches(
    jobs: list[tuple[Path, int]], batch_size: int, work: Callable[[Path, int], dict], workers: int
) -> Iterator[list[dict]]:
    """Prepared images batch by batch, decoding up to two batches ahead on a thread pool."""
    pool = ThreadPoolExecutor(max_workers=workers)
    pending: deque[list[Future]] = deque()
    starts = iter(range(0, len(jobs), batch_size))

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append([pool.submit(work, p, line) for p, line in jobs[start : start + batch_size]])

    try:
        submit()
        submit()
        while pending:
            futures = pending.popleft()
            submit()
            yield [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def predict(
    paths: list[Path],
    sample: Sample,
    m: Manifest,
    runners: list[Runner],
    resize: Resize,
    args: argparse.Namespace,
    table: Table | None = None,
    metas: list[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Every graph's predictions blended, (rows, classes) float64, in the sample's row order: their weighted
    mean, or the manifest's GBDT stack over them (``table``: the test table's rows, for metadata and groups)."""
    sizes = sorted({g.size for g in m.graphs})
    luts = {(g.mean, g.std): normalize_lut(g.mean, g.std) for g in m.graphs}
    workers = max(1, min(4, args.threads or os.cpu_count() or 1))
    jobs = list(zip(paths, sample.lines))
    outs = np.zeros((len(runners), len(paths), len(m.classes)), dtype=np.float64)
    metas = metas or [None] * len(runners)  # per graph: its raw metadata rows (metadata_matrix), or None
    progress = Progress(len(paths), args.quiet)
    done = 0

    def work(path: Path, line: int) -> dict:
        return _prepare(path, line, sample.path, sizes, resize)

    try:
        for batch in _batches(jobs, args.batch_size, work, workers):
            inputs: dict[tuple, np.ndarray] = {}  # graphs that share size and normalisation share the input
            for i, r in enumerate(runners):
                g, rows = r.graph, slice(done, done + len(batch))
                key = (g.size, g.mean, g.std)
                if key not in inputs:
                    inputs[key] = normalize_batch(np.stack([b[g.size] for b in batch]), luts[(g.mean, g.std)])
                meta = metas[i]
                outs[i, rows] = r(inputs[key], None if meta is None else meta[rows])
            done += len(batch)
            progress.update(done)
    finally:
        progress.close()
    if m.stack is not None:
        probs = run_stack(args.bundle, m.stack, outs, table)
    else:
        weights = np.asarray([g.weight for g in m.graphs])
        probs = np.tensordot(weights, outs, axes=1) / weights.sum()
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise BundleError(
            f"the graphs gave non-finite predictions for {sample.path} line {sample.lines[int(np.argmax(bad))]}"
        )
    return probs


# ---------------------------------------------------------------------------------------------------------
# output


def _cell(p: float) -> str:
    return repr(float(p))  # shortest text that reads back as the same double, as pandas writes


def grade_cells(values: np.ndarray, cutpoints: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Values -> the text of their grades: ``grades[i]`` between cut ``i-1`` and cut ``i``, as integers when
    every grade is one (as comp writes them)."""
    g = grades[np.searchsorted(cutpoints, values)]
    whole = bool(np.all(grades == np.round(grades)))
    return np.asarray([str(int(v)) if whole else _cell(v) for v in g.reshape(-1)], dtype=object).reshape(g.shape)


def submission_rows(sample: Sample, m: Manifest, probs: np.ndarray) -> list[list[str]]:
    """The submission in the sample's column and row order, ids exactly as the sample writes them, rendered as
    comp's ``make_submission`` renders the manifest's kind (see the module docstring)."""
    cells = None
    if m.kind == "values" and m.cutpoints is not None and m.grades is not None:
        cells = grade_cells(probs, m.cutpoints, m.grades)
    elif m.kind in ("proba", "values"):
        cells = np.asarray([[_cell(v) for v in p] for p in probs], dtype=object).reshape(probs.shape)
    best = probs.argmax(axis=1)
    on = probs >= (m.thresholds if m.thresholds is not None else np.full(len(m.classes), 0.5))[None, :]
    out = []
    for i, row in enumerate(sample.rows):
        record = dict(zip(sample.header, row))
        if cells is not None and m.target_column is None:
            record.update(zip(m.classes, cells[i]))
        elif cells is not None:  # values of one target, in the sample's own column
            record[m.target_column or ""] = cells[i][0]
        elif m.kind == "names":
            record[m.target_column or ""] = m.classes[best[i]]
        elif m.kind == "tags":
            record[m.target_column or ""] = " ".join(c for c, o in zip(m.classes, on[i]) if o)
        else:
            record[m.target_column or ""] = str((m.codes or {})[m.classes[best[i]]])
        out.append([record[c] for c in sample.header])
    return out


def check_writable(path: Path) -> None:
    """Refuse an output whose folder is missing or read-only before any image is read."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BundleError(f"cannot write {path}: folder {folder} does not exist; create it or choose another path")
    if path.is_dir():
        raise BundleError(f"cannot write {path}: it is a folder; pass a file path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BundleError(f"cannot write {path}: folder {folder} is not writable; choose a writable place")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_outputs(args: argparse.Namespace, m: Manifest) -> None:
    """--out and --probs must not be a file this script reads (the sample, the bundle's files, an image), nor
    each other: comp's one output guard, in the few lines this script can carry without comp."""
    reads = [("the --sample file", args.sample), ("the bundle's manifest.json", args.bundle / "manifest.json")]
    reads += [("the bundle's predict.py", args.bundle / "predict.py")]
    reads += [(f"the bundle's graph {g.file}", args.bundle / g.file) for g in m.graphs]
    reads += [("the --table file", args.table)] if args.table is not None else []
    reads += [(f"the bundle's booster {f}", args.bundle / f) for f, _ in (m.stack.boosters if m.stack else []) if f]
    outs = [("--out", args.out)] + ([("--probs", args.probs)] if args.probs is not None else [])
    for option, path in outs:
        for what, other in reads:
            if _same_file(path, other):
                raise BundleError(f"{option} {path} is {what}, which predict.py reads; choose another {option}")
        if path.exists() and path.resolve().is_relative_to(args.images.resolve()):
            raise BundleError(f"{option} {path} is a file in the --images folder; choose another {option}")
    if args.probs is not None and _same_file(args.out, args.probs):
        raise BundleError(f"--out and --probs are the same file {args.out}; give --probs another path")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``; nothing is left on failure."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BundleError(f"cannot write {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # a normal file, not mkstemp's private 0600
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BundleError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# command line


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    ap = argparse.ArgumentParser(
        prog="predict.py", description="Predict a Kaggle submission offline from a comp bundle."
    )
    ap.add_argument("--images", required=True, type=Path, help="folder of test images")
    ap.add_argument("--sample", required=True, type=Path, help="the competition's sample_submission.csv")
    ap.add_argument("--out", required=True, type=Path, help="submission CSV to write")
    ap.add_argument(
        "--table",
        type=Path,
        default=None,
        help="the competition's test CSV with the metadata columns (when the bundle reads them)",
    )
    ap.add_argument(
        "--bundle",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="bundle folder (default: this file's)",
    )
    ap.add_argument("--batch-size", type=_positive_int, default=32)
    ap.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="onnxruntime CPU threads (default: its own choice)",
    )
    ap.add_argument("--provider", choices=("cpu", "cuda", "auto"), default="auto")
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    ap.add_argument(
        "--probs", type=Path, default=None, help="also write id + one prediction column per class, label or target"
    )
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Validate everything cheap first, then load the graphs, predict and write the files."""
    m = load_manifest(args.bundle)
    sample = read_sample(args.sample)
    check_sample(sample, m)
    paths = image_paths(sample, m, args.images)
    table = read_table(args.table, sample, m)
    metas = [None if g.meta is None or table is None else metadata_matrix(table, g.meta) for g in m.graphs]
    if m.stack is not None and m.stack.columns is not None and table is not None:
        metadata_matrix(table, m.stack.columns)  # refuse a bad cell before any graph runs
    for target in (args.out, args.probs):
        if target is not None:
            check_writable(target)
    check_outputs(args, m)
    resize, how, warning = choose_resize(m.fingerprint)
    if warning and not args.quiet:
        print(f"warning: {warning}", file=sys.stderr)
    runners, provider = open_runners(args.bundle, m, args.provider, args.threads)
    slow = int8_note(m.graphs, provider)
    if slow and not args.quiet:
        print(f"note: {slow}", file=sys.stderr)
    if not args.quiet:
        print(
            f"predict.py: {len(paths)} images, {len(runners)} graph(s) on {provider}; resize: {how}",
            file=sys.stderr,
        )
    probs = predict(paths, sample, m, runners, resize, args, table, metas)
    if args.probs is not None:  # the submission last: it is the file a notebook checks for
        col = sample.header.index(m.id_column)
        rows = [[row[col], *map(_cell, p)] for row, p in zip(sample.rows, probs)]
        write_csv(args.probs, [m.id_column, *m.classes], rows)
    write_csv(args.out, sample.header, submission_rows(sample, m, probs))
    if not args.quiet:
        print(f"wrote {args.out} ({len(paths)} rows)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one ``error:`` line on a problem the user can fix."""
    # set here, in the script's own process, not at import: comp imports this module and must not change its
    # caller's PIL settings. A truncated file is an error, as in comp, not a half-grey image.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    args = parse_args(argv)
    try:
        run(args)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
