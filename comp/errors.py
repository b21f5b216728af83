"""User-facing errors: one line that names the file, row or key and the fix; the CLI exits 2 on them.

Anything else that escapes a command is a bug in comp and keeps its traceback.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from contextvars import ContextVar

# Whether the command line is running: messages then name its flags (--resume), else the Python arguments
# (resume=True). The CLI's group sets it for the length of one command.
CLI_NAMES: ContextVar[bool] = ContextVar("comp_cli_names", default=False)


def arg(python: str, cli: str) -> str:
    """How a message names an option: ``cli`` (``--exist-ok overwrite``) under the command line, else ``python``
    (``exist_ok="overwrite"``), so the fix a message gives is spelt as the caller wrote the call."""
    return cli if CLI_NAMES.get() else python


class CompError(Exception):
    """A mistake in the user's input (config, CSV, images, run folder) rather than a bug in comp."""

    exit_code = 2

    def _render_traceback_(self) -> list[str]:
        """IPython shows a CompError as its one line (the fix is in it); ``%tb`` still prints the traceback."""
        return [f"{type(self).__name__}: {self}"]


def full_traceback() -> None:
    """Print the last exception's whole traceback (IPython's one-line CompError view hides it)."""
    import traceback

    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if exc is not None:
        traceback.print_exception(exc)


class ConfigError(CompError):
    """A config key, type, value or search space that cannot work."""


class DataError(CompError):
    """A training/test table, image or sample submission that cannot be read as the config says."""


class RunFolderError(CompError):
    """A run folder or artifact that is missing, incomplete, from another run, or not comp's."""


def closest(name: str, choices: Iterable[str], n: int = 1) -> str:
    """Return a ' (did you mean ...?)' hint for ``name`` among ``choices``, or '' when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    if not matches:
        return ""
    return " (did you mean " + ", ".join(repr(m) for m in matches) + "?)"
