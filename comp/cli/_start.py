"""Starting a competition: init."""

from __future__ import annotations

from pathlib import Path

import click

from comp.cli._base import main, set_option, setup_logging


@main.command("init")
@click.argument("comp_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("configs/exp.yaml"),
    help="Config file to write.",
)
@click.option("--budget", default="2h", metavar="2h|90m|1h30m", help="Wall time the whole run may take.")
@click.option("--device", default="auto", metavar="auto|cpu|cuda|cuda:N", help="Where the run will train.")
@click.option(
    "--models", default=None, metavar="NAME,NAME", help="Backbones (timm names) instead of the budget's choice."
)
@set_option
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
def init_cmd(comp_dir, out, budget, device, models, overrides, force):
    """Read a competition folder and write a commented config that comp train-folds accepts as written.

    Each guess (table, columns, task, groups, test images, sample format) is printed with its evidence and the
    --set that overrides it; backbones, image size, batch size, epochs and folds are sized to --budget by a
    timing probe on the real images.

    Example: comp init demo_data --out configs/init.yaml --budget 30m
    """
    from comp.init import init_config

    setup_logging(False)
    names = [n.strip() for n in models.split(",") if n.strip()] if models else None
    result = init_config(
        comp_dir, out=out, budget=budget, device=device, overrides=overrides, models=names, force=force
    )
    click.echo(result.text())
    for line in result.warnings:
        click.echo(f"warning: {line}")
    for line in result.recipe():
        click.echo(line)
    click.echo(f"config: {result.out}")
    click.echo(f"next: comp train-folds --config {result.out}")
