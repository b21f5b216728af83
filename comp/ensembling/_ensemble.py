"""Blend model folders' out-of-fold predictions, score the blend honestly and save it as a run.

Members are read and aligned in ``_members``; the numbers live in ``_blend``. Anything fitted
on OOF rows (weights, a stacker, per-class biases, and the metric's decision: F-metric thresholds, QWK
cut-points) is scored with nested CV over the folds, so the reported ``cv`` never saw the rows it scores.
The blend is saved as a run folder of its own, so it can be inspected, blended again, or turned into a
submission. Every task blends: the members' task decides which methods fit and how averages are normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comp._progress import Progress, track
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
from comp.ensembling._folder import blend_name, write_blend
from comp.ensembling._gbdt import parse_params, stack_spec, with_params  # importing it registers gbdt
from comp.ensembling._members import Aligned, Member, align, load_member
from comp.ensembling._result import BlendResult, CompareResult, MemberScore, PendingSubmission
from comp.ensembling._side import blend_side
from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import (
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


def _members(model_dirs, tta: bool) -> list[Member]:
    if not model_dirs:
        raise CompError("no model folders given; pass one or more RUN/models/<id>")
    seen: set[Path] = set()
    for d in model_dirs:
        if Path(d).resolve() in seen:
            raise CompError(f"model folder {d} is listed twice; list each member once (fitted methods weight them)")
        seen.add(Path(d).resolve())
    return [load_member(d, tta) for d in track(model_dirs, "reading blend members (OOF and test tables)")]


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
    gbdt_params: list[str] | dict | None = None,
) -> BlendResult:
    """Blend model folders, score the blend with nested CV, save it as a run folder and (``submit``) a submission.

    Members share one task (their runs' ``task:``); ``method`` must be one of its blend methods. A metric with
    a fitted decision (F-metric thresholds, QWK cut-points) is scored with the decision refitted without each
    fold like the blend itself; the decision fitted on the whole honest blend OOF is saved and applied to the
    submission. A method that reads metadata (gbdt) takes ``data.features`` and the groups from the first
    member's run config and the test table; ``metadata=False`` gives it the members' predictions only, and
    ``gbdt_params`` (``["num_leaves=31", ...]`` or a dict) sets its LightGBM parameters."""
    params = parse_params(gbdt_params)
    with_params(get_method(method), params)  # an unknown method, or params for another one: before any read
    members = _members(model_dirs, tta)
    data = align(members)
    members = [m.released() for m in members]  # their rows now live, aligned, in data: hold them once
    first = members[0]
    task, blend = _task_checks(members, method, bias)
    blend = with_params(blend, params)
    scorer = get_metric(metric or first.config.metric, task.name)
    scorer.check_columns(data.classes)
    name, run_root = blend_name(name, method, bias, members)
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
        gbdt_params=params or None,
    )
    stack = None
    if final.saved is not None:  # a stack's boosters, saved so a bundle can run them without comp
        spec = stack_spec(task.name, len(members), test_side or side, first.config.data.group_column, params)
        stack = ({**spec, "classes": list(data.classes)}, final.saved)
    result.submission = write_blend(run_root, data, first, honest, test, result, pending, stack)
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
    gbdt_params: list[str] | dict | None = None,
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
    params = parse_params(gbdt_params)
    if params and "gbdt" not in methods:
        raise CompError(
            f"--gbdt-param sets the LightGBM parameters of --method gbdt; the methods are {', '.join(methods)}"
        )
    if out is not None:  # refused before any blend is written, not after all of them
        blends = [blend_name(None, m, bias, members)[1] for m in methods]
        _check_submission(Path(out).resolve(), members[0].config, [*blends, *(m.run for m in members)])
    del members  # each blend reads its members again; these were for the checks above
    results = [
        run_ensemble(
            model_dirs,
            method=m,
            metric=metric,
            bias=bias,
            tta=tta,
            submit=False,
            metadata=metadata,
            gbdt_params=params if m == "gbdt" else None,
        )
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


def _attribute_f1(config: Config, data: Aligned, probs: np.ndarray) -> dict[str, float] | None:
    """OOF macro F1 per attribute of the (honest) blend when the members' labels are attributes."""
    if config.data.labels is None:
        return None
    from comp.data._attributes import class_names, decompose, parse_labels

    scheme = parse_labels(config.data.labels)
    if list(data.classes) != class_names(scheme):
        return None
    return attribute_f1(probs, decompose(data.y, scheme), scheme)
