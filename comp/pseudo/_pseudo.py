"""``comp pseudo``: confident test rows of a run, model or blend written as hard or soft labels for
``data.extra_train``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from comp._tables import format_table
from comp.errors import CompError
from comp.pseudo._select import select_rows
from comp.run import check_output, data_inputs, image_trees, model_with, run_files, run_tree, write_csv

log = logging.getLogger(__name__)


@dataclass
class PseudoResult:
    """What :func:`pseudo_label` wrote: the file, how many rows of each class, from which predictions."""

    path: Path
    source: Path  # the model folder whose test.csv was read
    soft: bool
    rows: int
    test_rows: int
    per_class: dict[str, int] = field(default_factory=dict)
    mean_confidence: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        """One row per class: pseudo-labelled rows and their mean top probability."""
        rows = [
            {"class": c, "rows": n, "mean_confidence": self.mean_confidence.get(c)} for c, n in self.per_class.items()
        ]
        rows.append({"class": "all", "rows": self.rows, "mean_confidence": None})
        return format_table(rows, ["class", "rows", "mean_confidence"])


def pseudo_label(
    source: str | Path,
    *,
    out: str | Path,
    threshold: float | None = None,
    top_per_class: int | None = None,
    max_per_class: int | None = None,
    soft: bool = False,
) -> PseudoResult:
    """Select confident rows of ``source``'s ``test.csv`` and write them to ``out`` for ``data.extra_train``.

    ``source`` is a run folder (with one model that has test.csv), a model folder or a blend's model folder.
    Rows are chosen by :func:`~comp.pseudo.select_rows` (``threshold`` defaults to 0.9 unless
    ``top_per_class`` is given). The file holds the id column and either the predicted label (hard, in the
    run's label column) or, with ``soft``, one probability column per class.

    Example::

        comp.pseudo_label("runs/blend-hill_climb", out="pseudo/round1.csv", threshold=0.9, max_per_class=500)
    """
    if threshold is None and top_per_class is None:
        threshold = 0.9
    out = Path(out).resolve()
    if out.is_dir():
        raise CompError(f"--out {out} is a folder; give a CSV file path")
    run, model_id = model_with(source, "test.csv")
    cfg = run.load_config()
    reads = [*data_inputs(cfg.data), *run_files(run.root)]
    check_output(out, reads, trees=[run_tree(run.root), *image_trees(cfg.data)])
    pred = run.read_test(model_id, id_column=cfg.data.id_column)
    keep = select_rows(pred.probs, threshold=threshold, top_per_class=top_per_class, max_per_class=max_per_class)
    conf = pred.probs.max(1)
    if not len(keep):
        raise CompError(
            f"no row of {run.test_pred(model_id)} reaches --threshold {threshold} (the most confident is "
            f"{conf.max():.3f}); lower --threshold or use --top-per-class"
        )
    classes = list(pred.classes)
    labels = np.asarray(classes, dtype=object)[pred.probs.argmax(1)]
    id_col, label_col = cfg.data.id_column, cfg.data.label_column
    ids = pred.ids[keep]
    if soft:
        df = pd.concat([pd.DataFrame({id_col: ids}), pd.DataFrame(pred.probs[keep], columns=classes)], axis=1)
    else:
        df = pd.DataFrame({id_col: ids, label_col: labels[keep]})
    write_csv(out, df)
    chosen = labels[keep]
    per_class = {c: int((chosen == c).sum()) for c in classes}
    mean_conf = {c: float(conf[keep][chosen == c].mean()) for c in classes if per_class[c]}
    log.info(
        "pseudo-labelled %d of %d test rows of %s (%s labels) -> %s",
        len(keep),
        len(pred.ids),
        run.model_dir(model_id),
        "soft" if soft else "hard",
        out,
    )
    return PseudoResult(out, run.model_dir(model_id), soft, int(len(keep)), int(len(pred.ids)), per_class, mean_conf)
