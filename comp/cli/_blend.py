"""Commands after prediction: ensemble, pseudo."""

from __future__ import annotations

from pathlib import Path

import click

from comp.cli._base import CommaList, main, setup_logging
from comp.errors import CompError


@main.command()
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--method",
    default="hill_climb",
    type=CommaList(allow_all=True),
    metavar="NAME[,NAME...]|all",
    help="Blend method(s): mean, weighted, rank, geometric, hill_climb, stacking, gbdt; several (or all) "
    "are compared and the submission comes from the best honest CV. The members' task decides which fit: "
    "geometric is for classification only, rank is not for regression. gbdt: LightGBM over the members' "
    "predictions, data.features and group-relative features (pip install 'comp[gbdt]').",
)
@click.option(
    "--bias/--no-bias",
    default=False,
    help="Fit per-class log-probability offsets on OOF (argmax metrics; classification only).",
)
@click.option(
    "--metric",
    default=None,
    help="Metric to fit and report (any metric of the members' task); default: the first member run's config metric.",
)
@click.option("--name", default=None, help="Name of the blend's run and model folder; default blend-<method>[-bias].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Submission CSV; default submissions/<name>.csv when test predictions exist.",
)
@click.option("--tta", is_flag=True, help="Use oof_tta.csv where a member has one.")
@click.option(
    "--no-metadata",
    is_flag=True,
    help="gbdt: stack the members' predictions only, without data.features and group-relative features.",
)
@click.option(
    "--gbdt-param",
    "gbdt_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="gbdt: set a LightGBM parameter of the stack (repeatable), e.g. --gbdt-param num_leaves=31 "
    "--gbdt-param learning_rate=0.02; see the README for the keys and their defaults.",
)
def ensemble(model_dirs, method, bias, metric, name, out, tta, no_metadata, gbdt_params):
    """Blend model folders (RUN/models/<id>) and score the blend with nested CV over their folds.

    Example: comp ensemble runs/demo/models/byobnet runs/demo/models/effnet --method hill_climb --bias
    """
    from comp.ensembling import compare_blends, run_ensemble

    setup_logging(False)
    if isinstance(method, list) and not method:
        raise CompError("--method needs a method name, a comma-separated list, or all")
    methods = method if isinstance(method, list) else []
    if method == "all" or len(methods) > 1:
        compared = compare_blends(
            list(model_dirs),
            methods=None if method == "all" else methods,
            metric=metric,
            bias=bias,
            name=name,
            out=out,
            tta=tta,
            metadata=not no_metadata,
            gbdt_params=list(gbdt_params),
        )
        result = compared.best
        click.echo(compared.text())
        click.echo(f"best honest CV: {result.method} (best of {len(compared.results)} methods, so slightly optimistic)")
    else:
        result = run_ensemble(
            list(model_dirs),
            method=methods[0],
            metric=metric,
            bias=bias,
            name=name,
            out=out,
            tta=tta,
            metadata=not no_metadata,
            gbdt_params=list(gbdt_params),
        )
    click.echo(
        f"metric: {result.metric} ({result.direction}); cv = nested CV, cv_in_sample = fitted and scored on all OOF"
    )
    click.echo(result.text())
    if result.bias:
        click.echo("class bias: " + ", ".join(f"{c}={v:+.2f}" for c, v in result.bias.items()))
    if result.decision:
        shown = "; ".join(f"{k} {', '.join(f'{v:g}' for v in vs)}" for k, vs in result.decision.items())
        click.echo(f"decision (fitted on the honest blend OOF, applied to the submission): {shown}")
    if result.attribute_f1:
        click.echo(
            "blend OOF macro F1 per attribute: " + ", ".join(f"{k} {v:.4f}" for k, v in result.attribute_f1.items())
        )
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"blend: {result.model_dir}")
    if result.submission:
        click.echo(f"submission: {result.submission}")


@main.command("pseudo")
@click.argument("source", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="CSV to write (id, label, or one probability column per class with --soft; multilabel: one probability "
    "column per label; regression: one value column per target); use it as data.extra_train.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Keep test rows whose top probability is at least this (multilabel: every label's probability at "
    "least this or at most 1 - this) [default: 0.9 unless --top-per-class].",
)
@click.option(
    "--top-per-class",
    type=int,
    default=None,
    help="Instead: the K most confident rows of every class (multilabel: each label's K most probable positives).",
)
@click.option(
    "--max-per-class",
    type=int,
    default=None,
    help="With --threshold: at most this many rows per class (the most confident; multilabel: per label on its "
    "positives), so common classes cannot drown rare ones.",
)
@click.option("--soft", is_flag=True, help="Write the probabilities instead of the predicted label (classification).")
@click.option(
    "--max-rows",
    type=int,
    default=None,
    help="Regression: keep this many rows, those a blend's members agree on most (the smallest spread of their "
    "predictions); a single model records no agreement, so every row is kept, or this many drawn at random "
    "(seed 0). Without it every row is kept.",
)
def pseudo_cmd(source, out, threshold, top_per_class, max_per_class, soft, max_rows):
    """Pseudo-label test rows of a run, model or blend folder (from its test.csv), by the rule of its task:
    classes by confidence, labels when every label is confident (written soft), regression values by the
    agreement of a blend's members (written as values).

    Example: comp pseudo runs/demo-blend --out pseudo/round1.csv --threshold 0.9 --max-per-class 400
    """
    from comp.pseudo import pseudo_label

    setup_logging(False)
    result = pseudo_label(
        source,
        out=out,
        threshold=threshold,
        top_per_class=top_per_class,
        max_per_class=max_per_class,
        soft=soft,
        max_rows=max_rows,
    )
    click.echo(result.text())
    kind = {"classification": "soft" if result.soft else "hard", "multilabel": "soft"}.get(result.task, "value")
    click.echo(f"{result.rows} of {result.test_rows} test rows from {result.source / 'test.csv'} ({kind} labels)")
    if result.task == "regression":
        click.echo(
            f"rows ranked by: {result.agreement or 'nothing (no blend members recorded): every row or a seeded sample'}"
        )
    click.echo(f"pseudo-labels: {result.path}  (train on them with --set data.extra_train={result.path})")
