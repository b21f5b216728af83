"""The two self-describing model formats: fold checkpoints (``fold<k>.pt``) and comp's ONNX metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comp.errors import RunFolderError

CHECKPOINT_FORMAT = "comp.checkpoint/1"
ONNX_FORMAT = "comp.onnx/1"
REQUIRED = ("model_name", "model_id", "classes", "image_size", "mean", "std", "eval_transform", "config")


def make_checkpoint(state_dict: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint dict that describes itself: timm name, classes, image size, eval transform, config."""
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    return {"format": CHECKPOINT_FORMAT, **meta, "num_classes": len(meta["classes"]), "state_dict": state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a comp checkpoint safely (``weights_only=True``) and check that it describes itself."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"checkpoint {path} not found; train it with `comp train-folds` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RunFolderError(f"checkpoint {path} is unreadable ({type(exc).__name__}); retrain that fold") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise RunFolderError(f"{path} is not a comp checkpoint (format {got!r}); retrain that fold")
    missing = [k for k in (*REQUIRED, "state_dict", "num_classes") if k not in ckpt]
    if missing:
        raise RunFolderError(f"checkpoint {path} lacks {', '.join(missing)}; retrain that fold")
    return ckpt


def graph_metadata(ckpt: dict[str, Any], **extra: Any) -> dict[str, str]:
    """The preprocessing and provenance a consumer of an ONNX graph needs, as metadata strings."""
    meta = {
        "comp.format": ONNX_FORMAT,
        "model_name": ckpt["model_name"],
        "model_id": ckpt["model_id"],
        "classes": ckpt["classes"],
        "image_size": ckpt["image_size"],
        "in_chans": ckpt.get("in_chans", 3),
        "mean": ckpt["mean"],
        "std": ckpt["std"],
        "eval_transform": ckpt["eval_transform"],
        **extra,
    }
    return {k: json.dumps(v) for k, v in meta.items()}


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
