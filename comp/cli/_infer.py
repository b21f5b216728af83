"""Inference commands: export, predict, bundle, submit."""

from __future__ import annotations

from pathlib import Path

import click

from comp.cli._base import (
    CommaList,
    literal_choices,
    main,
    model_option,
    quiet_option,
    run_arg,
    set_option,
    setup_logging,
)
from comp.config import PredictConfig


def int8_check_options(f):
    """--calib and --max-drop: how export and bundle calibrate an int8 graph and how much metric it may cost."""
    f = click.option(
        "--max-drop",
        default=0.005,
        show_default=True,
        type=float,
        help="--int8: refuse when the metric on held-out rows drops by more than this.",
    )(f)
    return click.option(
        "--calib", default=256, show_default=True, type=int, help="--int8: training images to calibrate on."
    )(f)


MERGES = literal_choices(PredictConfig, "tta_merge")


@main.command("export")
@run_arg
@model_option
@click.option("--fp16", is_flag=True, help="Convert the graphs to float16 (inputs and outputs stay float32).")
@click.option("--fuse", is_flag=True, help="Also write fused.onnx: all folds (and --tta views) averaged in one graph.")
@click.option("--opset", default=17, type=int, help="ONNX opset version.")
@click.option(
    "--tta", default=None, type=CommaList(), metavar="hflip,...", help="TTA views inside fused.onnx (only with --fuse)."
)
@click.option("--tta-merge", default="mean", type=click.Choice(MERGES), help="How fused.onnx merges views.")
@click.option(
    "--int8", is_flag=True, help="Also write each graph quantized to int8 (*.int8.onnx), checked on held-out rows."
)
@int8_check_options
@quiet_option
def export_cmd(run_dir, model_ids, fp16, fuse, opset, tta, tta_merge, int8, calib, max_drop, quiet):
    """Export every fold checkpoint to ONNX (probabilities out), checked against PyTorch before it is kept.

    Example: comp export runs/demo --fuse --tta hflip
    """
    from comp.inference import export_run

    setup_logging(quiet)
    reports = export_run(
        run_dir,
        models=list(model_ids) or None,
        fp16=fp16,
        fuse=fuse,
        opset=opset,
        tta=tta or [],
        tta_merge=tta_merge,
        int8=int8,
        calib=calib,
        max_drop=max_drop,
    )
    for mid, report in reports.items():
        for f in report.get("int8", {}).get("files", []):
            click.echo(
                f"{mid}/{f['file']}: {f['metric']} {f['float_score']:.4f} float32 -> {f['int8_score']:.4f} int8 "
                f"(drop {f['drop']:+.4f}), max |diff| {f['max_abs_diff']:.2e} on {f['rows']} {f['checked_on']}"
            )
        click.echo(f"export report: {Path(run_dir) / 'models' / mid / 'export.json'}")


@main.command("predict")
@run_arg
@model_option
@click.option(
    "--engine",
    type=click.Choice(literal_choices(PredictConfig, "engine")),
    default=None,
    help="[default: config predict.engine]",
)
@click.option(
    "--tta",
    default=None,
    type=CommaList(),
    metavar="hflip,vflip",
    help="TTA views: hflip, vflip, shift, scale:F, five_crop[:F] [default: config predict.tta].",
)
@click.option("--tta-merge", type=click.Choice(MERGES), default=None, help="[default: config predict.tta_merge]")
@set_option
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Submission CSV [default: submissions/<run>.csv]."
)
@click.option(
    "--oof", is_flag=True, help="Also apply the TTA to each fold's validation rows and print CV before/after."
)
@click.option("--batch-size", type=int, default=None, help="[default: config predict.batch_size]")
@click.option("--allow-missing-folds", is_flag=True, help="Predict with the folds that are trained when some are not.")
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(literal_choices(PredictConfig, "compile")),
    default=None,
    help="torch engine: torch.compile mode [default: config predict.compile]",
)
@quiet_option
def predict_cmd(
    run_dir,
    model_ids,
    engine,
    tta,
    tta_merge,
    overrides,
    out,
    oof,
    batch_size,
    allow_missing_folds,
    compile_mode,
    quiet,
):
    """Predict the test set with every fold of each model; writes models/<id>/test.csv and a submission.

    Example: comp predict runs/demo --tta hflip --oof
    """
    from comp.inference import predict_run

    setup_logging(quiet)
    if compile_mode is not None:
        overrides = (*overrides, f"predict.compile={compile_mode}")
    result = predict_run(
        run_dir,
        models=list(model_ids) or None,
        engine=engine,
        tta=tta,
        tta_merge=tta_merge,
        overrides=overrides,
        out=out,
        oof=oof,
        batch_size=batch_size,
        allow_missing_folds=allow_missing_folds,
        progress=not quiet,
    )
    click.echo(result.text())
    for info in result.models.values():
        click.echo(f"test predictions: {info.test}" + (f"  oof with TTA: {info.oof_tta}" if oof else ""))
    if result.submission:
        click.echo(f"submission: {result.submission}")


@main.command("bundle")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Bundle folder to write: new, empty, or an earlier bundle (replaced).",
)
@model_option
@click.option(
    "--tta",
    default=None,
    type=CommaList(),
    metavar="hflip,...",
    help="TTA views inside each graph [default: each run's config predict.tta].",
)
@click.option(
    "--tta-merge",
    type=click.Choice(MERGES),
    default=None,
    help="[default: each run's config predict.tta_merge]",
)
@click.option("--fp16", is_flag=True, help="Convert the graphs to float16 (inputs and outputs stay float32).")
@click.option("--opset", default=17, type=int, help="ONNX opset version.")
@click.option("--int8", is_flag=True, help="Ship each graph quantized to int8, checked on held-out training rows.")
@int8_check_options
@quiet_option
def bundle_cmd(source, out, model_ids, tta, tta_merge, fp16, opset, int8, calib, max_drop, quiet):
    """Write an offline inference bundle of a run, model or blend: fused ONNX graphs, manifest.json, predict.py.

    predict.py needs only onnxruntime, numpy and Pillow (a Kaggle notebook without internet).

    Example: comp bundle runs/demo-blend --out bundle
    """
    from comp.inference import bundle_run

    setup_logging(quiet)
    result = bundle_run(
        source,
        out=out,
        models=list(model_ids) or None,
        tta=tta,
        tta_merge=tta_merge,
        fp16=fp16,
        opset=opset,
        int8=int8,
        calib=calib,
        max_drop=max_drop,
    )
    click.echo(result.text())
    click.echo(f"bundle: {result.out}")
    click.echo(f"in the notebook: {result.command()}")


@main.command("submit")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--competition", required=True, help="Kaggle competition slug (from its URL).")
@click.option("--message", required=True, help="Submission description.")
@click.option(
    "--sample", type=click.Path(dir_okay=False, path_type=Path), help="sample_submission.csv to validate against."
)
@click.option(
    "--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), help="Run folder: its sample and classes."
)
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              help="Where to find the run that wrote FILE (by sha256) to record the upload on.")  # fmt: skip
def submit_cmd(file, competition, message, sample, run_dir, runs_dir):
    """Validate a submission against the sample, then upload it with the kaggle package.

    Example: comp submit submissions/demo.csv --competition digit-recognizer --message "5 folds, hflip" --run runs/demo
    """
    from comp.submission import submit

    path = submit(file, competition, message, sample, run_dir, runs_dir)
    click.echo(f"submitted {path} to {competition}")
