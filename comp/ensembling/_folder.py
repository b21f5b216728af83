"""The blend's run folder: its name and what it may replace, and every file of a blend written as one set
(oof, test, metrics, the config and folds it came from, a gbdt stack's boosters, the submission)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from comp.errors import CompError
from comp.metrics import get_metric
from comp.run import FileSet, Metrics, Predictions, RunDir

if TYPE_CHECKING:
    from comp.ensembling._members import Aligned, Member
    from comp.ensembling._result import BlendResult, PendingSubmission


def blend_name(name: str | None, method: str, bias: bool, members: list[Member]) -> tuple[str, Path]:
    """The blend's name and run folder (beside the first member's run), refusing to overwrite a member or any
    folder that is not an earlier blend of that name."""
    name = name or f"blend-{method}{'-bias' if bias else ''}"  # with and without --bias never overwrite each other
    if "/" in name or "\\" in name or name in (".", ".."):
        raise CompError(f"--name must be a plain folder name, got {name!r}")
    run_root = members[0].run.parent / name
    if any(m.run == run_root for m in members):
        raise CompError(f"--name {name} would overwrite the run folder {run_root} of a member; choose another --name")
    check_blend_folder(run_root, name)
    return name, run_root


def check_blend_folder(root: Path, name: str) -> None:
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


def write_blend(
    run_root: Path,
    data: Aligned,
    first: Member,
    honest,
    test,
    result: BlendResult,
    pending: PendingSubmission | None,
    stack: tuple[dict, list[dict]] | None = None,
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
        if result.gbdt_params:
            extra["gbdt_params"] = result.gbdt_params
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
        if stack is not None:
            run.write_stack(name, *stack, into=files)
    written = run.read_stack(name) if stack is not None else None
    run.clear_stack(
        name, keep=("stack.json", *(b["file"] for b in written["boosters"] if "file" in b)) if written else ()
    )
    if test is None:
        run.test_pred(name).unlink(missing_ok=True)  # a stale test.csv from an earlier blend of this name would lie
    return submission
