"""Blend model folders' out-of-fold predictions, score the blend honestly and save it as a run.

Members are read and aligned in ``_members``; the numbers live in ``_blend``. Anything fitted
on OOF rows (weights, a stacker, per-class biases, and the metric's decision: F-metric thresholds, QWK
cut-points) is scored with nested CV over the folds, so the reported ``cv`` never saw the rows it scores.
The blend is saved as a run folder of its own, so it can be inspected, blended again, or turned into a
submission. Every task blends: the members' task decides which methods fit and how averages are normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comp._progress import Progress, track
from comp._tables import Rendered, table_frame
from comp.config import Config
from comp.data._attributes import attribute_f1
from comp.ensembling._blend import (
    NestedBlend,
    check_bias,
    check_method,
    fit_blend,
    get_method,
    nested_blend,
    nested_decisions,
    nested_scores,
    task_methods,
)
from comp.ensembling._gbdt import fit_gbdt  # noqa: F401 - registers the gbdt method
from comp.ensembling._members import Aligned, Member, align, load_member
from comp.ensembling._side import blend_side
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import (
    FileSet,
    Metrics,
    Predictions,
    RunDir,
    check_output,
    data_inputs,
    image_trees,
    run_files,
    run_tree,
)
from comp.submission._format import make_submission, validate_submission, write_submission
from comp.submission._record import record_submission
from comp.tasks import Decision, get_task, nested_score


@dataclass
class MemberScore:
    """One member of a blend: its model folder, its own OOF score and its weight (None: not a weighted mean)."""

    name: str  # <run>/<model_id>
    path: Path
    cv: float
    weight: float | None


@dataclass(repr=False)
class BlendResult(Rendered):
    """A saved blend: honest (nested) and in-sample CV, its members, and its run folder and submission."""

    name: str
    method: str
    metric: str
    direction: str  # "maximize" or "minimize"
    cv: float  # nested CV: every OOF row scored by a blend fitted without its fold
    cv_in_sample: float  # fitted and scored on all OOF rows
    folds: list[float]  # the nested CV per fold
    members: list[MemberScore]
    weights: list[float] | None
    bias: dict[str, float] | None  # per-class log-probability offsets (--bias)
    notes: list[str]
    attribute_f1: dict[str, float] | None  # OOF macro F1 per attribute, when the classes are attributes
    run_dir: Path
    model_dir: Path
    submission: Path | None = None
    task: str = "classification"
    decision: Decision | None = None  # thresholds or cut-points fitted on the honest blend OOF (the submission's)
    per_column: dict[str, float] | None = None  # the honest blend's score per label or target
    metadata: list[str] | None = None  # a stack's inputs beside the predictions: data.features (+ "groups")

    def rows(self) -> list[dict]:
        """Every member, then the blend (in-sample and nested CV)."""
        rows = [{"model": m.name, "weight": m.weight, "cv": m.cv, "cv_in_sample": None} for m in self.members]
        rows.append({"model": f"{self.name} (blend)", "weight": None, "cv": self.cv, "cv_in_sample": self.cv_in_sample})
        return rows

    def title(self) -> str:
        return f"BlendResult: {self.name} ({self.method}), {self.metric} nested CV {self.cv:.4f}, in {self.run_dir}"

    def table(self) -> pd.DataFrame:
        return table_frame(self.rows(), ["model", "weight", "cv", "cv_in_sample"])


@dataclass(repr=False)
class CompareResult(Rendered):
    """Several blend methods on the same members; the submission came from ``best`` (the best nested CV)."""

    results: list[BlendResult]
    best: BlendResult

    def title(self) -> str:
        return f"CompareResult: best {self.best.method} (nested CV {self.best.cv:.4f})"

    def table(self) -> pd.DataFrame:
        rows = [
            {"method": r.method, "cv": r.cv, "cv_in_sample": r.cv_in_sample, "blend": r.model_dir} for r in self.results
        ]
        return table_frame(rows)


def _members(model_dirs, tta: bool) -> list[Member]:
    if not model_dirs:
        raise CompError("no model folders given; pass one or more RUN/models/<id>")
    seen: set[Path] = set()
    for d in model_dirs:
        if Path(d).resolve() in seen:
            raise CompError(f"model folder {d} is listed twice; list each member once (fitted methods weight them)")
        seen.add(Path(d).resolve())
    return [load_member(d, tta) for d in track(model_dirs, "reading blend members (OOF and test tables)")]


@dataclass
class PendingSubmission:
    """A validated submission frame waiting to be written once the blend folder is saved."""

    df: pd.DataFrame
    path: Path
    sample: str


def _prepare_submission(
    data: Aligned, probs, first: Member, name: str, out, decision: Decision | None = None
) -> tuple[PendingSubmission | None, str]:
    """Build and validate (not write) the submission in the task's format (``decision``: the thresholds or
    cut-points it applies); returns it, or None and a note saying why not."""
    sample = first.config.data.sample_submission
    if probs is None or not sample or not Path(sample).is_file():
        why = "no test predictions" if probs is None else f"sample submission {sample!r} not found"
        if out is not None:
            raise CompError(
                f"--out {out} given but {why}; run comp predict on every member / set data.sample_submission"
            )
        return None, "" if probs is None else f"no submission written: {why}"  # align() already noted missing test.csv
    df = make_submission(data.test_ids, probs, data.classes, sample, first.id_column, task=data.task, decision=decision)
    validate_submission(df, sample, data.classes, first.id_column, task=data.task)
    path = Path(out) if out is not None else Path("submissions") / f"{name}.csv"
    return PendingSubmission(df, path.resolve(), sample), ""


def _blend_name(name: str | None, method: str, bias: bool, members: list[Member]) -> tuple[str, Path]:
    """The blend's name and run folder (beside the first member's run), refusing to overwrite a member or any
    folder that is not an earlier blend of that name."""
    name = name or f"blend-{method}{'-bias' if bias else ''}"  # with and without --bias never overwrite each other
    if "/" in name or "\\" in name or name in (".", ".."):
        raise CompError(f"--name must be a plain folder name, got {name!r}")
    run_root = members[0].run.parent / name
    if any(m.run == run_root for m in members):
        raise CompError(f"--name {name} would overwrite the run folder {run_root} of a member; choose another --name")
    _check_blend_folder(run_root, name)
    return name, run_root


def _check_blend_folder(root: Path, name: str) -> None:
    """``root`` must be new, empty, or an earlier blend named ``name``: its config.yaml and folds.csv are replaced,
    which in a training run would no longer match its checkpoints."""
    if root.exists() and not root.is_dir():
        raise CompError(f"--name {name}: {root} is a file; choose another --name")
    if not root.is_dir() or not any(root.iterdir()):
        return
    run = RunDir(root)
    folders = run.model_folders()
    if any(run.checkpoints(m) for m in folders):
        raise CompError(
            f"--name {name} would overwrite {root}, a training run (its config.yaml and folds.csv belong to its "
            "checkpoints); choose another --name"
        )
    blend = run.config.is_file() and folders in ([], [name])
    if blend and run.metrics(name).is_file():
        blend = run.blend_info(name) is not None
    if not blend:
        held = sorted(p.name for p in root.iterdir())
        raise CompError(
            f"--name {name}: {root} exists and is not an earlier blend named {name} (it holds {', '.join(held[:3])}); "
            "choose another --name"
        )


def _check_submission(path: Path, config: Config, runs: list[Path]) -> None:
    """The submission never replaces a competition file, nor a file of the members' runs or the blend's own."""
    reads, trees = data_inputs(config.data), image_trees(config.data)
    for run in runs:
        reads += run_files(run)
        trees.append(run_tree(run))
    check_output(path, reads, trees=trees)


def _task_checks(members: list[Member], method: str, bias: bool):
    """The members' task; refuse a method that does not fit it, or --bias outside classification."""
    task = get_task(members[0].task)
    blend = check_method(method, task)
    if bias:
        check_bias(task)
    return task, blend


def run_ensemble(
    model_dirs,
    *,
    method: str = "hill_climb",
    metric: str | None = None,
    bias: bool = False,
    name: str | None = None,
    out=None,
    tta: bool = False,
    submit: bool = True,
    metadata: bool = True,
) -> BlendResult:
    """Blend model folders, score the blend with nested CV, save it as a run folder and (``submit``) a submission.

    Members share one task (their runs' ``task:``); ``method`` must be one of its blend methods. A metric with
    a fitted decision (F-metric thresholds, QWK cut-points) is scored with the decision refitted without each
    fold like the blend itself; the decision fitted on the whole honest blend OOF is saved and applied to the
    submission. A method that reads metadata (gbdt) takes ``data.features`` and the groups from the first
    member's run config and the test table; ``metadata=False`` gives it the members' predictions only."""
    get_method(method)  # an unknown name lists the valid ones before any file is read
    members = _members(model_dirs, tta)
    data = align(members)
    members = [m.released() for m in members]  # their rows now live, aligned, in data: hold them once
    first = members[0]
    task, blend = _task_checks(members, method, bias)
    scorer = get_metric(metric or first.config.metric, task.name)
    scorer.check_columns(data.classes)
    name, run_root = _blend_name(name, method, bias, members)
    side, test_side = None, None
    if blend.side:  # metadata, groups: read and validated (test table included) before anything is fitted
        side, test_side, side_notes = blend_side(first.config, data, metadata=metadata)
        data.notes.extend(side_notes)
    with Progress(1 + len(np.unique(data.folds)), f"blend {method} (all rows, then each fold)") as bar:
        final, b = fit_blend(blend, data.oof, data.y, scorer, bias, side)
        bar.update()
        in_sample = final.apply(data.oof, side)
        if blend.fitted or bias:
            nested = nested_blend(blend, data.oof, data.y, data.folds, scorer, bias, side, on_fold=bar.update)
        else:  # nothing fitted on the rows: the blend is honest as it is; only a decision needs refitting per fold
            nested = NestedBlend(in_sample, nested_decisions(scorer, data.y, in_sample, data.folds))
    honest = nested.pred
    cv, fold_scores = nested_scores(scorer, data.y, honest, data.folds, nested.decisions)
    decision = scorer.decide(data.y, honest)  # what the submission applies: fitted on every honest OOF row
    per_column = scorer.columns(data.y, honest, decision)
    test = final.apply(data.test, test_side) if data.test is not None else None
    pending, note = _prepare_submission(data, test, first, name, out, decision) if submit else (None, "")
    if pending is not None:
        _check_submission(pending.path, first.config, [run_root, *(m.run for m in members)])
    weights = None if final.weights is None else [float(w) for w in final.weights]
    result = BlendResult(
        name=name,
        method=method,
        metric=scorer.name,
        direction=scorer.direction,
        cv=cv,
        cv_in_sample=scorer(data.y, in_sample),
        folds=fold_scores,
        members=[
            MemberScore(
                m.name, m.path, nested_score(scorer, data.y, p, data.folds)[0], None if weights is None else weights[i]
            )
            for i, (m, p) in enumerate(zip(members, data.oof))
        ],
        weights=weights,
        bias=None if b is None else {c: round(float(v), 6) for c, v in zip(data.classes, b)},
        notes=data.notes + ([note] if note else []),
        attribute_f1=_attribute_f1(first.config, data, honest),
        run_dir=run_root,
        model_dir=RunDir(run_root).model_dir(name),
        task=task.name,
        decision=decision,
        per_column=None if per_column is None else dict(zip(data.classes, per_column)),
        metadata=None if side is None else [*side.names, *(["groups"] if side.groups is not None else [])],
    )
    result.submission = _write_run(run_root, data, first, honest, test, result, pending)
    record_submission(run_root, result.submission, models=[name], kind="ensemble")
    return result


def compare_blends(
    model_dirs,
    *,
    methods: list[str] | None = None,
    metric: str | None = None,
    bias: bool = False,
    name: str | None = None,
    out=None,
    tta: bool = False,
    metadata: bool = True,
) -> CompareResult:
    """Run several blend methods (default: every one that fits the members' task) on the same members, each saved as
    blend-<method>; the submission comes from the one with the best honest (nested) CV. Choosing among a
    few methods by that score is itself a mild selection, so its CV is reported as the best of len(methods)."""
    if name:
        raise CompError("--name names one blend; with several --method values each is saved as blend-<method>")
    if methods is not None:
        methods = list(dict.fromkeys(methods))
        if not methods:
            raise CompError("--method needs a method name, a comma-separated list, or all")
        for m in methods:
            get_method(m)  # unknown names list the valid ones, before any blend is fitted
    members = _members(model_dirs, tta)
    task = get_task(members[0].task)
    methods = task_methods(task) if methods is None else methods  # all: every method that fits the task
    for m in methods:
        _task_checks(members, m, bias)  # a method that does not fit, or --bias, is refused before any blend
    if out is not None:  # refused before any blend is written, not after all of them
        blends = [_blend_name(None, m, bias, members)[1] for m in methods]
        _check_submission(Path(out).resolve(), members[0].config, [*blends, *(m.run for m in members)])
    del members  # each blend reads its members again; these were for the checks above
    results = [
        run_ensemble(model_dirs, method=m, metric=metric, bias=bias, tta=tta, submit=False, metadata=metadata)
        for m in methods
    ]
    better = get_metric(results[0].metric, results[0].task).better
    best = results[0]
    for r in results[1:]:
        best = r if better(r.cv, best.cv) else best
    best.submission = submit_blend(best.model_dir, out)
    return CompareResult(results, best)


def submit_blend(model_dir, out=None) -> Path | None:
    """Write the validated submission of a saved blend from its ``test.csv`` (None when it has none)."""
    blend = load_member(model_dir)
    data = align([blend])
    test = None if data.test is None else data.test[0]
    run = RunDir(blend.run)
    saved = run.read_metrics(blend.path.name).extra if run.metrics(blend.path.name).is_file() else {}
    decision = saved.get("decision")  # the thresholds or cut-points fitted on the blend's honest OOF
    pending, _ = _prepare_submission(data, test, blend, blend.path.name, out, decision)
    if pending is None:
        return None
    listed = (run.blend_info(blend.path.name) or {}).get("members") or []
    _check_submission(pending.path, blend.config, [blend.run, *(Path(m).parent.parent for m in listed)])
    written = write_submission(pending.df, pending.path, pending.sample, data.classes, blend.id_column, task=data.task)
    return record_submission(blend.run, written, models=[blend.path.name], kind="ensemble")


def _write_run(
    run_root: Path,
    data: Aligned,
    first: Member,
    honest,
    test,
    result: BlendResult,
    pending: PendingSubmission | None,
) -> Path | None:
    """Save the blend as ``run_root/models/<name>`` (oof, test, metrics) plus the run's config.yaml and folds.csv,
    and the submission, all committed as one set: a killed blend never leaves new tables beside old metrics.
    Returns the submission's path, if one was written."""
    run, name = RunDir(run_root), result.name
    labels = data.target_labels()
    source = RunDir(first.run)
    with FileSet(run_root) as files:
        run.write_oof(
            name, Predictions(data.ids, data.classes, honest, data.folds, labels, first.id_column), into=files
        )
        if test is not None and data.test_ids is not None:
            run.write_test(name, Predictions(data.test_ids, data.classes, test, id_column=first.id_column), into=files)
        extra = {
            "task": result.task,
            "cv_in_sample": result.cv_in_sample,
            "method": result.method,
            "weights": result.weights,
            "bias": result.bias,
        }
        if result.decision is not None:
            extra["decision"] = result.decision
        if result.per_column is not None:
            extra["per_column"] = result.per_column
        if result.attribute_f1:
            extra["attribute_f1"] = result.attribute_f1
        if result.metadata is not None:
            extra["metadata"] = result.metadata
        run.write_metrics(
            name,
            Metrics(
                result.metric,
                get_metric(result.metric, result.task).greater_is_better,
                result.cv,
                result.folds,
                extra={
                    **extra,
                    "members": [str(m.path) for m in result.members],
                    "member_cv": [m.cv for m in result.members],
                },
            ),
            into=files,
        )
        files.text(run.config, source.config.read_text())
        if source.folds.is_file():
            files.text(run.folds, source.folds.read_text())
        else:
            files.csv(run.folds, pd.DataFrame({first.id_column: data.ids, "fold": data.folds}))
        submission = files.csv(pending.path, pending.df) if pending is not None else None
    if test is None:
        run.test_pred(name).unlink(missing_ok=True)  # a stale test.csv from an earlier blend of this name would lie
    return submission


def _attribute_f1(config: Config, data: Aligned, probs: np.ndarray) -> dict[str, float] | None:
    """OOF macro F1 per attribute of the (honest) blend when the members' labels are attributes."""
    if config.data.labels is None:
        return None
    from comp.data._attributes import class_names, decompose, parse_labels

    scheme = parse_labels(config.data.labels)
    if list(data.classes) != class_names(scheme):
        return None
    return attribute_f1(probs, decompose(data.y, scheme), scheme)
