"""What did a trained model get wrong, and where did it look? (``comp explain``)

From a run's out-of-fold predictions, per task (``_mistakes``): the scores per class, label or target; every
row ranked worst first (``mislabeled.csv``: for classification the likeliest label errors first); a grid of
the worst mistakes; a confusion matrix (classification), ROC curves per label (multilabel) or predictions
against targets and residuals (regression); and Grad-CAM heatmaps computed with each image's own fold
checkpoint (the model that never trained on it), one per class, label or target they explain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from comp._tables import Rendered
from comp.diagnostics._gradcam import cam_layer, gradcam, overlay
from comp.diagnostics._mistakes import ANALYSES, Mistakes, confusion, mislabel_ranking, per_class_scores
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import FileSet, RunDir, check_report_folder, data_inputs, image_trees, load_checkpoint, run_files

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ExplainResult",
    "best_model",
    "cam_layer",
    "confusion",
    "explain_run",
    "gradcam",
    "mislabel_ranking",
    "per_class_scores",
]


@dataclass(repr=False)
class ExplainResult(Rendered):
    """The explain report of one model: its folder, per-output scores, the ranking of rows and Grad-CAM maps."""

    out: Path
    model_id: str
    scores: pd.DataFrame  # one row per class, label or target
    mislabeled: pd.DataFrame  # every OOF row, worst first (mislabeled.csv)
    confusion: np.ndarray | None  # counts[label, predicted] (classification)
    cams: dict[str, np.ndarray]  # id -> Grad-CAM map at the image's size (the first output it explains)
    mistakes: int  # OOF rows counted as wrong (argmax, thresholded label set; regression: every row)
    # the report's plots by name (confusion or roc or residuals, mistakes, gradcam), drawn, as matplotlib Figures
    figures: dict[str, Figure] = field(default_factory=dict)

    def title(self) -> str:
        return f"ExplainResult: {self.model_id}, {self.mistakes} OOF mistakes, report in {self.out}"

    def table(self) -> pd.DataFrame:
        return self.scores.reset_index(drop=True)


def _grid(files: FileSet, path: Path, items: list[tuple[np.ndarray, str]], cols: int = 4) -> Figure:
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
    return fig


def _confusion_png(files: FileSet, path: Path, cm: np.ndarray, classes: list[str]) -> Figure:
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
    return fig


def _roc_png(files: FileSet, path: Path, Y: np.ndarray, P: np.ndarray, labels: list[str]) -> Figure:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for j, name in enumerate(labels[:20]):
        y = Y[:, j] > 0.5
        if y.all() or not y.any():
            continue
        fpr, tpr, _ = roc_curve(y, P[:, j])
        ax.plot(fpr, tpr, lw=1, label=f"{name} ({roc_auc_score(y, P[:, j]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("OOF ROC per label (AUC)")
    ax.legend(fontsize=6, loc="lower right")
    files.add(path, lambda p: fig.savefig(p, format="png", dpi=90, bbox_inches="tight"))
    return fig


def _residuals_png(files: FileSet, path: Path, y: np.ndarray, p: np.ndarray, names: list[str]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2 * len(names)))
    axes = fig.subplots(len(names), 2, squeeze=False)
    for j, name in enumerate(names):
        a, b = axes[j]
        a.scatter(y[:, j], p[:, j], s=5, alpha=0.5)
        lo, hi = float(min(y[:, j].min(), p[:, j].min())), float(max(y[:, j].max(), p[:, j].max()))
        a.plot([lo, hi], [lo, hi], "k:", lw=0.8)
        a.set_xlabel(f"{name} (target)")
        a.set_ylabel("OOF prediction")
        b.scatter(y[:, j], p[:, j] - y[:, j], s=5, alpha=0.5)
        b.axhline(0, color="k", lw=0.8)
        b.set_xlabel(f"{name} (target)")
        b.set_ylabel("residual")
    files.add(path, lambda p_: fig.savefig(p_, format="png", dpi=90, bbox_inches="tight"))
    return fig


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
                    try:
                        gib = get_metric(m.metric, str(m.extra.get("task", "classification"))).greater_is_better
                    except CompError:
                        gib = True
                scored.append((m.cv if gib else -m.cv, mid))
    if not scored:
        raise CompError(
            f"{run.root} has no model with all folds trained ({', '.join(ids) or 'none'}); "
            "finish train-folds or pick one with --model"
        )
    return max(scored)[1]


def _check_out(out: Path, run: RunDir, model_id: str, cfg) -> None:
    """The report goes into a folder of its own, which holds none of the files it is made from."""
    reads = [*data_inputs(cfg.data), *run_files(run.root), ("the model's OOF file", run.oof(model_id))]
    reads += [(f"the fold {k} checkpoint", p) for k, p in run.fold_checkpoints(model_id).items()]
    check_report_folder(out, reads=reads, trees=image_trees(cfg.data))


def _figures(files: FileSet, out: Path, task: str, found: Mistakes, pred) -> dict[str, Figure]:
    """The task's own picture of its errors."""
    if found.confusion is not None:
        classes = pred.classes
        files.csv(
            out / "confusion.csv",
            pd.DataFrame(found.confusion, index=classes, columns=classes).rename_axis("label").reset_index(),
        )
        return {"confusion": _confusion_png(files, out / "confusion.png", found.confusion, classes)}
    if task == "multilabel":
        return {"roc": _roc_png(files, out / "roc.png", np.asarray(pred.targets), pred.probs, pred.classes)}
    y, p, names = found.extra["residuals"]
    return {"residuals": _residuals_png(files, out / "residuals.png", y, p, names)}


def explain_run(
    run_dir, model_id: str | None = None, top: int = 12, gradcam_ids: list[str] | None = None, out_dir=None
) -> ExplainResult:
    """Write the explain report for ``model_id`` (default: the best-CV model) into ``out_dir``; the result also
    holds its plots as matplotlib Figures (``result.figures``), which a notebook shows inline with the scores."""
    from comp.data._augment import from_dict
    from comp.data._table import load_image, load_train_table
    from comp.training._models import model_from_checkpoint

    run = RunDir(run_dir).require()
    ids = run.trained_ids()
    if model_id is None:
        model_id = best_model(run, ids)
    elif model_id not in ids:
        raise CompError(f"model {model_id!r} not in {run.root}; models: {', '.join(ids) or 'none'}")
    if top < 1:
        raise CompError("--top must be >= 1")
    cfg = run.load_config()
    id_col = cfg.data.id_column
    out = Path(out_dir) if out_dir else run.model_dir(model_id) / "explain"
    _check_out(out, run, model_id, cfg)
    pred = run.read_oof(model_id, id_column=id_col)
    decision = run.read_metrics(model_id).extra.get("decision") if run.metrics(model_id).is_file() else None
    found = ANALYSES[cfg.task](pred, id_col, decision)
    ranked, worst = found.ranked, found.wrong.head(top)
    targets = [str(i) for i in gradcam_ids] if gradcam_ids else [str(v) for v in worst[id_col]]
    fold_of = dict(zip(ranked[id_col].astype(str), ranked["fold"].astype(int)))
    label_of = dict(zip(ranked[id_col].astype(str), ranked["label"]))
    missing = [i for i in targets if i not in fold_of]
    if missing:
        raise CompError(f"--gradcam-ids: id {missing[0]!r} is not in {run.oof(model_id)}")
    if targets and load_checkpoint(run.checkpoint(model_id, fold_of[targets[0]])).meta.tower:
        # Grad-CAM runs the image alone; a tower model's output needs the row's metadata too
        log.warning(
            "%s has a metadata tower: the report has no Grad-CAM maps (the other figures are written)", model_id
        )
        targets = []
    table = load_train_table(cfg.data, check_images=False, task=cfg.task)
    path_of = dict(zip(table.df[id_col].astype(str), table.paths))
    classes = pred.classes

    # the report's files are staged and committed together: a failure half-way leaves the previous report whole
    with FileSet(out) as files:
        figures = _figures(files, out, cfg.task, found, pred)
        files.csv(out / "per_class.csv", found.scores)
        files.csv(out / "mislabeled.csv", ranked)
        items = []
        for rec in worst.itertuples(index=False):
            rid = getattr(rec, id_col) if id_col.isidentifier() else rec[0]
            try:
                items.append((load_image(path_of[str(rid)]), f"{rid}\n{found.caption(rec)}"))
            except (CompError, KeyError):
                continue
        if items:
            figures["mistakes"] = _grid(files, out / "mistakes.png", items)
        cams: dict[str, np.ndarray] = {}
        cam_items: list[tuple[np.ndarray, str]] = []
        models: dict[int, tuple] = {}
        for rid in targets:
            fold = fold_of[rid]
            if fold not in models:
                model, ckpt = model_from_checkpoint(run.checkpoint(model_id, fold))
                models[fold] = (model, from_dict(ckpt.meta.eval_transform), ckpt)
            model, tf, ckpt = models[fold]
            img = load_image(path_of[rid])
            x = tf(image=img)["image"][None].float()
            cam_items.append((img, f"{rid} {cfg.task == 'classification' and 'label ' or ''}{label_of[rid]}"))
            for k in found.cam_outputs(rid):
                cam, k = gradcam(model, x, class_idx=k, name=ckpt.meta.model_name)
                cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
                cams.setdefault(rid, cam)
                cam_items.append((overlay(img, cam), f"fold {fold} CAM for {classes[k]}"))
        if cam_items:
            figures["gradcam"] = _grid(files, out / "gradcam.png", cam_items)
    return ExplainResult(out, model_id, found.scores, ranked, found.confusion, cams, len(found.wrong), figures=figures)
