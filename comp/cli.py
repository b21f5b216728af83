"""The click group: each command parses options, calls one library function, prints where output went.

User errors (``CompError``, bad options) exit 2 with one line and no traceback; bugs keep theirs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from comp.errors import CompError


class CompGroup(click.Group):
    """A group that turns ``CompError`` into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=CompGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="comp")
def main():
    """comp: group k-fold training, tuning, TTA/ONNX inference and honest ensembles for image competitions."""


def parse_folds(text: str | None) -> list[int] | None:
    """'0,2' -> [0, 2]; None stays None."""
    if text is None or text == "":
        return None
    try:
        return sorted({int(x) for x in text.split(",") if x.strip() != ""})
    except ValueError:
        raise CompError(f"--folds expects comma-separated fold numbers such as 0,2, got {text!r}") from None


config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
                             help="YAML experiment file.")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set train.epochs=3 (repeatable).")


if __name__ == "__main__":
    main()
