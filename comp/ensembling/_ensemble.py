"""Blend model folders' out-of-fold probabilities, score the blend honestly and save it as a run.

Members are aligned by id (same ids, folds, targets and classes, or a fixable error). Anything fitted
on OOF rows (weights, a stacker, per-class biases) is scored with nested CV over the folds, so the
reported ``cv`` never saw the rows it scores. The blend is saved as a run folder of its own, so it can
be inspected, blended again, or turned into a submission. The numbers live in ``comp.blend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comp.config import Config
from comp.ensembling._blend import METHODS, fit_blend, get_method, nested_oof
from comp.errors import CompError, RunFolderError
from comp.metrics import get_metric
from comp.run import FileSet, Metrics, Predictions, RunDir, locate
from comp.submission._format import make_submission, validate_submission, write_submission

# ---------------------------------------------------------------- loading and alignment


@dataclass
class Member:
    """One model folder's OOF (and test) probabilities as read from disk."""

    path: Path
    name: str
    run: Path
    config: Config
    id_column: str
    frame: pd.DataFrame  # id, fold, target as strings
    classes: list[str]
    oof: np.ndarray
    test_ids: pd.Index | None
    test: np.ndarray | None


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
    frame = pd.DataFrame({"id": oof.ids, "fold": oof.folds, "target": oof.targets})
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
        path, f"{run.root.name}/{path.name}", run.root, config, id_col, frame, oof.classes, oof.probs, test_ids, test
    )


@dataclass
class Aligned:
    """Members' probabilities on common rows and classes: ``oof`` (M, n, C), ``test`` (M, n_test, C)."""

    ids: np.ndarray
    folds: np.ndarray
    y: np.ndarray
    classes: list[str]
    oof: np.ndarray
    test_ids: np.ndarray | None
    test: np.ndarray | None
    notes: list[str]


def _same_ids(ref: pd.Index, other: pd.Index, a: str, b: str, what: str) -> None:
    missing, extra = ref.difference(other, sort=False), other.difference(ref, sort=False)
    if len(missing) or len(extra):
        first = missing[0] if len(missing) else extra[0]
        raise CompError(
            f"{what} of model {b} lack {len(missing)} and add {len(extra)} ids compared with model {a} (first: {first!r}); "
            "blend models predicted on the same rows"
        )


def align(members: list[Member]) -> Aligned:
    """Check that members share ids, folds, targets and classes; reorder rows and columns to the first's."""
    ref = members[0]
    ids = pd.Index(ref.frame["id"])
    P, T, notes = [], [], []
    for m in members:
        if set(m.classes) != set(ref.classes):
            raise CompError(
                f"model {m.name} has classes {m.classes} but model {ref.name} has {ref.classes}; blend models of one competition"
            )
        cols = [m.classes.index(c) for c in ref.classes]
        _same_ids(ids, pd.Index(m.frame["id"]), ref.name, m.name, "OOF rows")
        frame = m.frame.set_index("id").loc[ids]
        for col, hint in (
            ("fold", "retrain with the same folds.csv"),
            ("target", "blend models trained on the same train.csv"),
        ):
            diff = np.flatnonzero(frame[col].to_numpy() != ref.frame[col].to_numpy())
            if len(diff):
                i, why = diff[0], " (blending them leaks validation rows into training)" if col == "fold" else ""
                raise CompError(
                    f"model {m.name} puts id {ids[i]!r} in {col} {frame[col].iloc[i]} but model {ref.name} in {col} "
                    f"{ref.frame[col].iloc[i]}{why}; {hint}"
                )
        P.append(m.oof[pd.Index(m.frame["id"]).get_indexer(ids)][:, cols])
        if m.test is not None and ref.test is not None:
            assert m.test_ids is not None and ref.test_ids is not None
            _same_ids(ref.test_ids, m.test_ids, ref.name, m.name, "test.csv rows")
            T.append(m.test[m.test_ids.get_indexer(ref.test_ids)][:, cols])
        elif m.test is None:
            notes.append(f"{m.path / 'test.csv'} not found: no test predictions for the blend (run comp predict first)")
    y = pd.Index(ref.classes).get_indexer(ref.frame["target"])
    has_test = len(T) == len(members)
    return Aligned(
        ids.to_numpy(),
        ref.frame["fold"].to_numpy(),
        y,
        list(ref.classes),
        np.stack(P),
        ref.test_ids.to_numpy() if has_test and ref.test_ids is not None else None,
        np.stack(T) if has_test else None,
        notes,
    )


# ---------------------------------------------------------------- orchestration


def _members(model_dirs, tta: bool) -> list[Member]:
    if not model_dirs:
        raise CompError("no model folders given; pass one or more RUN/models/<id>")
    seen: set[Path] = set()
    for d in model_dirs:
        if Path(d).resolve() in seen:
            raise CompError(f"model folder {d} is listed twice; list each member once (fitted methods weight them)")
        seen.add(Path(d).resolve())
    return [load_member(d, tta) for d in model_dirs]


@dataclass
class PendingSubmission:
    """A validated submission frame waiting to be written once the blend folder is saved."""

    df: pd.DataFrame
    path: Path
    sample: str


def _prepare_submission(data: Aligned, probs, first: Member, name: str, out) -> tuple[PendingSubmission | None, str]:
    """Build and validate (not write) the submission; returns it, or None and a note saying why not."""
    sample = first.config.data.sample_submission
    if probs is None or not sample or not Path(sample).is_file():
        why = "no test predictions" if probs is None else f"sample submission {sample!r} not found"
        if out is not None:
            raise CompError(
                f"--out {out} given but {why}; run comp predict on every member / set data.sample_submission"
            )
        return None, "" if probs is None else f"no submission written: {why}"  # align() already noted missing test.csv
    df = make_submission(data.test_ids, probs, data.classes, sample, first.id_column)
    validate_submission(df, sample, data.classes, first.id_column)
    path = Path(out) if out is not None else Path("submissions") / f"{name}.csv"
    return PendingSubmission(df, path.resolve(), sample), ""


def _blend_name(name: str | None, method: str, bias: bool, members: list[Member]) -> tuple[str, Path]:
    """The blend's name and run folder (beside the first member's run), refusing to overwrite a member."""
    name = name or f"blend-{method}{'-bias' if bias else ''}"  # with and without --bias never overwrite each other
    if "/" in name or "\\" in name or name in (".", ".."):
        raise CompError(f"--name must be a plain folder name, got {name!r}")
    run_root = members[0].run.parent / name
    if any(m.run == run_root for m in members):
        raise CompError(f"--name {name} would overwrite the run folder {run_root} of a member; choose another --name")
    return name, run_root


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
) -> dict:
    """Blend model folders, score the blend with nested CV, save it as a run folder and (``submit``) a submission."""
    blend = get_method(method)
    members = _members(model_dirs, tta)
    data, first = align(members), members[0]
    scorer = get_metric(metric or first.config.metric)
    name, run_root = _blend_name(name, method, bias, members)
    final, b = fit_blend(blend, data.oof, data.y, scorer, bias)
    in_sample = final.predict(data.oof)
    honest = nested_oof(blend, data.oof, data.y, data.folds, scorer, bias) if blend.fitted or bias else in_sample
    test = final.predict(data.test) if data.test is not None else None
    pending, note = _prepare_submission(data, test, first, name, out) if submit else (None, "")
    weights = None if final.weights is None else [float(w) for w in final.weights]
    result = {
        "name": name,
        "method": method,
        "metric": scorer.name,
        "direction": scorer.direction,
        "cv": scorer(data.y, honest),
        "cv_in_sample": scorer(data.y, in_sample),
        "folds": [scorer(data.y[data.folds == k], honest[data.folds == k]) for k in np.unique(data.folds)],
        "members": [
            {
                "name": m.name,
                "path": str(m.path),
                "cv": scorer(data.y, p),
                "weight": None if weights is None else weights[i],
            }
            for i, (m, p) in enumerate(zip(members, data.oof))
        ],
        "weights": weights,
        "bias": None if b is None else {c: round(float(v), 6) for c, v in zip(data.classes, b)},
        "notes": data.notes + ([note] if note else []),
        "attribute_f1": _attribute_f1(first.config, data, honest),
    }
    model_dir, submission = _write_run(run_root, name, data, first, honest, test, result, pending)
    result.update(run_dir=str(run_root), model_dir=str(model_dir), submission=str(submission) if submission else None)
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
) -> dict:
    """Run several blend methods (default: every registered one) on the same members, each saved as
    blend-<method>; the submission comes from the one with the best honest (nested) CV. Choosing among a
    few methods by that score is itself a mild selection, so its CV is reported as the best of len(methods)."""
    if name:
        raise CompError("--name names one blend; with several --method values each is saved as blend-<method>")
    methods = list(METHODS) if methods is None else list(dict.fromkeys(methods))
    if not methods:
        raise CompError("--method needs a method name, a comma-separated list, or all")
    for m in methods:
        get_method(m)  # unknown names list the valid ones, before any blend is fitted
    results = [run_ensemble(model_dirs, method=m, metric=metric, bias=bias, tta=tta, submit=False) for m in methods]
    better = get_metric(results[0]["metric"]).better
    best = results[0]
    for r in results[1:]:
        best = r if better(r["cv"], best["cv"]) else best
    best["submission"] = submit_blend(best["model_dir"], out)
    return {"results": results, "best": best}


def submit_blend(model_dir, out=None) -> str | None:
    """Write the validated submission of a saved blend from its ``test.csv`` (None when it has none)."""
    blend = load_member(model_dir)
    data = align([blend])
    test = None if data.test is None else data.test[0]
    pending, _ = _prepare_submission(data, test, blend, blend.path.name, out)
    if pending is None:
        return None
    return str(write_submission(pending.df, pending.path, pending.sample, data.classes, blend.id_column))


def _write_run(
    run_root: Path,
    name: str,
    data: Aligned,
    first: Member,
    honest,
    test,
    result: dict,
    pending: PendingSubmission | None,
) -> tuple[Path, Path | None]:
    """Save the blend as ``run_root/models/<name>`` (oof, test, metrics) plus the run's config.yaml and folds.csv,
    and the submission, all committed as one set: a killed blend never leaves new tables beside old metrics."""
    run = RunDir(run_root)
    labels = np.asarray(data.classes, dtype=object)[data.y]
    source = RunDir(first.run)
    with FileSet(run_root) as files:
        run.write_oof(
            name, Predictions(data.ids, data.classes, honest, data.folds, labels, first.id_column), into=files
        )
        if test is not None and data.test_ids is not None:
            run.write_test(name, Predictions(data.test_ids, data.classes, test, id_column=first.id_column), into=files)
        scorer = get_metric(result["metric"])
        extra = {k: result[k] for k in ("cv_in_sample", "method", "weights", "bias")}
        if result.get("attribute_f1"):
            extra["attribute_f1"] = result["attribute_f1"]
        run.write_metrics(
            name,
            Metrics(
                result["metric"],
                scorer.greater_is_better,
                result["cv"],
                result["folds"],
                extra={
                    **extra,
                    "members": [m["path"] for m in result["members"]],
                    "member_cv": [m["cv"] for m in result["members"]],
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
    return run.model_dir(name), submission


def _attribute_f1(config: Config, data: Aligned, probs: np.ndarray) -> dict[str, float] | None:
    """OOF macro F1 per attribute of the (honest) blend when the members' labels are attributes."""
    if config.data.labels is None:
        return None
    from comp.data._attributes import attribute_f1, class_names, decompose, parse_labels

    scheme = parse_labels(config.data.labels)
    if list(data.classes) != class_names(scheme):
        return None
    return attribute_f1(probs, decompose(data.y, scheme), scheme)


def result_rows(result: dict) -> list[dict]:
    """Rows for the terminal table: every member, then the blend (in-sample and nested CV)."""
    rows = [{"model": m["name"], "weight": m["weight"], "cv": m["cv"], "cv_in_sample": None} for m in result["members"]]
    rows.append(
        {
            "model": f"{result['name']} (blend)",
            "weight": None,
            "cv": result["cv"],
            "cv_in_sample": result["cv_in_sample"],
        }
    )
    return rows
