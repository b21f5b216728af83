"""``comp pseudo``: confident test rows of a run, model or blend written as pseudo-labels for ``data.extra_train``.

What a pseudo-label is and which rows are kept depends on the source's task (its run's ``task:``):

- classification: hard (the argmax class) or soft (one probability per class) labels; rows by confidence;
- multilabel: soft labels, one probability column per label (the source's own); rows whose every label is
  confident, capped per label on its positives (``comp.pseudo.select_labels``);
- regression: soft targets, one value column per target (the predictions, in the target's units). When the
  source is a blend whose members' ``test.csv`` are still there, rows are ranked by the members' agreement
  (the spread of their predictions in standard deviations of the target) and ``max_rows`` keeps the rows they
  agree on most; otherwise (a single model records no agreement) every row is kept, or ``max_rows`` of them
  drawn at random with a fixed seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from comp._tables import Rendered, table_frame
from comp.errors import CompError
from comp.pseudo._select import select_labels, select_rows, select_values
from comp.run import (
    Predictions,
    RunDir,
    check_output,
    data_inputs,
    image_trees,
    model_with,
    run_files,
    run_tree,
    write_csv,
)

log = logging.getLogger(__name__)

_TABLE = {  # task -> (what a row of the table is, its count, its mean)
    "classification": ("class", "rows", "mean_confidence"),
    "multilabel": ("label", "positives", "mean_probability"),
    "regression": ("target", "rows", "mean_value"),
}


@dataclass(repr=False)
class PseudoResult(Rendered):
    """What :func:`pseudo_label` wrote: the file, how many rows of each class (label, target), from which
    predictions."""

    path: Path
    source: Path  # the model folder whose test.csv was read
    soft: bool
    rows: int
    test_rows: int
    per_class: dict[str, int] = field(default_factory=dict)
    mean_confidence: dict[str, float] = field(default_factory=dict)
    task: str = "classification"
    agreement: str | None = None  # regression: how rows were ranked (members' spread), None when nothing ranked them

    def title(self) -> str:
        return f"PseudoResult: {self.rows} of {self.test_rows} test rows in {self.path}"

    def table(self) -> pd.DataFrame:
        """One row per class (label, target): pseudo-labelled rows (positives) and their mean top probability
        (mean label probability, mean predicted value)."""
        what, count, mean = _TABLE[self.task]
        rows = [{what: c, count: n, mean: self.mean_confidence.get(c)} for c, n in self.per_class.items()]
        rows.append({what: "all", count: self.rows, mean: None})
        return table_frame(rows, [what, count, mean])


def pseudo_label(
    source: str | Path,
    *,
    out: str | Path,
    threshold: float | None = None,
    top_per_class: int | None = None,
    max_per_class: int | None = None,
    soft: bool = False,
    max_rows: int | None = None,
) -> PseudoResult:
    """Select test rows of ``source``'s ``test.csv`` and write them to ``out`` for ``data.extra_train``.

    ``source`` is a run folder (with one model that has test.csv), a model folder or a blend's model folder.
    Classification rows are chosen by :func:`~comp.pseudo.select_rows` (``threshold`` defaults to 0.9 unless
    ``top_per_class`` is given) and written as the predicted label (hard, in the run's label column) or, with
    ``soft``, one probability column per class. Multi-label rows are chosen by
    :func:`~comp.pseudo.select_labels` (the same options, per label) and always written soft, one probability
    column per label. Regression rows are chosen by :func:`~comp.pseudo.select_values` (``max_rows``; see the
    module docstring) and written as one value column per target.

    Example::

        comp.pseudo_label("runs/blend-hill_climb", out="pseudo/round1.csv", threshold=0.9, max_per_class=500)
    """
    out = Path(out).resolve()
    if out.is_dir():
        raise CompError(f"--out {out} is a folder; give a CSV file path")
    run, model_id = model_with(source, "test.csv")
    cfg = run.load_config()
    reads = [*data_inputs(cfg.data), *run_files(run.root)]
    check_output(out, reads, trees=[run_tree(run.root), *image_trees(cfg.data)])
    task = cfg.task
    if task == "regression":
        if threshold is not None or top_per_class is not None or max_per_class is not None:
            raise CompError(
                "--threshold, --top-per-class and --max-per-class select rows by class or label probability; "
                "regression pseudo-labels keep every row or the --max-rows its blend's members agree on most"
            )
    elif max_rows is not None:
        raise CompError(f"--max-rows is for regression sources; this one is {task}: use --max-per-class")
    if task != "regression" and threshold is None and top_per_class is None:
        threshold = 0.9
    pred = run.read_test(model_id, id_column=cfg.data.id_column)
    id_col = cfg.data.id_column
    if task == "classification":
        result = _classes(pred, threshold, top_per_class, max_per_class, soft, id_col, cfg.data.label_column)
    elif task == "multilabel":
        result = _labels(pred, threshold, top_per_class, max_per_class, id_col)
    else:
        result = _values(run, model_id, pred, max_rows, id_col)
    df, keep, per_class, mean_conf, agreement = result
    if not len(keep):
        raise CompError(_nothing_kept(task, run.test_pred(model_id), pred.probs, threshold))
    write_csv(out, df)
    written_soft = soft or task != "classification"
    log.info(
        "pseudo-labelled %d of %d test rows of %s (%s labels) -> %s",
        len(keep),
        len(pred.ids),
        run.model_dir(model_id),
        "soft" if written_soft else "hard",
        out,
    )
    return PseudoResult(
        out,
        run.model_dir(model_id),
        written_soft,
        int(len(keep)),
        int(len(pred.ids)),
        per_class,
        mean_conf,
        task,
        agreement,
    )


def _nothing_kept(task: str, path: Path, probs: np.ndarray, threshold: float | None) -> str:
    if task == "multilabel" and threshold is None:  # --top-per-class found no positive label
        return f"no row of {path} has a label with probability >= 0.5 for --top-per-class; use --threshold"
    if task == "multilabel":  # a row is as confident as its least confident label
        assert threshold is not None
        best = float(np.maximum(probs, 1 - probs).min(1).max()) if len(probs) else float("nan")
        return (
            f"no row of {path} has every label at or above --threshold {threshold} or at or below "
            f"{1 - threshold:g} (the most confident row's least confident label: {best:.3f}); lower --threshold "
            "or use --top-per-class"
        )
    best = float(probs.max(1).max()) if len(probs) else float("nan")
    return (
        f"no row of {path} reaches --threshold {threshold} (the most confident is {best:.3f}); lower --threshold "
        "or use --top-per-class"
    )


Picked = tuple[pd.DataFrame, np.ndarray, dict[str, int], dict[str, float], str | None]


def _frame(id_col: str, ids: np.ndarray, values: np.ndarray, columns: list[str]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({id_col: ids}), pd.DataFrame(values, columns=columns)], axis=1)


def _classes(pred: Predictions, threshold, top_per_class, max_per_class, soft, id_col, label_col) -> Picked:
    keep = select_rows(pred.probs, threshold=threshold, top_per_class=top_per_class, max_per_class=max_per_class)
    classes = list(pred.classes)
    labels = np.asarray(classes, dtype=object)[pred.probs.argmax(1)]
    conf = pred.probs.max(1)
    ids = pred.ids[keep]
    if soft:
        df = _frame(id_col, ids, pred.probs[keep], classes)
    else:
        df = pd.DataFrame({id_col: ids, label_col: labels[keep]})
    chosen = labels[keep]
    per_class = {c: int((chosen == c).sum()) for c in classes}
    mean_conf = {c: float(conf[keep][chosen == c].mean()) for c in classes if per_class[c]}
    return df, keep, per_class, mean_conf, None


def _labels(pred: Predictions, threshold, top_per_class, max_per_class, id_col) -> Picked:
    keep = select_labels(pred.probs, threshold=threshold, top_per_class=top_per_class, max_per_class=max_per_class)
    labels = list(pred.classes)
    P = pred.probs[keep]
    positive = P >= 0.5
    per_label = {c: int(positive[:, j].sum()) for j, c in enumerate(labels)}
    mean_p = {c: float(P[positive[:, j], j].mean()) for j, c in enumerate(labels) if per_label[c]}
    return _frame(id_col, pred.ids[keep], P, labels), keep, per_label, mean_p, None


def _values(run: RunDir, model_id: str, pred: Predictions, max_rows: int | None, id_col: str) -> Picked:
    spread, agreement = _spread(run, model_id, pred)
    keep = select_values(len(pred.ids), spread=spread, max_rows=max_rows)
    targets = list(pred.classes)
    V = pred.probs[keep]
    per_target = {c: int(len(keep)) for c in targets}
    means = {c: float(V[:, j].mean()) for j, c in enumerate(targets)} if len(keep) else {}
    return _frame(id_col, pred.ids[keep], V, targets), keep, per_target, means, agreement


def _spread(run: RunDir, model_id: str, pred: Predictions) -> tuple[np.ndarray | None, str | None]:
    """Per test row, how far a blend's members disagree: the largest (over targets) standard deviation of their
    predictions, in standard deviations of the target over the blend's OOF rows. (None, None) when the source
    is not a blend or a member's test.csv is gone: then nothing ranks the rows."""
    info = run.blend_info(model_id)
    if info is None or len(info.get("members") or []) < 2:
        return None, None
    values = []
    for member in info["members"]:
        try:
            mrun, mid = model_with(member, "test.csv")
            test = mrun.read_test(mid).reorder(pred.ids)
        except CompError as exc:
            log.warning("member %s of the blend gives no test predictions (%s); rows are not ranked", member, exc)
            return None, None
        values.append(test.probs[:, [test.classes.index(c) for c in pred.classes]])
    oof = run.read_oof(model_id)
    scale = np.asarray(oof.y, np.float64).std(0)
    spread = (np.stack(values).std(0) / np.where(scale > 0, scale, 1.0)).max(1)
    return spread, f"spread of {len(values)} members' predictions (target standard deviations)"
