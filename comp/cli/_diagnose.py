"""Looking before and after: eda, bench-data, explain, and the demo that runs the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from comp.cli._base import INTS, CommaList, config_option, load, main, quiet_option, set_option, setup_logging


@main.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo_data"),
    help="Where to build the demo competition folder.",
)
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of configs/demo.yaml.")
@click.option("--fresh", is_flag=True, help="Delete an earlier demo run folder first (only a demo run folder).")
@quiet_option
def demo_cmd(out_dir, run_dir, overrides, fresh, quiet):
    """Build a small real competition from scikit-learn's digits and run the whole pipeline on it.

    Example: comp demo
    """
    from comp.demo import run_demo

    setup_logging(quiet)
    for line in run_demo(out_dir, run_dir, overrides, fresh=fresh):
        click.echo(line)


@main.command("bench-data")
@config_option
@set_option
@click.option("--workers", default="0,2", type=INTS, help="DataLoader worker counts to try (comma-separated).")
@click.option("--batch-sizes", default="32", type=INTS, help="Batch sizes to try (comma-separated).")
@click.option("--batches", default=5, type=int, help="Batches per timed pass.")
@click.option(
    "--cache",
    "caches",
    default="none,disk,memory",
    type=CommaList(choices=["none", "disk", "memory"]),
    help="Cache modes to try: none, disk, memory.",
)
def bench_data_cmd(config_path, overrides, workers, batch_sizes, batches, caches):
    """Images/s of the input pipeline per cache/workers/batch size against the model's own training speed.

    Example: comp bench-data --config configs/demo.yaml --workers 0,2 --batch-sizes 32,64
    """
    from comp.diagnostics import bench_data

    setup_logging(False)
    cfg = load(config_path, overrides)
    result = bench_data(cfg, workers=workers, batch_sizes=batch_sizes, batches=batches, caches=caches)
    click.echo(f"model {result.model_name} on {result.device}; data images/s timed on the second pass")
    click.echo(result.text())
    for line in result.verdict:
        click.echo(line)


@main.command("eda")
@config_option
@set_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder [default: runs/eda-<config stem>].",
)
@click.option("--threshold", default=5, type=int, help="Near-duplicate dHash Hamming distance (of 64 bits).")
@quiet_option
def eda_cmd(config_path, overrides, out_dir, threshold, quiet):
    """Class/group balance, image sizes, channels, colour, unreadable files and duplicate/leak check as HTML.

    Example: comp eda --config configs/demo.yaml --out runs/eda-demo
    """
    from comp.diagnostics import run_eda

    setup_logging(quiet)
    cfg = load(config_path, overrides)
    out_dir = out_dir or Path("runs") / f"eda-{config_path.stem}"
    result = run_eda(cfg, out_dir, threshold, progress=not quiet)
    click.echo(result.text())
    click.echo(f"report: {result.html}")


@main.command("explain")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_id", default=None, help="Model id in the run [default: the one with the best CV].")
@click.option("--top", default=12, type=int, help="How many confident mistakes to show (and Grad-CAM by default).")
@click.option(
    "--gradcam-ids",
    default=None,
    type=CommaList(),
    metavar="a,b",
    help="Grad-CAM these ids instead of the worst mistakes.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder [default: RUN/models/<id>/explain].",
)
def explain_cmd(run_dir, model_id, top, gradcam_ids, out_dir):
    """Confusion matrix, per-class P/R/F1, confident mistakes, likely mislabels and Grad-CAM from OOF predictions.

    Example: comp explain runs/demo --model effnet --top 8
    """
    from comp.diagnostics import explain_run

    setup_logging(False)
    result = explain_run(run_dir, model_id, top, gradcam_ids, out_dir)
    click.echo(f"model {result.model_id}" + ("" if model_id else " (best CV; choose another with --model)"))
    click.echo(result.text())
    click.echo(f"{result.mistakes} OOF mistakes; likeliest label errors in {result.out / 'mislabeled.csv'}")
    click.echo(f"report folder: {result.out}")
