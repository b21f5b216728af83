"""What a student trains on besides its labelled rows, read and checked before the first write.

- ``data.extra_train``: pseudo-labelled test rows (``comp pseudo``). Classification: hard (id, label) or
  soft (id, one probability column per class); multilabel: id and one probability column per label (0/1 for
  a hard label); regression: id and one value column per target, in the target's units. They join the
  training part of every fold and never a validation part, so OOF and CV keep scoring only the real
  labelled rows.
- ``loss.distill.teacher``: a run, model or blend folder of the same task. A labelled row's teacher
  prediction is the teacher's OOF row, which came from a teacher model that did not train on it, and only
  when the student's folds are the teacher's folds for every id; a pseudo row's comes from the teacher's
  ``test.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import Config, DataConfig, DistillConfig
from comp.data._table import TrainTable, check_ids, check_images, image_paths, read_csv, require_columns
from comp.errors import CompError, RunFolderError
from comp.run import RunDir, file_sha256, model_with
from comp.tasks import get_task

SUM_TOLERANCE = 0.01  # a soft row's probabilities must sum to 1 within this (CSV rounding), then are renormalised


@dataclass
class ExtraRows:
    """Pseudo-labelled rows: ids, image paths (under ``data.test_image_dir``) and (n, C) targets: class
    distributions (one-hot for hard labels), label probabilities, or target values in the target's units."""

    path: Path
    ids: np.ndarray
    paths: list[Path]
    labels: np.ndarray  # float32 (n, C)
    soft: bool
    sha256: str


@dataclass
class Teacher:
    """A teacher's predictions for the training rows (then the extra rows), columns in the student's order:
    class probabilities, label probabilities or target values (in the target's units)."""

    model_dir: Path
    probs: np.ndarray  # float32 (n_train + n_extra, C)
    alpha: float
    temperature: float
    hashes: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainingTargets:
    """Everything the fold trainer needs to train on pseudo rows and a teacher; ``record`` goes to metrics.json."""

    classes: list[str]
    extra: ExtraRows | None
    teacher: Teacher | None
    task: str = "classification"

    @property
    def n_extra(self) -> int:
        return 0 if self.extra is None else len(self.extra.ids)

    def record(self) -> dict[str, Any]:
        """Which rows and soft targets the run trained on (``metrics.json`` and ``RUN/sources.json``)."""
        out: dict[str, Any] = {}
        if self.extra is not None:
            out["extra_train"] = {
                "path": str(self.extra.path),
                "sha256": self.extra.sha256,
                "rows": self.n_extra,
                "labels": "soft" if self.extra.soft else "hard",
                **_counts(self.task, self.extra.labels, self.classes),
            }
        if self.teacher is not None:
            out["distill"] = {
                "teacher": str(self.teacher.model_dir),
                "alpha": self.teacher.alpha,
                "temperature": self.teacher.temperature,
                **self.teacher.hashes,
            }
        return out


def load_training_targets(cfg: Config, table: TrainTable, folds: np.ndarray, run: RunDir) -> TrainingTargets | None:
    """Read and check ``data.extra_train`` and ``loss.distill`` (None when neither is set); nothing is written."""
    if cfg.data.extra_train is None and not cfg.loss.distill.enabled:
        return None
    extra = read_extra_rows(cfg.data, table) if cfg.data.extra_train is not None else None
    teacher = None
    if cfg.loss.distill.enabled:
        teacher = read_teacher(cfg.loss.distill, cfg, table, folds, extra, run)
    return TrainingTargets(list(table.classes), extra, teacher, table.task)


_COUNTS: dict[str, Callable[[np.ndarray, list[str]], dict[str, Any]]] = {
    # what ``record`` says about the extra rows' targets, per task
    "classification": lambda t, cs: {"per_class": {c: int((t.argmax(1) == i).sum()) for i, c in enumerate(cs)}},
    "multilabel": lambda t, cs: {"per_label": {c: int((t[:, i] >= 0.5).sum()) for i, c in enumerate(cs)}},
    "regression": lambda t, cs: {"mean": {c: float(t[:, i].mean()) for i, c in enumerate(cs)}},
}


def _counts(task: str, labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Rows per class (argmax), rows per label (probability at least 0.5), or each target's mean value."""
    return _COUNTS[task](labels, classes)


# ---------------------------------------------------------------- pseudo-labelled rows


def read_extra_rows(data_cfg: DataConfig, table: TrainTable) -> ExtraRows:
    """``data.extra_train`` as the task's targets (see the module docstring); every problem names the file, line
    or column and the fix."""
    assert data_cfg.extra_train is not None
    path = Path(data_cfg.extra_train)
    df = read_csv(path, "extra training rows (data.extra_train)")
    id_col, classes = data_cfg.id_column, list(table.classes)
    require_columns(df, [id_col], path, "data.id_column")
    check_ids(df, id_col, path)
    if table.task == "classification":  # hard labels or class distributions
        labels, soft = _class_rows(df, data_cfg.label_column, classes, path)
    else:  # one column per label or target
        labels, soft = _matrix_rows(df, table.task, classes, path), True
    ids = df[id_col].to_numpy(dtype=object)
    clash = pd.Index(ids).isin(pd.Index(table.df[id_col].to_numpy(dtype=object)))
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise CompError(
            f"{path} line {i + 2}: id {ids[i]!r} is also a row of {data_cfg.train_csv}; extra training "
            "rows are test rows (comp pseudo), drop it"
        )
    paths = image_paths(df, data_cfg.test_image_dir, data_cfg, path)  # the test set's id -> path rule
    check_images(paths, path)
    return ExtraRows(path, ids, paths, labels, soft, file_sha256(path))


def _class_rows(df: pd.DataFrame, label_col: str, classes: list[str], path: Path) -> tuple[np.ndarray, bool]:
    """Classification: hard labels in the label column or one probability column per class."""
    class_cols = [c for c in classes if c in df.columns]
    has_label = label_col in df.columns
    if has_label and class_cols:
        raise CompError(
            f"{path} has both a '{label_col}' column (hard labels) and class columns (soft labels); "
            "keep one kind (comp pseudo writes one or the other)"
        )
    if not has_label and not class_cols:
        raise CompError(
            f"{path} needs a '{label_col}' column (hard labels) or one probability column per class "
            f"({', '.join(classes[:6])}{'...' if len(classes) > 6 else ''}); write it with comp pseudo"
        )
    if class_cols:
        missing = [c for c in classes if c not in df.columns]
        if missing:
            raise CompError(f"{path}: soft labels need one column per class; class {missing[0]!r} has none")
        return _soft_labels(df, classes, path), True
    return _hard_labels(df[label_col], classes, path, label_col), False


def _matrix_rows(df: pd.DataFrame, task: str, columns: list[str], path: Path) -> np.ndarray:
    """Multilabel: one probability column per label (0/1 for a hard label); regression: one value column per
    target, in the target's units."""
    what = "probability column per label" if task == "multilabel" else "value column per target"
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CompError(
            f"{path} needs one {what} ({', '.join(columns[:6])}{'...' if len(columns) > 6 else ''}); "
            f"column {missing[0]!r} is missing; write it with comp pseudo"
        )
    values = df[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if task == "multilabel":
        bad |= (values < 0) | (values > 1)
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        kind = "a probability in [0, 1]" if task == "multilabel" else "a finite number"
        raise CompError(
            f"{path} line {r + 2}: column '{columns[c]}' holds {df[columns[c]].iloc[r]!r}, not {kind}; fix the row"
        )
    return values.astype(np.float32)


def _hard_labels(labels: pd.Series, classes: list[str], path: Path, label_col: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    bad = labels.isna() | ~labels.isin(index)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise CompError(
            f"{path} line {i + 2}: label {labels.iloc[i]!r} in column '{label_col}' is not a class of the "
            f"training table ({', '.join(classes[:6])}{'...' if len(classes) > 6 else ''}); fix or drop the row"
        )
    out = np.zeros((len(labels), len(classes)), np.float32)
    out[np.arange(len(labels)), labels.map(index).to_numpy(np.int64)] = 1.0
    return out


def _soft_labels(df: pd.DataFrame, classes: list[str], path: Path) -> np.ndarray:
    values = df[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        r, c = (int(x[0]) for x in np.nonzero(bad))
        raise CompError(
            f"{path} line {r + 2}: column '{classes[c]}' holds {df[classes[c]].iloc[r]!r}, not a probability "
            "in [0, 1]; fix the row"
        )
    sums = values.sum(1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        r = int(np.flatnonzero(off)[0])
        raise CompError(
            f"{path} line {r + 2}: the class probabilities sum to {sums[r]:.4f}, not 1; soft labels are one "
            "probability per class"
        )
    return (values / sums[:, None]).astype(np.float32)


# ---------------------------------------------------------------- the teacher


def read_teacher(
    distill: DistillConfig,
    cfg: Config,
    table: TrainTable,
    folds: np.ndarray,
    extra: ExtraRows | None,
    run: RunDir,
) -> Teacher:
    """The teacher's OOF rows for the training rows (refused unless its folds are the student's for every id) and
    its test rows for the pseudo-labelled rows."""
    assert distill.teacher is not None
    where = f"loss.distill.teacher {distill.teacher}"
    teacher_run, mid = model_with(distill.teacher, "oof.csv", what="loss.distill.teacher")
    model_dir = teacher_run.model_dir(mid)
    for entry in cfg.models:
        if run.model_dir(entry.model_id).resolve() == model_dir.resolve():
            raise CompError(
                f"{where} is the folder model '{entry.model_id}' of this run writes; a student cannot "
                "overwrite its teacher; use another --run-dir or model id"
            )
    oof = teacher_run.read_oof(mid)
    assert oof.folds is not None and oof.targets is not None
    classes = list(table.classes)
    teacher_task = teacher_run.load_config().task
    if teacher_task != table.task or oof.matrix_targets != (table.task != "classification"):
        raise CompError(
            f"{where} is a {teacher_task} model and the student is {table.task}; distil from a model of the "
            "same competition and task"
        )
    if set(oof.classes) != set(classes):
        what = {"multilabel": "labels", "regression": "targets"}.get(table.task, "classes")
        raise CompError(
            f"{where}: the teacher's {what} ({', '.join(oof.classes)}) are not the student's "
            f"({', '.join(classes)}); distil from a model of the same competition"
        )
    cols = [oof.classes.index(c) for c in classes]
    id_col = cfg.data.id_column
    ids = pd.Index(table.df[id_col].to_numpy(dtype=object))
    pos = pd.Index(oof.ids).get_indexer(ids)
    if (pos < 0).any() or len(oof.ids) != len(ids):
        missing = ids[pos < 0]
        first = missing[0] if len(missing) else pd.Index(oof.ids).difference(ids)[0]
        raise CompError(
            f"{where}: its OOF rows are not the training rows of {cfg.data.train_csv} (first differing id "
            f"{first!r}); the teacher must be trained on the same training table"
        )
    t_folds, t_targets = oof.folds[pos], oof.targets[pos]
    differ = np.flatnonzero(t_folds != folds)
    if len(differ):
        i = int(differ[0])
        raise CompError(
            f"{where}: id {ids[i]!r} is in teacher fold {t_folds[i]} but in student fold {folds[i]} "
            f"({len(differ)} ids differ); its OOF probability would come from a model that trained on rows "
            "the student validates on; train the student on the teacher's folds (same training table and "
            "folds.n_splits/folds.seed, or the teacher's folds.csv in the run folder)"
        )
    if oof.matrix_targets:  # the same 0/1 labels or values, in the student's column order
        t_matrix = np.asarray(t_targets, np.float64)[:, cols]
        mine = np.asarray(table.targets, np.float64)
        off = ~np.isclose(t_matrix, mine, rtol=1e-5, atol=1e-6)
        wrong = np.flatnonzero(off.any(1))
        if len(wrong):
            i = int(wrong[0])
            j = int(np.flatnonzero(off[i])[0])
            raise CompError(
                f"{where}: id {ids[i]!r} has target {classes[j]}={t_matrix[i, j]:g} in the teacher's OOF but "
                f"{mine[i, j]:g} in {cfg.data.train_csv}; distil from a teacher trained on the same labels"
            )
    else:
        labels = np.asarray(classes, dtype=object)[table.targets]
        wrong = np.flatnonzero(t_targets.astype(str) != labels.astype(str))
        if len(wrong):
            i = int(wrong[0])
            raise CompError(
                f"{where}: id {ids[i]!r} has target {t_targets[i]!r} in the teacher's OOF but label "
                f"{labels[i]!r} in {cfg.data.train_csv}; distil from a teacher trained on the same labels"
            )
    probs = [oof.probs[pos][:, cols]]
    hashes = {"teacher_oof_sha256": file_sha256(teacher_run.oof(mid))}
    if extra is not None:
        if not teacher_run.test_pred(mid).is_file():
            raise RunFolderError(
                f"{where} has no test.csv, and the pseudo-labelled rows of data.extra_train need the "
                "teacher's test probabilities; run comp predict on the teacher first"
            )
        test = teacher_run.read_test(mid)
        if set(test.classes) != set(classes):
            raise RunFolderError(
                f"{teacher_run.test_pred(mid)} has classes {test.classes}, not {classes}; re-run comp predict"
            )
        tpos = pd.Index(test.ids).get_indexer(pd.Index(extra.ids))
        if (tpos < 0).any():
            raise CompError(
                f"{where}: id {extra.ids[tpos < 0][0]!r} of {extra.path} has no row in the teacher's "
                f"{teacher_run.test_pred(mid)}; pseudo-label test ids the teacher predicted"
            )
        probs.append(test.probs[tpos][:, [test.classes.index(c) for c in classes]])
        hashes["teacher_test_sha256"] = file_sha256(teacher_run.test_pred(mid))
    # class rows clipped and scaled to sum to one, label probabilities clipped into [0, 1], values as they are
    stacked = get_task(table.task).normalise(np.concatenate(probs).astype(np.float64))
    return Teacher(model_dir, stacked.astype(np.float32), distill.alpha, distill.temperature, hashes)


# ---------------------------------------------------------------- the run folder's record


def check_and_record(targets: TrainingTargets | None, run: RunDir, trained: bool) -> None:
    """Refuse to continue a run whose trained folds used other pseudo rows or teacher probabilities (same paths,
    changed files); then save ``RUN/sources.json``. Called after the config check, before training."""
    now = targets.record() if targets is not None else {}
    before = run.read_sources()
    if trained and before is not None and before != now:
        changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
        raise CompError(
            f"{run.root} trained folds on other {' and '.join(changed)} contents than the files hold now "
            f"({run.sources}); restore them or use a fresh --run-dir"
        )
    if before != now:
        run.write_sources(now)
