"""Training and tuning commands: train-folds, tune."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from comp.cli._base import (
    INTS,
    config_option,
    literal_choices,
    load,
    main,
    process_rank,
    quiet_option,
    set_option,
    setup_logging,
)
from comp.config import TuneConfig
from comp.errors import CompError

ray_option = click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster: auto (the running one), host:6379, ray://host:10001; bare: RAY_ADDRESS or a "
    "fresh cluster on this box.",
)
ray_cpus_option = click.option(
    "--ray-cpus",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="CPUs (torch threads) per Ray task [default: the cluster's CPUs per GPU, or shared among the tasks].",
)


@main.command("train-folds")
@config_option
@set_option
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/<config stem>]."
)
@click.option("--folds", "folds", type=INTS, metavar="0,2", help="Train only these folds (spread folds over machines).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last finished epoch.")
@click.option(
    "--exist-ok",
    "exist_ok",
    type=click.Choice(["resume", "overwrite", "error"]),
    default="resume",
    help="An existing run folder: continue it (a changed config is refused), start it again (deletes only "
    "comp's files there), or refuse it.",
)
@click.option(
    "--devices",
    default=None,
    metavar="0,1|all|cpu,cpu",
    help="One worker process per device, each training the next unfinished fold.",
)
@click.option(
    "--ddp",
    type=int,
    default=None,
    metavar="N",
    help="Train each fold with DistributedDataParallel over N processes (launches torchrun).",
)
@click.option(
    "--track",
    "tracks",
    multiple=True,
    metavar="KIND=TARGET",
    help="Log to a tracker: tensorboard=DIR, mlflow=URI or wandb=PROJECT (repeatable; config key track.*).",
)
@ray_option
@ray_cpus_option
@quiet_option
def train_folds_cmd(
    config_path, overrides, run_dir, folds, resume, exist_ok, devices, ddp, tracks, ray_address, ray_cpus, quiet
):
    """Stratified-group k-fold training of every model in the config; writes checkpoints, OOF and metrics.

    Example: comp train-folds --config configs/demo.yaml --set train.epochs=2 --folds 0,1 --run-dir runs/demo-2ep --devices cpu,cpu
    """
    from comp.training import train_folds

    rank = process_rank()
    setup_logging(quiet or rank != 0)
    overrides = (*overrides, *track_overrides(tracks))
    cfg = load(config_path, overrides)  # checked here once, before torchrun starts N copies
    run_dir = run_dir or Path("runs") / config_path.stem
    _check_config_not_replaced(config_path, run_dir)
    if ddp is not None:
        from comp.training import launch_ddp

        if devices is not None or ray_address is not None:
            raise CompError(
                f"--ddp and {'--devices' if devices is not None else '--ray'} are two ways to use several devices; "
                "pass one of them"
            )
        _check_ddp_gpus(cfg.device, ddp)
        argv = ["train-folds", "--config", str(config_path), "--run-dir", str(run_dir)]
        argv += [a for o in overrides for a in ("--set", o)]
        argv += ["--folds", ",".join(map(str, folds))] if folds is not None else []
        argv += ["--resume"] * resume + ["--quiet"] * quiet + ["--exist-ok", exist_ok]
        sys.exit(launch_ddp(ddp, argv))
    if ray_cpus is not None and ray_address is None:
        raise CompError("--ray-cpus sizes the tasks of --ray; pass --ray too, or leave --ray-cpus out")
    result = train_folds(
        cfg,
        run_dir,
        folds=folds,
        resume=resume,
        exist_ok=exist_ok,
        progress=not quiet,
        devices=devices,
        ray=ray_address,
        ray_cpus=ray_cpus,
    )
    if rank == 0:
        click.echo(result.text())
        click.echo(f"run folder: {run_dir}")


def _check_config_not_replaced(config_path: Path, run_dir: Path) -> None:
    """A run saves its resolved config as RUN/config.yaml: refuse when that is the user's own --config file in a
    folder that is not a run yet (continuing a run from its saved config.yaml is fine)."""
    from comp.run import same_file

    saved = run_dir / "config.yaml"
    started = (run_dir / "folds.csv").exists() or (run_dir / "models").exists()
    if saved.exists() and same_file(config_path, saved) and not started:
        raise CompError(
            f"--run-dir {run_dir} would replace the --config file {config_path} with the resolved config "
            "(comments and relative paths lost); pass another --run-dir"
        )


def track_overrides(tracks: tuple[str, ...]) -> list[str]:
    """``--track tensorboard=DIR`` -> ``track.tensorboard=DIR``."""
    out = []
    for item in tracks:
        kind, sep, target = item.partition("=")
        if not sep or kind not in ("tensorboard", "mlflow", "wandb") or not target:
            raise click.BadParameter(
                f"expects tensorboard=DIR, mlflow=URI or wandb=PROJECT, got {item!r}", param_hint="--track"
            )
        out.append(f"track.{kind}={target}")
    return out


def _check_ddp_gpus(device: str, nproc: int) -> None:
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device != "cpu" and (n_gpu or device.startswith("cuda")) and nproc > n_gpu:
        raise CompError(
            f"--ddp {nproc}: only {n_gpu} CUDA devices are visible, one per process is needed; "
            f"use --ddp {max(n_gpu, 2)} or --set device=cpu"
        )


@main.command("tune")
@config_option
@set_option
@click.option("--n-trials", type=int, help="Total trials the study should hold [default: tune.n_trials or 20].")
@click.option("--timeout", type=float, help="Stop starting new trials after this many seconds.")
@click.option(
    "--storage", metavar="URL", help="sqlite:///x.db, postgresql://..., or journal:PATH [default: OUT/study.db]."
)
@click.option("--study-name", default=None, help="Study name inside the storage [default: comp].")
@click.option("--folds", "folds", type=INTS, metavar="0,1", help="Tune on these folds only (cheaper).")
@click.option("--epochs", type=int, help="Epochs per trial (overrides train.epochs and every model's epochs).")
@click.option(
    "--pruner",
    type=click.Choice(literal_choices(TuneConfig, "pruner")),
    default=None,
    help="[default: tune.pruner or median]",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Tuning folder [default: runs/tune-<config stem>].",
)
@click.option("--keep-trials", is_flag=True, help="Keep every trial's checkpoints (large).")
@click.option("--devices", default=None, metavar="0,1|all|cpu,cpu", help="One tuning worker per device on the study.")
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1),
    default=60,
    metavar="SECONDS",
    help="Workers beat this often; a trial whose worker is silent for twice that is failed and run again.",
)
@ray_option
@ray_cpus_option
@quiet_option
def tune_cmd(
    config_path,
    overrides,
    n_trials,
    timeout,
    storage,
    study_name,
    folds,
    epochs,
    pruner,
    out_dir,
    keep_trials,
    devices,
    heartbeat,
    ray_address,
    ray_cpus,
    quiet,
):
    """Optuna search over the config's tune.space with fold-aware pruning; resumable and shareable studies.

    Example: comp tune --config configs/demo.yaml --n-trials 3 --folds 0 --epochs 1
    """
    from comp.tuning import tune

    setup_logging(quiet)
    cfg = load(config_path, overrides)
    out_dir = out_dir or Path("runs") / f"tune-{config_path.stem}"
    result = tune(
        cfg,
        out_dir,
        n_trials=n_trials,
        timeout=timeout,
        storage=storage,
        study_name=study_name,
        folds=folds,
        epochs=epochs,
        pruner=pruner,
        keep_trials=keep_trials,
        devices=devices,
        heartbeat=heartbeat,
        ray=ray_address,
        ray_cpus=ray_cpus,
    )
    click.echo(result.text())
    click.echo("trials: " + ", ".join(f"{k.lower()} {v}" for k, v in result.states.items()))
    if result.best_config:
        click.echo(f"best {cfg.metric}: {result.best_value:.4f}  best config: {result.best_config}")
    for p in result.plots:
        click.echo(f"plot: {p}")
    click.echo(f"trials table: {out_dir / 'trials.csv'}")


@main.command("weights")
@config_option
@set_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("weights"),
    help="Folder to fill.",
)
def weights_cmd(config_path, overrides, out_dir):
    """Download the pretrained weights of the config's models (pretrained: true) into hub-layout folders, ready to
    upload as a dataset for notebooks without internet; then point models[].pretrained at OUT/<model name>.

    Example: comp weights --config configs/exp.yaml --out weights
    """
    from comp.training import fetch_weights

    setup_logging(False)
    cfg = load(config_path, overrides)
    names = [m.name for m in cfg.models if m.pretrained is True]
    if not names:
        raise CompError(f"no model of {config_path} has pretrained: true; nothing to download")
    for folder in fetch_weights(names, out_dir):
        click.echo(f"{folder}  (models[].pretrained: {folder})")
