"""The click group: each command parses options, calls one library function, prints where output went.

User errors (``CompError``, bad options) exit 2 with one line and no traceback; bugs keep theirs.
Logging goes to stderr (``--quiet`` keeps warnings only); results go to stdout. The group and what commands
share live in ``_base``; the commands, by pipeline stage, in ``_train``, ``_infer``, ``_blend`` and ``_diagnose``.
"""

from comp.cli import _blend, _diagnose, _infer, _ledger, _start, _train  # noqa: F401  (each module adds its commands to main)
from comp.cli._base import main

__all__ = ["main"]
