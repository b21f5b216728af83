"""What every command shares: the group with its error boundary, logging, option types and common options.

User errors (``CompError``, bad options) exit with one line and no traceback (code 2, or the error's own
``exit_code``); bugs keep theirs. Choices come from the config's ``Literal`` fields, so ``comp --help`` reads
them without importing torch or the registries that live beside it.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import click

from comp.errors import CLI_NAMES, CompError, closest

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
            rank = process_rank()
            click.echo(f"error{f' (rank {rank})' if rank else ''}: {' '.join(msg.split())}", err=True)
            # a CompError carries its exit code: 2 for bad input, 1 for a worker that died (WorkerError)
            sys.exit(exc.exit_code if isinstance(exc, CompError) else 2)


class CommaList(click.ParamType):
    """A comma-separated option value (``0,2`` or ``hflip,vflip``) -> a list of ``item`` values."""

    name = "list"

    def __init__(
        self, item: type = str, *, choices: list[str] | None = None, allow_all: bool = False, nonempty: bool = False
    ):
        self.item, self.choices, self.allow_all, self.nonempty = item, choices, allow_all, nonempty

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        text = str(value).strip()
        if self.allow_all and text == "all":
            return "all"
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if self.nonempty and not parts:  # `--folds ''` would otherwise train nothing and exit 0
            self.fail(
                f"needs at least one value, such as {'0,2' if self.item is int else 'a,b'}, got {value!r}", param, ctx
            )
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
            for it in items:
                if it not in self.choices:
                    self.fail(
                        f"{it!r} is not one of {', '.join(self.choices)}{closest(str(it), self.choices)}", param, ctx
                    )
        if len(set(items)) != len(items):
            self.fail(f"lists a value twice: {value!r}", param, ctx)
        return items


INTS = CommaList(int, nonempty=True)  # folds, worker counts, batch sizes: an empty list means nothing to do


def setup_logging(quiet: bool) -> None:
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
@click.pass_context
def main(ctx: click.Context) -> None:
    """comp: group k-fold training, tuning, TTA/ONNX inference and honest ensembles for image competitions."""
    token = CLI_NAMES.set(True)  # messages name --flags while a command runs, Python arguments otherwise
    ctx.call_on_close(lambda: CLI_NAMES.reset(token))


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


def load(config_path: Path, overrides: tuple[str, ...]):
    from comp.config import load_config
    from comp.inference._tta import check_config as check_tta
    from comp.metrics import check_config as check_metric
    from comp.training._losses import check_config as check_losses

    cfg = load_config(config_path, overrides=overrides)
    for check in (check_metric, check_losses, check_tta):  # every registry name, before a command starts
        check(cfg)
    return cfg


def process_rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


run_arg = click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
model_option = click.option(
    "--model", "model_ids", multiple=True, metavar="ID", help="Only this model id (repeatable) [default: all]."
)


def literal_choices(record: type, name: str) -> list[str]:
    """The values of a config record field's ``Literal`` (``X | None`` unwrapped), for a click.Choice."""
    hint = typing.get_type_hints(record)[name]
    literal = next(a for a in (hint, *typing.get_args(hint)) if typing.get_origin(a) is Literal)
    return [str(v) for v in typing.get_args(literal)]
