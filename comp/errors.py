"""User-facing errors: one line that names the file, row or key and the fix; the CLI exits 2 on them.

Anything else that escapes a command is a bug in comp and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompError(Exception):
    """A mistake in the user's input (config, CSV, images, run folder) rather than a bug in comp."""

    exit_code = 2


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
