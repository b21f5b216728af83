"""User-facing errors: one line, names the file/row/key and the fix; the CLI turns them into exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompError(Exception):
    """A mistake in the user's input (config, CSV, images, run folder) rather than a bug in comp."""


def closest(name: str, choices: Iterable[str], n: int = 1) -> str:
    """Return a ' (did you mean ...?)' hint for ``name`` among ``choices``, or '' when nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    if not matches:
        return ""
    return " (did you mean " + ", ".join(repr(m) for m in matches) + "?)"
