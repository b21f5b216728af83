"""What did a trained model get wrong, and where did it look? (``comp explain``)

From a run's out-of-fold predictions: confusion matrix (PNG + CSV), per-class precision/recall/F1,
a grid of the most confident mistakes, ``mislabeled.csv`` (rows ranked by ascending OOF p(label):
the likeliest label errors first, with margin p(pred) - p(label)), and Grad-CAM heatmaps computed
with each image's own fold checkpoint (the model that never trained on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from comp._tables import format_table
from comp.errors import CompError
from comp.metrics import METRICS
from comp.run import FileSet, RunDir


@dataclass
class ExplainResult:
    """The explain report of one model: its folder, per-class scores, the mislabel ranking and Grad-CAM maps."""

    out: Path
    model_id: str
    scores: pd.DataFrame  # class, support, precision, recall, f1
    mislabeled: pd.DataFrame  # every OOF row, likeliest label errors first (mislabeled.csv)
    confusion: np.ndarray  # counts[label, predicted]
    cams: dict[str, np.ndarray]  # id -> Grad-CAM map at the image's size
    mistakes: int  # OOF rows whose argmax is not the label

    def table(self) -> str:
        return format_table(self.scores.to_dict("records"))


def read_oof(run: RunDir, model_id: str, id_col: str) -> tuple[pd.DataFrame, list[str]]:
    pred = run.read_oof(model_id, id_column=id_col)
    return pred.frame(), pred.classes


def mislabel_ranking(oof: pd.DataFrame, classes: list[str], id_col: str) -> pd.DataFrame:
    """Every row, sorted so the OOF disagrees most with the label first (ascending p(label))."""
    probs = oof[classes].to_numpy(np.float64)
    y = oof["target"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pred = probs.argmax(1)
    p_label = probs[np.arange(len(y)), y]
    p_pred = probs[np.arange(len(y)), pred]
    out = pd.DataFrame(
        {
            id_col: oof[id_col].to_numpy(),
            "fold": oof["fold"].to_numpy(),
            "label": oof["target"].to_numpy(),
            "pred": np.asarray(classes, dtype=object)[pred],
            "p_label": p_label,
            "p_pred": p_pred,
            "margin": p_pred - p_label,
        }
    )
    return out.sort_values(["p_label", "margin"], ascending=[True, False], kind="mergesort").reset_index(drop=True)


def confusion(oof: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """counts[i, j] = rows labelled classes[i] predicted classes[j]."""
    y = oof["target"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pred = oof[classes].to_numpy().argmax(1)
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def per_class_scores(cm: np.ndarray, classes: list[str]) -> pd.DataFrame:
    tp = np.diag(cm).astype(np.float64)
    prec = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    return pd.DataFrame({"class": classes, "support": cm.sum(1), "precision": prec, "recall": rec, "f1": f1})


MIN_CAM_SIDE = 4  # a 1x1 or 2x2 final map (small inputs) gives a flat, useless heatmap


def cam_layer(model: torch.nn.Module, hw) -> dict | None:
    """The deepest of timm's ``feature_info`` stages whose map is at least MIN_CAM_SIDE on its short side;
    None when that is the last stage (or the model lists none): then Grad-CAM uses ``forward_features``."""
    info = list(getattr(model, "feature_info", None) or [])
    deep_enough = [f for f in info if min(hw) / f.get("reduction", 1) >= MIN_CAM_SIDE]
    if not info or not deep_enough or deep_enough[-1] is info[-1]:
        return None
    return deep_enough[-1]


def gradcam(
    model: Any, x: torch.Tensor, class_idx: int | None = None, name: str = "", layer: Any = "auto"
) -> tuple[np.ndarray, int]:
    """Grad-CAM for one image ``x`` (1, C, H, W): (h, w) map in [0, 1] and the class it explains.

    The map is the last feature map (``forward_features``), or with ``layer`` (a ``feature_info`` entry;
    "auto" = ``cam_layer``) that stage's output, so small inputs still get a map with some resolution.
    Activations are kept from the forward pass; a tensor hook catches their gradient in the backward pass.
    """
    label = name or type(model).__name__
    if not hasattr(model, "forward_features") or not hasattr(model, "forward_head"):
        raise CompError(f"model {label} has no forward_features/forward_head; Grad-CAM needs a timm CNN")
    if layer == "auto":
        layer = cam_layer(model, x.shape[-2:])
    model.eval()
    store: dict = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        store["act"] = t
        t.register_hook(lambda g: store.__setitem__("grad", g))  # the gradient of that map, in backward
        return t

    if layer is None:
        feats = keep(model.forward_features(x.clone().requires_grad_(True)))
        logits, channels = model.forward_head(feats), getattr(model, "num_features", None)
    else:
        hook = model.get_submodule(layer["module"]).register_forward_hook(lambda m, i, out: keep(out))
        try:
            logits = model(x.clone().requires_grad_(True))
        finally:
            hook.remove()
        feats, channels = store["act"], layer.get("num_chs")
    if feats.ndim != 4:
        raise CompError(
            f"model {label} has no spatial feature map; Grad-CAM needs a CNN (its features are {feats.ndim}-D)"
        )
    cls = int(logits.argmax(1)[0]) if class_idx is None else int(class_idx)
    model.zero_grad(set_to_none=True)
    logits[0, cls].backward()
    act, grad = store["act"].detach()[0], store["grad"].detach()[0]
    if _channels_last(channels, feats):  # e.g. Swin, MaxViT: (H, W, C) maps
        act, grad = act.permute(2, 0, 1), grad.permute(2, 0, 1)
    weights = grad.mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * act).sum(0)).numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam.astype(np.float32), cls


def _channels_last(channels: int | None, feats: torch.Tensor) -> bool:
    """timm's NHWC families (Swin, MaxViT, ...) return (B, H, W, C) maps; C is the stage's channel count."""
    return channels is not None and feats.shape[-1] == channels and feats.shape[1] != channels


def _overlay(img: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return (0.55 * img + 0.45 * heat).astype(np.uint8)


def _grid(files: FileSet, path: Path, items: list[tuple[np.ndarray, str]], cols: int = 4) -> Path:
    from matplotlib.figure import Figure

    rows = max(1, -(-len(items) // cols))
    fig = Figure(figsize=(3 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, title) in zip(axes.ravel(), items):
        ax.imshow(img)
        ax.set_title(title, fontsize=8)
    files.add(path, lambda p: fig.savefig(p, format="png", dpi=90, bbox_inches="tight"))
    return path


def _confusion_png(files: FileSet, path: Path, cm: np.ndarray, classes: list[str]) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4, 0.5 * len(classes)), max(3.5, 0.45 * len(classes))))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    files.add(path, lambda p: fig.savefig(p, format="png", dpi=90, bbox_inches="tight"))
    return path


def best_model(run: RunDir, ids: list[str]) -> str:
    """The finished model with the best CV (metrics.json), for ``explain`` without ``--model``."""
    scored = []
    for mid in ids:
        path = run.metrics(mid)
        if path.is_file():
            m = run.read_metrics(mid)
            if m.cv is not None:
                gib = m.greater_is_better
                if gib is None:  # a metrics.json that does not say: the metric's own direction
                    gib = METRICS[m.metric].greater_is_better if m.metric in METRICS else True
                scored.append((m.cv if gib else -m.cv, mid))
    if not scored:
        raise CompError(
            f"{run.root} has no model with all folds trained ({', '.join(ids) or 'none'}); "
            "finish train-folds or pick one with --model"
        )
    return max(scored)[1]


def explain_run(
    run_dir, model_id: str | None = None, top: int = 12, gradcam_ids: list[str] | None = None, out_dir=None
) -> ExplainResult:
    """Write the explain report for ``model_id`` (default: the best-CV model) into ``out_dir``."""
    from comp.data._augment import from_dict
    from comp.data._table import load_image, load_train_table
    from comp.training._models import model_from_checkpoint

    run = RunDir(run_dir).require()
    ids = run.model_ids()
    if model_id is None:
        model_id = best_model(run, ids)
    elif model_id not in ids:
        raise CompError(f"model {model_id!r} not in {run.root}; models: {', '.join(ids) or 'none'}")
    if top < 1:
        raise CompError("--top must be >= 1")
    cfg = run.load_config()
    id_col = cfg.data.id_column
    out = Path(out_dir) if out_dir else run.model_dir(model_id) / "explain"
    oof, classes = read_oof(run, model_id, id_col)

    ranked = mislabel_ranking(oof, classes, id_col)
    mistakes = ranked[ranked["label"] != ranked["pred"]].sort_values("p_pred", ascending=False, kind="mergesort")
    worst = mistakes.head(top)
    targets = [str(i) for i in gradcam_ids] if gradcam_ids else [str(v) for v in worst[id_col]]
    fold_of = dict(zip(oof[id_col].astype(str), oof["fold"].astype(int)))
    label_of = dict(zip(oof[id_col].astype(str), oof["target"]))
    missing = [i for i in targets if i not in fold_of]
    if missing:
        raise CompError(f"--gradcam-ids: id {missing[0]!r} is not in {run.oof(model_id)}")
    table = load_train_table(cfg.data, check_images=False, task=cfg.task)
    path_of = dict(zip(table.df[id_col].astype(str), table.paths))

    cm = confusion(oof, classes)
    scores = per_class_scores(cm, classes)
    # the report's files are staged and committed together: a failure half-way leaves the previous report whole
    with FileSet(out) as files:
        files.csv(
            out / "confusion.csv", pd.DataFrame(cm, index=classes, columns=classes).rename_axis("label").reset_index()
        )
        _confusion_png(files, out / "confusion.png", cm, classes)
        files.csv(out / "per_class.csv", scores)
        files.csv(out / "mislabeled.csv", ranked)
        items = []
        for rec in worst.itertuples(index=False):
            rid = getattr(rec, id_col) if id_col.isidentifier() else rec[0]
            try:
                items.append(
                    (load_image(path_of[str(rid)]), f"{rid}\nlabel {rec.label} pred {rec.pred} ({rec.p_pred:.2f})")
                )
            except (CompError, KeyError):
                continue
        if items:
            _grid(files, out / "mistakes.png", items)
        cams, cam_items, models = {}, [], {}
        for rid in targets:
            fold = fold_of[rid]
            if fold not in models:
                model, ckpt = model_from_checkpoint(run.checkpoint(model_id, fold))
                models[fold] = (model, from_dict(ckpt.meta.eval_transform), ckpt)
            model, tf, ckpt = models[fold]
            img = load_image(path_of[rid])
            x = tf(image=img)["image"][None].float()
            cam, cls = gradcam(model, x, name=ckpt.meta.model_name)
            cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
            cams[rid] = cam
            cam_items += [
                (img, f"{rid} label {label_of[rid]}"),
                (_overlay(img, cam), f"fold {fold} CAM for {classes[cls]}"),
            ]
        if cam_items:
            _grid(files, out / "gradcam.png", cam_items)
    return ExplainResult(out, model_id, scores, ranked, cm, cams, len(mistakes))
