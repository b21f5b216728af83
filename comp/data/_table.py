"""Reading the competition CSVs, the class list, images as RGB, and the Dataset.

Bad input (missing column, duplicate ids, NaN labels, a missing or unreadable image, a path that
escapes the image folder) raises ``CompError`` naming the file, row or key and the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from comp._files import file_problem
from comp._progress import track
from comp.data._attributes import Scheme, Targets, class_names, parse_labels
from comp.data._attributes import targets as attribute_targets
from comp.data._csv import check_ids, read_csv, require_columns
from comp.data._features import Features, read_train_features
from comp.data._layout import files_from_ids, inside, read_layout
from comp.data._sample_weights import read_weights
from comp.data._targets import read_targets
from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import DataConfig


@dataclass
class TrainTable:
    """The training table after validation: ids, labels, targets, groups, paths.

    ``classes`` are the output columns (classes, labels or target names); ``targets`` what CV scores against:
    class indices (n,) for classification, an (n, K) float matrix for multilabel (0/1) and regression (values).
    ``train_targets`` are the ones models fit (they differ only where ``data.labels`` bins an attribute
    differently for training). ``scheme`` and ``attributes`` are set when the labels are made of attributes.
    """

    df: pd.DataFrame
    classes: list[str]
    targets: np.ndarray
    groups: np.ndarray | None
    paths: list[Path]
    train_targets: np.ndarray = None  # type: ignore[assignment]  # None: the same as targets
    scheme: Scheme | None = None
    attributes: Targets | None = None
    task: str = "classification"
    features: Features | None = None  # data.features of every row, validated (None: the config names none)
    weights: np.ndarray | None = None  # data.weight_column: one weight >= 0 per row (None: every row weighs 1)

    def __post_init__(self) -> None:
        if self.train_targets is None:
            self.train_targets = self.targets

    def target_labels(self, idx: np.ndarray | None = None) -> np.ndarray:
        """What OOF files store as each row's target: the class name (n,), or the target matrix (n, K)."""
        rows = slice(None) if idx is None else idx
        if self.targets.ndim == 1:
            return np.asarray(self.classes, dtype=object)[self.targets[rows]]
        return np.asarray(self.targets[rows], dtype=np.float64)


def load_train_table(data_cfg: DataConfig, check_images: bool = True, *, task: str = "classification") -> TrainTable:
    """Read and validate the training rows (``data.layout`` or ``data.train_csv``), their targets (as ``task``
    reads them) and image paths."""
    df, paths, where = _train_rows(data_cfg, check_images)
    group_col = data_cfg.group_column
    if group_col is None and data_cfg.layout is not None and data_cfg.layout.get("group"):
        group_col = "group"  # the layout says what a group is (e.g. the person's folder)
    source = data_cfg.train_csv if data_cfg.layout is None else "data.layout rows"
    if group_col:
        require_columns(df, [group_col], source, "data.group_column")
        if df[group_col].isna().any():
            i = int(np.flatnonzero(df[group_col].isna().to_numpy())[0])
            raise CompError(f"{where(i)}: empty group in column '{group_col}'; fill it or unset data.group_column")
    groups = df[group_col].to_numpy() if group_col else None
    feats = read_train_features(data_cfg, df) if data_cfg.features else None
    weights = read_weights(df, data_cfg.weight_column, source, where) if data_cfg.weight_column else None
    if data_cfg.labels is not None:
        scheme = parse_labels(data_cfg.labels, columns=df.columns, key="data.labels")
        found = attribute_targets(df, scheme)
        classes = class_names(scheme)
        return TrainTable(
            df,
            classes,
            found.score_codes,
            groups,
            paths,
            found.train_codes,
            scheme,
            found,
            features=feats,
            weights=weights,
        )
    read = read_targets(task, df, data_cfg, source, where)
    return TrainTable(df, read.classes, read.values, groups, paths, task=task, features=feats, weights=weights)


def train_metadata(data_cfg: DataConfig) -> tuple[pd.DataFrame, np.ndarray | None, Features | None]:
    """The training rows (without reading their targets or images), their groups and ``data.features``: what a
    stack reads beside the members' predictions."""
    df, _, where = _train_rows(data_cfg, False)
    group_col = data_cfg.group_column or (
        "group" if data_cfg.layout is not None and data_cfg.layout.get("group") else None
    )
    groups = None
    if group_col:
        source = data_cfg.train_csv if data_cfg.layout is None else "data.layout rows"
        require_columns(df, [group_col], source, "data.group_column")
        groups = df[group_col].astype(str).to_numpy()
    return df, groups, read_train_features(data_cfg, df) if data_cfg.features else None


def train_paths(data_cfg: DataConfig, check_images: bool = True) -> list[Path]:
    """The training rows' image paths, without reading their targets (whatever the task)."""
    return _train_rows(data_cfg, check_images)[1]


def _train_rows(data_cfg: DataConfig, check_images: bool) -> tuple[pd.DataFrame, list[Path], Callable[[int], str]]:
    """The training rows, each row's image path, and a function naming row ``i`` in messages."""
    id_col = data_cfg.id_column
    if data_cfg.layout is None:
        path = data_cfg.train_csv
        df = read_csv(path, "train CSV")
        require_columns(df, [id_col], path, "data.id_column")
        check_ids(df, id_col, path)
        paths = image_paths(df, data_cfg.image_dir, data_cfg, path, check=check_images)
        return df.reset_index(drop=True), paths, lambda i: f"{path} line {i + 2}"
    df = read_layout(data_cfg.layout, root=data_cfg.root or ".", key="data.layout")
    if id_col != "id":  # every table comp writes names its ids data.id_column
        if id_col in df.columns:
            raise CompError(
                f"data.id_column {id_col!r} is also a column of the data.layout rows; set data.id_column "
                "to a new name (the layout's ids go under it) or rename that column"
            )
        df = df.rename(columns={"id": id_col})
    ids = df[id_col].to_numpy()
    return df, [Path(p) for p in df["path"]], lambda i: f"data.layout row {i} (id {ids[i]!r})"


def image_paths(df: pd.DataFrame, image_dir, data_cfg: DataConfig, csv_path, check: bool = True) -> list[Path]:
    """Resolve each row's image file under ``image_dir`` from ``path_template`` or ``id + image_ext``."""
    root = Path(image_dir).resolve()
    if check and not root.is_dir():
        raise CompError(
            f"image folder {root} not found; set data.image_dir (or data.test_image_dir) to the folder of images"
        )
    template = data_cfg.path_template
    id_col = data_cfg.id_column
    out = []
    records = df.to_dict("records") if template else ({id_col: v} for v in df[id_col].tolist())
    for i, rec in enumerate(records):
        try:
            rel = template.format(**rec) if template else f"{rec[id_col]}{data_cfg.image_ext}"
        except KeyError as exc:
            raise CompError(f"data.path_template {template!r} names column {exc} which {csv_path} lacks") from None
        except (ValueError, IndexError, AttributeError) as exc:
            raise CompError(
                f"data.path_template {template!r} is not a valid template ({exc}); "
                "name columns in braces, e.g. '{person}/{id}.jpg'"
            ) from None
        p = inside(root, rel)
        if p is None:
            raise CompError(
                f"{csv_path} line {i + 2}: image path {rel!r} escapes the image folder {root}; use paths inside it"
            )
        out.append(p)
    if check:
        for i, p in enumerate(out):
            problem = file_problem(p)
            if problem:
                fix = (
                    "check data.image_dir, data.image_ext or data.path_template"
                    if problem == "not found"
                    else "replace it with the image file or remove its row"
                )
                raise CompError(f"{csv_path} line {i + 2}: image {p} {problem}; {fix}")
    return out


def check_image(path: Path) -> str | None:
    """Why ``path`` cannot be trained on, from what is cheap to see without decoding it (None when it looks
    fine): not an image, over PIL's decompression-bomb size, a PNG whose chunks fail their checksums, or a
    JPEG cut short. Full decoding happens in the loaders, which name the file too."""
    problem = file_problem(path)
    if problem:
        return f"the path {problem}"
    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 4096))
                if b"\xff\xd9" not in fh.read():
                    return "the JPEG ends before its end-of-image marker (truncated)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return None


def check_images(paths: list[Path], csv_path, *, threads: int = 8) -> None:
    """Fail on the first image (by row) that :func:`check_image` rejects, naming the row and the file."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(track(pool.map(check_image, paths), "checking images", total=len(paths)))
    for i, why in enumerate(problems):
        if why is not None:
            raise CompError(
                f"{csv_path} line {i + 2}: image {paths[i]} is unreadable ({why}); replace the file or remove its row"
            )


def load_image(path: str | Path) -> np.ndarray:
    """Read any image as an RGB uint8 array (H, W, 3): grayscale, palette, RGBA, CMYK and 16-bit alike."""
    problem = file_problem(path)  # a FIFO would block the loader forever, /dev/zero fill the memory
    if problem:
        raise CompError(f"image {path} {problem}; replace it with the image file or remove its row")
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error to report, not a gray image to train on
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CompError(
            f"image {path} is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "replace or remove the file"
        ) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


# The value that maps to white, per mode: 16-bit modes and mode I (32-bit integers, which is how older Pillow
# and some TIFF writers give 16-bit images) are 0..65535; mode F (32-bit float) is 0..1. Values outside clip.
FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to RGB uint8, scaling high-bit-depth data instead of clipping it."""
    full = FULL_SCALE.get(im.mode)
    if full is not None:  # one scale per mode, never guessed from the pixel values (README: image modes)
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0)
        arr = np.clip(arr / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparent pixels become white, not black
        im = Image.alpha_composite(bg, im)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # writable (np.asarray of a PIL image is read-only; torch warns on it)


def load_test_table(data_cfg: DataConfig, check_images: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """Ids to predict: ``data.test_csv`` if set, else the sample submission's id column."""
    path = data_cfg.test_csv or data_cfg.sample_submission
    if not path:
        raise CompError("no test ids: set data.test_csv or data.sample_submission in the config")
    df = read_csv(path, "test CSV")
    require_columns(df, [data_cfg.id_column], path, "data.id_column")
    check_ids(df, data_cfg.id_column, path)
    if data_cfg.path_template:
        paths = image_paths(df, data_cfg.test_image_dir, data_cfg, path, check=check_images)
    else:  # ids that already name their files (the mask contest's '<hash>.jpg') are used as they are
        rows = files_from_ids(
            path,
            id_column=data_cfg.id_column,
            image_dir=data_cfg.test_image_dir,
            image_ext=data_cfg.image_ext,
            check=check_images,
        )
        paths = [Path(p) for p in rows["path"]]
    return df.reset_index(drop=True), paths


class ImageDataset:
    """(image, target) pairs: reads each file as RGB and applies an albumentations pipeline.

    ``targets``: class indices (n,) give an int per row (-1 without targets), a float matrix (n, K) gives a
    float32 vector per row (multi-hot labels, regression values). ``reader`` maps a path to an RGB uint8
    array; the decoded-image cache plugs in here. With ``weights`` (one per path), each item is
    (image, target, weight): the sample weights of ``data.weight_column``. With ``meta`` (n, F) (a metadata
    tower's rows), the row comes last: (image, target[, weight], meta row). A batch tells them apart by
    shape: weights are (B,), metadata rows (B, F) (see ``comp.training._engine.unpack``).
    """

    def __init__(self, paths, targets=None, transform=None, reader=None, weights=None, meta=None):
        self.paths = [Path(p) for p in paths]
        self.meta = None if meta is None else np.asarray(meta, np.float32)
        if targets is None:
            self.targets = None
        else:
            arr = np.asarray(targets)
            self.targets = arr.astype(np.float32) if arr.ndim == 2 else arr.astype(np.int64)
        self.transform = transform
        self.reader = reader or load_image
        self.weights = None if weights is None else np.asarray(weights, np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = self.reader(self.paths[i])
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        target = -1 if self.targets is None else self.targets[i] if self.targets.ndim == 2 else int(self.targets[i])
        item = (img, target) if self.weights is None else (img, target, self.weights[i])
        return item if self.meta is None else (*item, self.meta[i])
