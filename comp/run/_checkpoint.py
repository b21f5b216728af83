"""The two self-describing model formats: fold checkpoints (``fold<k>.pt``) and comp's ONNX metadata.

A checkpoint is a flat dict saved with ``torch.save``: the metadata keys of :class:`CheckpointMeta`, a
``format`` tag and the ``state_dict``. It is read back only through :func:`load_checkpoint`, which checks the
format and types the metadata, so no other module looks up checkpoint keys by string.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comp._files import file_problem
from comp.errors import RunFolderError

CHECKPOINT_FORMAT = "comp.checkpoint/2"  # 2: adds task and output (what turns the outputs into predictions)
READABLE_FORMATS = ("comp.checkpoint/1", "comp.checkpoint/2")
ONNX_FORMAT = "comp.onnx/1"
REQUIRED = ("model_name", "model_id", "classes", "image_size", "mean", "std", "eval_transform", "config")


@dataclass(frozen=True)
class CheckpointMeta:
    """What a fold checkpoint says about itself: enough to rebuild the model, preprocess images like training
    did, and know where it came from (its config, fold, best epoch and score)."""

    model_name: str  # timm architecture
    model_id: str  # folder under RUN/models/
    classes: list[str]  # output columns, in order
    image_size: tuple[int, int]  # (height, width)
    mean: list[float]
    std: list[float]
    eval_transform: dict[str, Any]  # albumentations description (comp.data.from_dict rebuilds it)
    config: dict[str, Any]  # the run's resolved config
    _: dataclasses.KW_ONLY
    in_chans: int = 3
    entry: dict[str, Any] | None = None  # the model's config entry
    fold: int | None = None
    epoch: int | None = None  # best epoch, 0-based
    score: float | None = None  # the metric at the best epoch
    metric: str | None = None
    heads: dict[str, Any] | None = None  # multi-head models: what rebuilds the heads (comp.training._heads)
    task: str = "classification"  # a checkpoint written before tasks existed is a classifier
    output: dict[str, Any] | None = None  # comp.training._outputs.OutputSpec; None: softmax
    # a metadata tower: its width, the feature columns and levels, and the fold's scaler (comp.training._tower)
    tower: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (``weights_only``-loadable); ``heads`` only when set, as checkpoints always had."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_"}
        out["image_size"] = list(self.image_size)
        for key in ("heads", "tower"):  # only when set, as checkpoints always had
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str | Path = "checkpoint") -> CheckpointMeta:
        """Type a checkpoint's metadata; a missing required key is a RunFolderError naming the file."""
        missing = [k for k in REQUIRED if k not in raw]
        if missing:
            raise RunFolderError(f"checkpoint {where} lacks {', '.join(missing)}; retrain that fold")
        size = raw["image_size"]
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known and k != "image_size"}
        return cls(image_size=hw, **kwargs)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded fold checkpoint: typed metadata and the weights."""

    meta: CheckpointMeta
    state_dict: dict[str, Any] = field(repr=False)
    path: Path | None = None


def make_checkpoint(state_dict: dict[str, Any], meta: CheckpointMeta) -> dict[str, Any]:
    """The dict ``torch.save`` writes: format tag, metadata, ``num_classes`` (for older readers), weights."""
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    return {"format": CHECKPOINT_FORMAT, **meta.to_dict(), "num_classes": meta.num_classes, "state_dict": state}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a comp checkpoint safely (``weights_only=True``) and check that it describes itself."""
    import torch

    path = Path(path)
    problem = file_problem(path)
    if problem:
        fix = "train it with `comp train-folds` first" if problem == "not found" else "retrain that fold"
        raise RunFolderError(f"checkpoint {path} {problem}; {fix}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RunFolderError(f"checkpoint {path} is unreadable ({type(exc).__name__}); retrain that fold") from None
    if not isinstance(raw, dict) or raw.get("format") not in READABLE_FORMATS:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise RunFolderError(f"{path} is not a comp checkpoint (format {got!r}); retrain that fold")
    if not isinstance(raw.get("state_dict"), dict):
        raise RunFolderError(f"checkpoint {path} lacks state_dict; retrain that fold")
    return Checkpoint(CheckpointMeta.from_dict(raw, path), raw["state_dict"], path)


def graph_metadata(meta: CheckpointMeta, **extra: Any) -> dict[str, str]:
    """The preprocessing and provenance a consumer of an ONNX graph needs, as metadata strings."""
    values = {
        "comp.format": ONNX_FORMAT,
        "model_name": meta.model_name,
        "model_id": meta.model_id,
        "classes": meta.classes,
        "image_size": list(meta.image_size),
        "in_chans": meta.in_chans,
        "mean": meta.mean,
        "std": meta.std,
        "eval_transform": meta.eval_transform,
        **extra,
    }
    return {k: json.dumps(v) for k, v in values.items()}


def read_graph_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON-decoded metadata of a comp ONNX file (empty for a graph comp did not write)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for a damaged file
        raise RunFolderError(f"ONNX file {path} is unreadable ({type(exc).__name__}); re-run comp export") from None
    out: dict[str, Any] = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out
