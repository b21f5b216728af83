"""A trained run, model or blend used on new images from Python: ``comp.load_predictor(path).predict(images)``.

The numbers are ``comp predict``'s: each member's folds run by an ``ENGINES`` entry with its TTA views merged
(``model_outputs``), the mean of the folds, then the weighted mean of the members (a blend's weights, equal
weights for the models of a run), and the submission's decision (``decisions``: argmax, fitted thresholds or
cut-points). Images are read as comp reads files (``to_rgb``: one scale per PIL mode), whatever form they come in.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from comp.config import Config, DataConfig, load_config
from comp.config._layout import IMAGE_EXTENSIONS
from comp.data._augment import from_dict
from comp.data._table import load_image, load_test_table, to_rgb
from comp.errors import CompError
from comp.inference._bundle_source import Source, resolve_source
from comp.inference._engines import ENGINES, Engine
from comp.inference._predict import Fold, fitted_decision, load_folds, model_outputs, resolve_options
from comp.metrics import get_metric
from comp.run import RunDir
from comp.submission._format import decisions
from comp.tasks import Decision
from comp.training._tower import frame_metadata

if TYPE_CHECKING:
    import torch

Images = Any  # a path, a folder, a list of paths or images, a PIL image, a numpy array or a DataFrame of ids


@dataclass
class _Member:
    run: RunDir
    model_id: str
    weight: float
    cfg: Config
    engine: Engine
    folds: list[Fold]
    tta: list[str]
    merge: str
    batch_size: int


class Predictor:
    """Predictions of a trained run, model folder or blend on any images (see ``load_predictor``)."""

    def __init__(self, source: Source, members: list[_Member], classes: list[str], decision: Decision | None):
        self.source, self.members, self.classes, self.decision = source, members, classes, decision
        self.task = source.task
        self.id_column = source.data.id_column

    def __repr__(self) -> str:
        parts = ", ".join(f"{m.model_id} x{len(m.folds)} folds (w={m.weight:g})" for m in self.members)
        return f"Predictor({self.source.kind} {str(self.source.path)!r}, {self.task}: {parts})"

    def _repr_html_(self) -> str:
        rows = pd.DataFrame(
            [
                {
                    "model": f"{m.run.root.name}/{m.model_id}",
                    "folds": len(m.folds),
                    "weight": m.weight,
                    "engine": type(m.engine).__name__,
                    "tta": ",".join(m.tta) or "none",
                }
                for m in self.members
            ]
        )
        head = f"<b>Predictor</b> ({self.source.kind} <code>{self.source.path}</code>, {self.task})"
        return head + rows.to_html(index=False)

    # -- predictions ------------------------------------------------------------------
    def predict_proba(self, x: Images, *, metadata: pd.DataFrame | None = None, progress: bool = False) -> pd.DataFrame:
        """One row per image: its id, then one column per class (probabilities), label or target, in the task's
        units: the members' weighted mean of their fold means, as ``comp predict`` writes ``test.csv``.

        A metadata tower's model also reads each image's ``data.features``: ``metadata`` is a DataFrame with
        those columns, one row per image in the images' order (``x`` itself when it is a DataFrame holding them)."""
        ids, paths, reader = self._inputs(x)
        if metadata is None and isinstance(x, pd.DataFrame):
            metadata = x
        total = sum(m.weight for m in self.members)
        out = np.zeros((len(paths), len(self.classes)))
        for m in self.members:
            probs, _ = model_outputs(
                m.engine,
                m.run,
                m.model_id,
                m.folds,
                paths,
                tta=m.tta,
                merge=m.merge,
                batch_size=m.batch_size,
                num_workers=m.cfg.data.num_workers if reader is None else 0,
                desc=f"{m.model_id} predict" if progress else "",
                task=self.task,
                reader=reader,
                meta=self._metadata(m, metadata, len(paths)),
            )
            order = [list(map(str, m.folds[0].ckpt.meta.classes)).index(c) for c in self.classes]
            out += m.weight / total * probs[:, order]
        frame = pd.DataFrame(out, columns=self.classes)
        frame.insert(0, self.id_column, ids)
        return frame

    def predict(self, x: Images, *, metadata: pd.DataFrame | None = None, progress: bool = False) -> pd.DataFrame:
        """One row per image: its id and what the submission states for it: the class (``label``), the labels at
        the metric's fitted thresholds (``tags``), or each target's value (QWK grade at fitted cut-points).
        ``metadata``: each image's ``data.features`` row, for a metadata tower (see ``predict_proba``)."""
        proba = self.predict_proba(x, metadata=metadata, progress=progress)
        out = decisions(proba[self.classes].to_numpy(), self.classes, task=self.task, decision=self.decision)
        out.insert(0, self.id_column, proba[self.id_column].to_numpy())
        return out

    def embed(self, x: Images, *, fold: int | None = None, member: int = 0) -> pd.DataFrame:
        """The pooled features (the classifier's input) of one fold's model, one row per image. Features of
        different folds live in different spaces, so they are not averaged; ``fold`` defaults to the first."""
        import torch

        ids, paths, reader = self._inputs(x)
        m = self.members[member]
        f = self._fold(m, fold)
        net = self.model(f.fold, member=member)
        body = getattr(net, "backbone", net)  # a multi-head model's timm backbone
        transform = from_dict(f.ckpt.meta.eval_transform)
        read = reader or load_image
        rows = []
        device = next(net.parameters()).device
        with torch.no_grad():
            for i in range(0, len(paths), m.batch_size):
                batch = np.stack([transform(image=read(p))["image"] for p in paths[i : i + m.batch_size]])
                t = torch.from_numpy(batch).float().to(device)
                feats_t = body.forward_head(body.forward_features(t), pre_logits=True)  # type: ignore[operator]
                rows.append(feats_t.cpu().numpy())
        feats = np.concatenate(rows) if rows else np.zeros((0, 0))
        frame = pd.DataFrame(feats, columns=[f"f{j}" for j in range(feats.shape[1])])
        frame.insert(0, self.id_column, ids)
        return frame

    def model(self, fold: int | None = None, *, member: int = 0) -> torch.nn.Module:
        """The timm ``nn.Module`` of one fold (the first by default), in eval mode on the predictor's device."""
        from comp.training._engine import resolve_device
        from comp.training._models import model_from_checkpoint

        m = self.members[member]
        net, _ = model_from_checkpoint(self._fold(m, fold).ckpt)
        return net.to(resolve_device(m.cfg.device)).eval()

    @staticmethod
    def _metadata(m: _Member, df: pd.DataFrame | None, n: int) -> np.ndarray | None:
        """A tower member's raw metadata rows of the ``n`` images, from ``df`` (None for a model without one)."""
        tower = m.folds[0].ckpt.meta.tower
        if not tower:
            return None
        cols = [*tower["numeric"], *tower["categorical"]]
        fix = f"pass metadata=DataFrame with columns {', '.join(cols)}, one row per image in the images' order"
        if df is None:
            raise CompError(f"model '{m.model_id}' has a metadata tower, which reads each image's data.features; {fix}")
        if not isinstance(df, pd.DataFrame):
            raise CompError(f"metadata must be a pandas DataFrame, got {type(df).__name__}; {fix}")
        absent = [c for c in cols if c not in df.columns]
        if absent:
            raise CompError(f"metadata has no column '{absent[0]}' (model '{m.model_id}' reads it); {fix}")
        if len(df) != n:
            raise CompError(f"metadata has {len(df)} rows for {n} images; {fix}")
        return frame_metadata(df[cols], m.cfg.data, tower, "metadata")

    @staticmethod
    def _fold(m: _Member, fold: int | None) -> Fold:
        by = {f.fold: f for f in m.folds}
        if fold is None:
            return m.folds[0]
        if fold not in by:
            raise CompError(f"fold={fold}: {m.run.model_dir(m.model_id)} has folds {sorted(by)}; pick one of them")
        return by[fold]

    # -- what the images are -------------------------------------------------------------
    def _inputs(self, x: Images) -> tuple[list[str], list[Path], Any]:
        """(ids, paths, reader): files are read by ``load_image``; images in memory by a reader of their own."""
        if isinstance(x, pd.DataFrame):
            return self._frame(x)
        if isinstance(x, str | Path):
            return _files(_expand(Path(x)))
        if isinstance(x, np.ndarray) and x.dtype != object:
            return _memory(_split_array(x))
        if isinstance(x, Image.Image):
            return _memory([x])
        if isinstance(x, Sequence | np.ndarray):
            items = list(x)
            if all(isinstance(i, str | Path) for i in items):
                return _files([Path(i) for i in items])
            if all(isinstance(i, Image.Image | np.ndarray) for i in items):
                return _memory(items)
        raise CompError(
            f"cannot predict {type(x).__name__}: pass a path, a folder, a list of paths, a PIL image, a numpy array "
            f"(H, W), (H, W, C) or (N, H, W[, C]), or a DataFrame with the id column '{self.id_column}'"
        )

    def _frame(self, df: pd.DataFrame) -> tuple[list[str], list[Path], Any]:
        """A DataFrame of ids, its images found as ``comp predict`` finds the test images (data.test_image_dir)."""
        data: DataConfig = self.source.data
        if self.id_column not in df.columns:
            raise CompError(
                f"the DataFrame has no id column '{self.id_column}' (has {', '.join(map(str, df.columns))}); "
                "name the ids' column as data.id_column does"
            )
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "ids.csv"
            df.to_csv(csv, index=False)
            table, paths = load_test_table(dataclasses.replace(data, test_csv=str(csv)))
        return [str(i) for i in table[self.id_column]], paths, None


def _expand(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise CompError(f"{path} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); pass another folder")
        return found
    if not path.exists():
        raise CompError(f"image {path} not found; pass an image file, a folder of images or a list of them")
    return [path]


def _files(paths: list[Path]) -> tuple[list[str], list[Path], Any]:
    return [p.stem for p in paths], paths, None


def _split_array(a: np.ndarray) -> list[np.ndarray]:
    """One image (H, W) or (H, W, 1|3|4), else a batch (N, H, W) or (N, H, W, C)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return [a]
    if a.ndim in (3, 4):
        return list(a)
    raise CompError(f"a numpy array of shape {a.shape} is no image; pass (H, W), (H, W, C) or (N, H, W[, C])")


def as_rgb(img: Image.Image | np.ndarray) -> np.ndarray:
    """An image in memory as comp reads a file of it: RGB uint8, high bit depths scaled by their PIL mode."""
    if isinstance(img, Image.Image):
        return to_rgb(img)
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.float64 and a.ndim == 2:
        a = a.astype(np.float32)  # PIL's mode F: 0..1 is black..white, as a 32-bit float TIFF reads
    try:
        im = Image.fromarray(a)
    except TypeError:
        raise CompError(
            f"an image array of shape {a.shape} and dtype {a.dtype} has no PIL mode; pass uint8 (H, W, 3) RGB, "
            "or (H, W) grayscale as uint8, uint16, int32 or float32"
        ) from None
    return to_rgb(im)


def _memory(images: list) -> tuple[list[str], list[Path], Any]:
    arrays = {Path(str(i)): as_rgb(im) for i, im in enumerate(images)}
    return [str(i) for i in range(len(images))], list(arrays), arrays.__getitem__


def load_predictor(
    path: str | Path,
    *,
    engine: str | None = None,
    tta: list[str] | str | None = None,
    tta_merge: str | None = None,
    device: str | None = None,
    models: list[str] | None = None,
    batch_size: int | None = None,
) -> Predictor:
    """A predictor of a run folder (all its models, equal weights), a model folder ``RUN/models/<id>`` or a blend
    folder of ``comp ensemble`` (its members with the blend's weights). Options default to each member's config
    (``predict.engine``, ``predict.tta``, ``device``), as for ``comp predict``. Example::

        p = comp.load_predictor("runs/demo", engine="torch")
        p.predict("data/demo/test")          # id, label
        p.predict_proba(pil_image)           # id, one probability per class
    """
    src = resolve_source(path, models)
    if src.stack is not None:
        raise CompError(
            f"blend {src.blend_name} is a GBDT stack over its members' predictions of a whole test table; read its "
            "test.csv, or bundle it (comp bundle) and run the bundle's predict.py with --table"
        )
    if not src.members:
        raise CompError(f"blend {src.blend_name} gives every member weight 0; nothing to predict with")
    over = [f"device={device}"] if device is not None else []
    members = []
    for mem in src.members:
        cfg = load_config(mem.cfg, overrides=over)
        name, views, merge, bs = resolve_options(cfg, engine, tta, tta_merge, batch_size)
        runs_with = ENGINES[name].from_config(cfg, mem.run, batch_size=bs)
        folds = load_folds(mem.run, mem.model_id, cfg, runs_with, expect_folds=cfg.folds.n_splits)
        members.append(_Member(mem.run, mem.model_id, mem.weight, cfg, runs_with, folds, views, merge, bs))
    classes = src.classes or [str(c) for c in members[0].folds[0].ckpt.meta.classes]
    metric = get_metric(src.metric, src.task)
    if src.blend is not None and src.blend_name is not None:
        decision = fitted_decision(src.blend, [src.blend_name], metric, classes, id_column=src.data.id_column)
    else:
        run, mids = members[0].run, [m.model_id for m in members]
        decision = fitted_decision(run, mids, metric, classes, id_column=src.data.id_column)
    return Predictor(src, members, classes, decision)
