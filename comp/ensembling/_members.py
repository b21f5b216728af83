"""Blend members: a model folder's OOF (and test) predictions read from its run, and their alignment.

Members are aligned by id: the same task, ids, folds, targets and output columns (classes, labels or target
names; their order may differ), or a fixable error. Targets are class names (classification) or a matrix
(multilabel 0/1, regression values), as ``oof.csv`` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from comp.config import Config
from comp.errors import CompError, RunFolderError
from comp.run import locate


@dataclass
class Member:
    """One model folder's OOF (and test) predictions as read from disk."""

    path: Path
    name: str
    run: Path
    config: Config
    id_column: str
    frame: pd.DataFrame  # id and fold (and target: the class name, for classification)
    classes: list[str]
    oof: np.ndarray
    test_ids: pd.Index | None
    test: np.ndarray | None
    targets: np.ndarray | None = None  # the target matrix (n, C) in ``classes`` order; None: class names in frame

    @property
    def task(self) -> str:
        return self.config.task

    def released(self) -> Member:
        """This member without its rows (ids, folds, targets, predictions): what a blend keeps of it once they are
        aligned (at 500k rows three members hold some 300 MB of them, ids and class names as Python strings)."""
        empty = np.empty((0, len(self.classes)))
        return replace(self, frame=self.frame.iloc[:0].copy(), oof=empty, test_ids=None, test=None, targets=None)


def load_member(model_dir: str | Path, tta: bool = False) -> Member:
    """Read ``RUN/models/<id>/oof.csv`` (``oof_tta.csv`` when ``tta`` and present) and ``test.csv`` if any."""
    hint = "pass model folders RUN/models/<id>"
    if not Path(model_dir).is_dir():
        raise CompError(f"model folder {model_dir} not found; {hint}")
    try:
        found = locate(model_dir, what="model folder", hint=hint)
    except RunFolderError:
        raise CompError(f"{Path(model_dir).resolve()} is not inside a run folder; {hint}") from None
    run, path = found.run, found.path
    if found.model_id is None:
        inner = ", ".join(str(run.model_dir(m)) for m in run.model_folders())
        raise CompError(
            f"{path} is a run folder, not a model folder; pass model folders such as {inner or path / 'models/<id>'}"
        )
    use_tta = tta and run.oof(path.name, tta=True).is_file()
    if not run.oof(path.name).is_file() and not use_tta:
        raise CompError(f"{run.oof(path.name)} not found; {hint} whose training finished")
    config = run.load_config()
    id_col = config.data.id_column
    oof = run.read_oof(path.name, tta=use_tta, id_column=id_col)
    assert oof.folds is not None and oof.targets is not None
    if oof.matrix_targets != (config.task != "classification"):
        raise CompError(
            f"{run.oof(path.name, tta=use_tta)} holds {'a target matrix' if oof.matrix_targets else 'class names'} "
            f"but its run's config.yaml says task {config.task}; regenerate it with comp train-folds"
        )
    frame = pd.DataFrame({"id": oof.ids, "fold": oof.folds})
    if not oof.matrix_targets:
        frame["target"] = oof.targets
    test_ids, test = None, None
    if run.test_pred(path.name).is_file():
        pred = run.read_test(path.name, id_column=id_col)
        if sorted(pred.classes) != sorted(oof.classes):
            raise CompError(
                f"{run.test_pred(path.name)} has classes {pred.classes} but the OOF file has {oof.classes}; "
                "re-run comp predict"
            )
        test_ids, test = pd.Index(pred.ids), pred.probs[:, [pred.classes.index(c) for c in oof.classes]]
    return Member(
        path,
        f"{run.root.name}/{path.name}",
        run.root,
        config,
        id_col,
        frame,
        oof.classes,
        oof.probs,
        test_ids,
        test,
        np.asarray(oof.targets, np.float64) if oof.matrix_targets else None,
    )


@dataclass
class Aligned:
    """Members' predictions on common rows and output columns: ``oof`` (M, n, C), ``test`` (M, n_test, C);
    ``y`` class indices (n,) or the target matrix (n, C)."""

    ids: np.ndarray
    folds: np.ndarray
    y: np.ndarray
    classes: list[str]
    oof: np.ndarray
    test_ids: np.ndarray | None
    test: np.ndarray | None
    notes: list[str]
    task: str = "classification"

    def target_labels(self) -> np.ndarray:
        """What ``oof.csv`` stores as targets: class names (n,) or the target matrix (n, C)."""
        if self.y.ndim == 2:
            return self.y
        return np.asarray(self.classes, dtype=object)[self.y]


def _same_ids(ref: pd.Index, other: pd.Index, a: str, b: str, what: str) -> None:
    missing, extra = ref.difference(other, sort=False), other.difference(ref, sort=False)
    if len(missing) or len(extra):
        first = missing[0] if len(missing) else extra[0]
        raise CompError(
            f"{what} of model {b} lack {len(missing)} and add {len(extra)} ids compared with model {a} (first: {first!r}); "
            "blend models predicted on the same rows"
        )


_WHAT = {"classification": "classes", "multilabel": "labels", "regression": "targets"}


def align(members: list[Member]) -> Aligned:
    """Check that members share task, ids, folds, targets and output columns; reorder rows and columns to the
    first's."""
    ref = members[0]
    ids = pd.Index(ref.frame["id"])
    n, width = len(ids), len(ref.classes)
    # filled in place, one member at a time: no list of copies beside the stack
    P = np.empty((len(members), n, width), dtype=np.result_type(*(m.oof for m in members)))
    T = None
    if ref.test is not None and ref.test_ids is not None:
        dtype = np.result_type(*(m.test for m in members if m.test is not None))
        T = np.empty((len(members), len(ref.test_ids), width), dtype=dtype)
    has_test, notes = T is not None, []
    what = _WHAT.get(ref.task, "output columns")
    for i, m in enumerate(members):
        if m.task != ref.task:
            raise CompError(
                f"model {m.name} is a {m.task} model but model {ref.name} is {ref.task}; blend models of one "
                "competition (the same task:)"
            )
        if set(m.classes) != set(ref.classes) or len(m.classes) != len(ref.classes):
            raise CompError(
                f"model {m.name} has {what} {m.classes} but model {ref.name} has {ref.classes}; blend models of one competition"
            )
        cols = [m.classes.index(c) for c in ref.classes]
        _same_ids(ids, pd.Index(m.frame["id"]), ref.name, m.name, "OOF rows")
        frame = m.frame.set_index("id").loc[ids]
        checks = [("fold", "retrain with the same folds.csv")]
        if "target" in ref.frame.columns:
            checks.append(("target", "blend models trained on the same train.csv"))
        for col, hint in checks:
            diff = np.flatnonzero(frame[col].to_numpy() != ref.frame[col].to_numpy())
            if len(diff):
                i, why = diff[0], " (blending them leaks validation rows into training)" if col == "fold" else ""
                raise CompError(
                    f"model {m.name} puts id {ids[i]!r} in {col} {frame[col].iloc[i]} but model {ref.name} in {col} "
                    f"{ref.frame[col].iloc[i]}{why}; {hint}"
                )
        if m.targets is not None and ref.targets is not None:
            _same_targets(m, ref, m.targets[pd.Index(m.frame["id"]).get_indexer(ids)][:, cols], ids)
        _take(m.oof, pd.Index(m.frame["id"]).get_indexer(ids), cols, P[i])
        if m.test is not None and T is not None:
            assert m.test_ids is not None and ref.test_ids is not None
            _same_ids(ref.test_ids, m.test_ids, ref.name, m.name, "test.csv rows")
            _take(m.test, m.test_ids.get_indexer(ref.test_ids), cols, T[i])
        elif m.test is None:
            has_test = False
            notes.append(f"{m.path / 'test.csv'} not found: no test predictions for the blend (run comp predict first)")
    if ref.targets is not None:
        y = ref.targets
    else:
        y = pd.Index(ref.classes).get_indexer(ref.frame["target"])
    return Aligned(
        ids.to_numpy(),
        ref.frame["fold"].to_numpy(),
        y,
        list(ref.classes),
        P,
        ref.test_ids.to_numpy() if has_test and ref.test_ids is not None else None,
        T if has_test else None,
        notes,
        ref.task,
    )


def _take(x: np.ndarray, rows: np.ndarray, cols: list[int], out: np.ndarray) -> None:
    """``out[:] = x[rows][:, cols]``, without the intermediate copy when the columns are already in order."""
    assert len(rows) == 0 or rows.min() >= 0, "every row was checked to be present"
    if cols == list(range(x.shape[1])):
        np.take(x, rows, axis=0, out=out, mode="clip")  # "raise" would buffer a copy of out
    else:
        out[:] = x[rows][:, cols]


def _same_targets(m: Member, ref: Member, mine: np.ndarray, ids: pd.Index) -> None:
    """A matrix target (0/1 labels, values) of ``m``, in ``ref``'s row and column order, must be ``ref``'s."""
    assert ref.targets is not None
    differ = ~np.isclose(mine, ref.targets, rtol=1e-6, atol=1e-9)
    if differ.any():
        i, j = (int(x[0]) for x in np.nonzero(differ))
        raise CompError(
            f"model {m.name} puts id {ids[i]!r} at target {ref.classes[j]}={mine[i, j]:g} but model {ref.name} "
            f"at {ref.targets[i, j]:g}; blend models trained on the same train.csv"
        )
