"""A model's mistakes on its out-of-fold rows, per task: the scores per output column, every row ranked worst
first, and which output each Grad-CAM map should explain.

- classification: the confusion matrix, per-class precision/recall/F1, rows ranked by ascending p(label) (the
  likeliest label errors first, with margin p(pred) - p(label)); CAM of the predicted class;
- multilabel: per-label support, ROC AUC, average precision and F1 at the label's threshold (fitted on OOF
  when the metric fits one, else 0.5); rows ranked by their summed binary cross-entropy; CAM of each true label;
- regression: per-target RMSE, MAE and R2; rows ranked by absolute error (of the worst target); CAM of the
  target with the largest error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from comp.run import Predictions
from comp.tasks import _scores as S


@dataclass
class Mistakes:
    scores: pd.DataFrame  # one row per output column
    ranked: pd.DataFrame  # every OOF row, worst first (id, fold, label, pred, ...)
    wrong: pd.DataFrame  # the rows counted as mistakes, most confident first
    caption: Callable[[Any], str]  # a ranked row -> its title under the image
    cam_outputs: Callable[[str], list[int]]  # an id -> the output columns its Grad-CAM maps explain
    confusion: np.ndarray | None = None  # counts[label, predicted] (classification)
    extra: dict[str, Any] = field(default_factory=dict)


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


def classification(pred: Predictions, id_col: str, decision: dict | None) -> Mistakes:
    oof, classes = pred.frame(), pred.classes
    ranked = mislabel_ranking(oof, classes, id_col)
    wrong = ranked[ranked["label"] != ranked["pred"]].sort_values("p_pred", ascending=False, kind="mergesort")
    cm = confusion(oof, classes)
    pred_of = dict(zip(ranked[id_col].astype(str), ranked["pred"]))
    return Mistakes(
        per_class_scores(cm, classes),
        ranked,
        wrong,
        lambda r: f"label {r.label} pred {r.pred} ({r.p_pred:.2f})",
        lambda rid: [classes.index(pred_of[rid])],
        cm,
    )


def multilabel(pred: Predictions, id_col: str, decision: dict | None) -> Mistakes:
    Y, P, labels = np.asarray(pred.targets, np.float64), pred.probs, pred.classes
    t = np.asarray((decision or {}).get("thresholds") or [0.5] * len(labels), np.float64)
    B = P >= t[None, :]
    tp, fp, fn = ((Y > 0.5) & B).sum(0), ((Y < 0.5) & B).sum(0), ((Y > 0.5) & ~B).sum(0)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(len(labels)), where=(2 * tp + fp + fn) > 0)
    scores = pd.DataFrame(
        {
            "label": labels,
            "support": (Y > 0.5).sum(0),
            "auc": S.per_label_auc(Y, P),
            "ap": S.per_label_ap(Y, P),
            "threshold": t,
            "f1": f1,
        }
    )
    Pc = np.clip(P, 1e-7, 1 - 1e-7)
    loss = -(Y * np.log(Pc) + (1 - Y) * np.log(1 - Pc)).sum(1)
    names = np.asarray(labels, dtype=object)
    ranked = pd.DataFrame(
        {
            id_col: pred.ids,
            "fold": pred.folds,
            "label": [" ".join(names[row > 0.5]) for row in Y],
            "pred": [" ".join(names[row]) for row in B],
            "loss": loss,
        }
    ).sort_values("loss", ascending=False, kind="mergesort")
    ranked = ranked.reset_index(drop=True)
    wrong = ranked[ranked["label"] != ranked["pred"]]
    true_of = {str(i): [j for j in range(len(labels)) if row[j] > 0.5] for i, row in zip(pred.ids, Y)}
    best_of = {str(i): int(np.argmax(row)) for i, row in zip(pred.ids, P)}
    return Mistakes(
        scores,
        ranked,
        wrong,
        lambda r: f"labels '{r.label}' pred '{r.pred}'",
        lambda rid: true_of[rid] or [best_of[rid]],  # no true label: what it thought it saw
    )


def regression(pred: Predictions, id_col: str, decision: dict | None) -> Mistakes:
    y, p, names = np.asarray(pred.targets, np.float64), pred.probs, pred.classes
    scores = pd.DataFrame(
        {
            "target": names,
            "rmse": S.per_target_rmse(y, p),
            "mae": S.per_target_mae(y, p),
            "r2": S.per_target_r2(y, p),
        }
    )
    err = np.abs(p - y) / np.maximum(y.std(0), 1e-12)  # in standard deviations, so targets compare
    worst = err.argmax(1)
    fmt = lambda row: ", ".join(f"{v:.4g}" for v in row)  # noqa: E731
    ranked = pd.DataFrame(
        {
            id_col: pred.ids,
            "fold": pred.folds,
            "label": [fmt(r) for r in y],
            "pred": [fmt(r) for r in p],
            "abs_error": np.abs(p - y)[np.arange(len(y)), worst],
            "worst_target": np.asarray(names, dtype=object)[worst],
            "_err": err.max(1),
        }
    ).sort_values("_err", ascending=False, kind="mergesort")
    ranked = ranked.drop(columns="_err").reset_index(drop=True)
    worst_of = {str(i): int(w) for i, w in zip(pred.ids, worst)}
    return Mistakes(
        scores,
        ranked,
        ranked,  # every row is off by something: the worst come first
        lambda r: f"target {r.label} pred {r.pred}",
        lambda rid: [worst_of[rid]],
        extra={"residuals": (y, p, names)},
    )


ANALYSES = {"classification": classification, "multilabel": multilabel, "regression": regression}
