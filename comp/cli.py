"""The click group: each command parses options, calls one library function, prints where output went.

User errors (``CompError``, bad options) exit 2 with one line and no traceback; bugs keep theirs.
Logging goes to stderr (``--quiet`` keeps warnings only); results go to stdout.
"""

from __future__ import annotations

import errno
import logging
import sys
from pathlib import Path
from typing import Any

import click

from comp.errors import CompError

_ERRNO_WHY = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "name too long",
    errno.EDQUOT: "disk quota exceeded",
}


def user_error(exc: BaseException) -> str | None:
    """The one-line message for a failure the user's input or machine caused, or None for a bug.

    Only failures of the environment the user controls are translated: comp's own CompError, and OS errors
    about a path (permissions, a read-only or full disk, a missing folder). Anything else keeps its traceback.
    """
    if isinstance(exc, CompError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in _ERRNO_WHY and exc.filename is not None:
        return f"cannot use {exc.filename} ({_ERRNO_WHY[exc.errno]}); check the path and its permissions"
    if isinstance(exc, MemoryError):
        return "out of memory; lower train.batch_size / predict.batch_size or the image size"
    return None


class CompGroup(click.Group):
    """A group that turns user errors into one line on stderr and exit code 2; bugs keep their traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a bad option: one line too, naming the command and the option
            where = exc.ctx.command_path if exc.ctx is not None else "comp"
            click.echo(f"error: {where}: {' '.join(exc.format_message().split())} (see {where} --help)", err=True)
            sys.exit(2)
        except (CompError, OSError, MemoryError) as exc:
            msg = user_error(exc)
            if msg is None:
                raise
            rank = _rank()
            click.echo(f"error{f' (rank {rank})' if rank else ''}: {' '.join(msg.split())}", err=True)
            # a CompError carries its exit code: 2 for bad input, 1 for a worker that died (WorkerError)
            sys.exit(exc.exit_code if isinstance(exc, CompError) else 2)


class CommaList(click.ParamType):
    """A comma-separated option value (``0,2`` or ``hflip,vflip``) -> a list of ``item`` values."""

    name = "list"

    def __init__(self, item: type = str, *, choices: list[str] | None = None, allow_all: bool = False):
        self.item, self.choices, self.allow_all = item, choices, allow_all

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        text = str(value).strip()
        if self.allow_all and text == "all":
            return "all"
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            items = [self.item(p) for p in parts]
        except ValueError:
            self.fail(
                f"expects comma-separated {self.item.__name__} values such as "
                f"{'0,2' if self.item is int else 'a,b'}, got {value!r}",
                param,
                ctx,
            )
        if self.choices is not None:
            from comp.errors import closest

            for it in items:
                if it not in self.choices:
                    self.fail(
                        f"{it!r} is not one of {', '.join(self.choices)}{closest(str(it), self.choices)}", param, ctx
                    )
        if len(set(items)) != len(items):
            self.fail(f"lists a value twice: {value!r}", param, ctx)
        return items


INTS = CommaList(int)


def _setup_logging(quiet: bool) -> None:
    """comp's log lines on stderr as plain text: INFO by default, WARNING with --quiet."""
    logger = logging.getLogger("comp")
    for h in list(logger.handlers):
        if getattr(h, "_comp_cli", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._comp_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logging.captureWarnings(True)  # library warnings (thin classes, ...) as one plain line
    warn_logger = logging.getLogger("py.warnings")
    warn_logger.handlers = [handler]
    warn_logger.propagate = False


@click.group(cls=CompGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="comp")
def main() -> None:
    """comp: group k-fold training, tuning, TTA/ONNX inference and honest ensembles for image competitions."""


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="YAML experiment file.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.epochs=3 (repeatable).",
)
quiet_option = click.option(
    "--quiet", is_flag=True, help="No progress and no per-epoch lines; warnings and results only."
)


def _load(config_path: Path, overrides: tuple[str, ...]):
    from comp.config import load_config

    return load_config(config_path, overrides=overrides)


@main.command("train-folds")
@config_option
@set_option
@click.option(
    "--run-dir", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/<config stem>]."
)
@click.option("--folds", "folds", type=INTS, metavar="0,2", help="Train only these folds (spread folds over machines).")
@click.option("--resume", is_flag=True, help="Continue a killed run from its last finished epoch.")
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
@quiet_option
def train_folds_cmd(config_path, overrides, run_dir, folds, resume, devices, ddp, quiet):
    """Stratified-group k-fold training of every model in the config; writes checkpoints, OOF and metrics.

    Example: comp train-folds --config configs/demo.yaml --set train.epochs=3 --run-dir runs/demo-3ep --devices cpu,cpu
    """
    from comp.training import train_folds

    rank = _rank()
    _setup_logging(quiet or rank != 0)
    cfg = _load(config_path, overrides)  # checked here once, before torchrun starts N copies
    run_dir = run_dir or Path("runs") / config_path.stem
    if ddp is not None:
        from comp.training import launch_ddp

        if devices is not None:
            raise CompError("--ddp and --devices are two ways to use several devices; pass one of them")
        _check_ddp_gpus(cfg.device, ddp)
        argv = ["train-folds", "--config", str(config_path), "--run-dir", str(run_dir)]
        argv += [a for o in overrides for a in ("--set", o)]
        argv += ["--folds", ",".join(map(str, folds))] if folds is not None else []
        argv += ["--resume"] * resume + ["--quiet"] * quiet
        sys.exit(launch_ddp(ddp, argv))
    result = train_folds(cfg, run_dir, folds=folds, resume=resume, progress=not quiet, devices=devices)
    if rank == 0:
        click.echo(result.table())
        click.echo(f"run folder: {run_dir}")


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    import os

    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _check_ddp_gpus(device: str, nproc: int) -> None:
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device != "cpu" and (n_gpu or device.startswith("cuda")) and nproc > n_gpu:
        raise CompError(
            f"--ddp {nproc}: only {n_gpu} CUDA devices are visible, one per process is needed; "
            f"use --ddp {max(n_gpu, 2)} or --set device=cpu"
        )


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

    _setup_logging(quiet)
    for line in run_demo(out_dir, run_dir, overrides, fresh=fresh):
        click.echo(line)


@main.command()
@click.argument("model_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--method",
    default="hill_climb",
    type=CommaList(allow_all=True),
    metavar="NAME[,NAME...]|all",
    help="Blend method(s): mean, weighted, rank, geometric, hill_climb, stacking; several (or all) "
    "are compared and the submission comes from the best honest CV.",
)
@click.option("--bias/--no-bias", default=False, help="Fit per-class log-probability offsets on OOF (argmax metrics).")
@click.option("--metric", default=None, help="Metric to fit and report; default: the first member run's config metric.")
@click.option("--name", default=None, help="Name of the blend's run and model folder; default blend-<method>[-bias].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Submission CSV; default submissions/<name>.csv when test predictions exist.",
)
@click.option("--tta", is_flag=True, help="Use oof_tta.csv where a member has one.")
def ensemble(model_dirs, method, bias, metric, name, out, tta):
    """Blend model folders (RUN/models/<id>) and score the blend with nested CV over their folds.

    Example: comp ensemble runs/demo/models/byobnet runs/demo/models/effnet --method hill_climb --bias
    """
    from comp.ensembling import compare_blends, run_ensemble

    _setup_logging(False)
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
        )
        result = compared.best
        click.echo(compared.table())
        click.echo(f"best honest CV: {result.method} (best of {len(compared.results)} methods, so slightly optimistic)")
    else:
        result = run_ensemble(
            list(model_dirs), method=methods[0], metric=metric, bias=bias, name=name, out=out, tta=tta
        )
    click.echo(
        f"metric: {result.metric} ({result.direction}); cv = nested CV, cv_in_sample = fitted and scored on all OOF"
    )
    click.echo(result.table())
    if result.bias:
        click.echo("class bias: " + ", ".join(f"{c}={v:+.2f}" for c, v in result.bias.items()))
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
    help="CSV to write (id, label, or one probability column per class with --soft); use it as data.extra_train.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Keep test rows whose top probability is at least this [default: 0.9 unless --top-per-class].",
)
@click.option("--top-per-class", type=int, default=None, help="Instead: the K most confident rows of every class.")
@click.option(
    "--max-per-class",
    type=int,
    default=None,
    help="With --threshold: at most this many rows per class (the most confident), so common classes cannot drown rare ones.",
)
@click.option("--soft", is_flag=True, help="Write the probabilities instead of the predicted label.")
def pseudo_cmd(source, out, threshold, top_per_class, max_per_class, soft):
    """Pseudo-label confident test rows of a run, model or blend folder (from its test.csv).

    Example: comp pseudo runs/demo-blend --out pseudo/round1.csv --threshold 0.9 --max-per-class 400
    """
    from comp.pseudo import pseudo_label

    _setup_logging(False)
    result = pseudo_label(
        source, out=out, threshold=threshold, top_per_class=top_per_class, max_per_class=max_per_class, soft=soft
    )
    click.echo(result.table())
    click.echo(
        f"{result.rows} of {result.test_rows} test rows from {result.source / 'test.csv'} "
        f"({'soft' if result.soft else 'hard'} labels)"
    )
    click.echo(f"pseudo-labels: {result.path}  (train on them with --set data.extra_train={result.path})")


run_arg = click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
model_option = click.option(
    "--model", "model_ids", multiple=True, metavar="ID", help="Only this model id (repeatable) [default: all]."
)


@main.command("export")
@run_arg
@model_option
@click.option("--fp16", is_flag=True, help="Convert the graphs to float16 (inputs and outputs stay float32).")
@click.option("--fuse", is_flag=True, help="Also write fused.onnx: all folds (and --tta views) averaged in one graph.")
@click.option("--opset", default=17, type=int, help="ONNX opset version.")
@click.option(
    "--tta", default=None, type=CommaList(), metavar="hflip,...", help="TTA views inside fused.onnx (only with --fuse)."
)
@click.option(
    "--tta-merge", default="mean", type=click.Choice(["mean", "geometric"]), help="How fused.onnx merges views."
)
@quiet_option
def export_cmd(run_dir, model_ids, fp16, fuse, opset, tta, tta_merge, quiet):
    """Export every fold checkpoint to ONNX (probabilities out), checked against PyTorch before it is kept.

    Example: comp export runs/demo --fuse --tta hflip
    """
    from comp.inference import export_run

    _setup_logging(quiet)
    reports = export_run(
        run_dir, models=list(model_ids) or None, fp16=fp16, fuse=fuse, opset=opset, tta=tta or [], tta_merge=tta_merge
    )
    for mid in reports:
        click.echo(f"export report: {Path(run_dir) / 'models' / mid / 'export.json'}")


@main.command("predict")
@run_arg
@model_option
@click.option("--engine", type=click.Choice(["onnx", "torch"]), default=None, help="[default: config predict.engine]")
@click.option(
    "--tta", default=None, type=CommaList(), metavar="hflip,vflip", help="TTA views [default: config predict.tta]."
)
@click.option(
    "--tta-merge", type=click.Choice(["mean", "geometric"]), default=None, help="[default: config predict.tta_merge]"
)
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
    type=click.Choice(["none", "default", "reduce-overhead", "max-autotune"]),
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

    _setup_logging(quiet)
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
    click.echo(result.table())
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
    type=click.Choice(["mean", "geometric"]),
    default=None,
    help="[default: each run's config predict.tta_merge]",
)
@click.option("--fp16", is_flag=True, help="Convert the graphs to float16 (inputs and outputs stay float32).")
@click.option("--opset", default=17, type=int, help="ONNX opset version.")
@quiet_option
def bundle_cmd(source, out, model_ids, tta, tta_merge, fp16, opset, quiet):
    """Write an offline inference bundle of a run, model or blend: fused ONNX graphs, manifest.json, predict.py.

    predict.py needs only onnxruntime, numpy and Pillow (a Kaggle notebook without internet).

    Example: comp bundle runs/demo-blend --out bundle
    """
    from comp.inference import bundle_run

    _setup_logging(quiet)
    result = bundle_run(
        source, out=out, models=list(model_ids) or None, tta=tta, tta_merge=tta_merge, fp16=fp16, opset=opset
    )
    click.echo(result.table())
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
def submit_cmd(file, competition, message, sample, run_dir):
    """Validate a submission against the sample, then upload it with the kaggle package.

    Example: comp submit submissions/demo.csv --competition digit-recognizer --message "5 folds, hflip" --run runs/demo
    """
    from comp.submission import submit

    path = submit(file, competition, message, sample, run_dir)
    click.echo(f"submitted {path} to {competition}")


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
    type=click.Choice(["median", "hyperband", "wilcoxon", "none"]),
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
    quiet,
):
    """Optuna search over the config's tune.space with fold-aware pruning; resumable and shareable studies.

    Example: comp tune --config configs/demo.yaml --n-trials 4 --folds 0,1 --epochs 2
    """
    from comp.tuning import tune

    _setup_logging(quiet)
    cfg = _load(config_path, overrides)
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
    )
    click.echo(result.table())
    click.echo("trials: " + ", ".join(f"{k.lower()} {v}" for k, v in result.states.items()))
    if result.best_config:
        click.echo(f"best {cfg.metric}: {result.best_value:.4f}  best config: {result.best_config}")
    for p in result.plots:
        click.echo(f"plot: {p}")
    click.echo(f"trials table: {out_dir / 'trials.csv'}")


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

    _setup_logging(False)
    cfg = _load(config_path, overrides)
    result = bench_data(cfg, workers=workers, batch_sizes=batch_sizes, batches=batches, caches=caches)
    click.echo(f"model {result.model_name} on {result.device}; data images/s timed on the second pass")
    click.echo(result.table())
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
def eda_cmd(config_path, overrides, out_dir, threshold):
    """Class/group balance, image sizes, channels, colour, unreadable files and duplicate/leak check as HTML.

    Example: comp eda --config configs/demo.yaml --out runs/eda-demo
    """
    from comp.diagnostics import run_eda

    _setup_logging(False)
    cfg = _load(config_path, overrides)
    out_dir = out_dir or Path("runs") / f"eda-{config_path.stem}"
    result = run_eda(cfg, out_dir, threshold)
    click.echo(result.table())
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

    _setup_logging(False)
    result = explain_run(run_dir, model_id, top, gradcam_ids, out_dir)
    click.echo(f"model {result.model_id}" + ("" if model_id else " (best CV; choose another with --model)"))
    click.echo(result.table())
    click.echo(f"{result.mistakes} OOF mistakes; likeliest label errors in {result.out / 'mislabeled.csv'}")
    click.echo(f"report folder: {result.out}")


if __name__ == "__main__":
    main()
