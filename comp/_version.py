"""The installed distribution's version: a leaf module, so any layer may name the version it was made with."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("comp")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
