"""What a competition folder holds: its CSV tables and where its images are, indexed for matching ids to files.

One walk of the folder (hidden folders and comp's own outputs skipped); images are listed by name, never opened
here, so a folder of a few hundred thousand images is indexed in seconds.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from comp.config._layout import IMAGE_EXTENSIONS
from comp.errors import CompError

SKIP_DIRS = {"runs", "submissions", "__pycache__", "node_modules", "wandb", "mlruns"}
CSV_ROWS = 200_000  # rows read per table: enough to see every column's kind, bounded on huge tables


@dataclass
class Inventory:
    """Every image (path relative to the root, posix) and every CSV table of a competition folder."""

    root: Path
    images: list[str] = field(default_factory=list)
    csvs: dict[str, pd.DataFrame] = field(default_factory=dict)  # rel path -> table (strings, as written)
    by_dir: dict[str, list[str]] = field(default_factory=dict)  # folder -> image file names directly inside
    by_stem: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # file stem -> image paths
    by_name: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # file name -> image paths

    def dirs_named(self) -> dict[str, list[str]]:
        """Folder name -> folders (relative) with that name that hold images directly."""
        out: dict[str, list[str]] = defaultdict(list)
        for d in self.by_dir:
            out[PurePosixPath(d).name].append(d)
        return out

    def children(self, parent: str) -> list[str]:
        """Folders holding images directly whose parent is ``parent`` ('' for the root)."""
        return sorted(d for d in self.by_dir if d and d.rpartition("/")[0] == parent)

    def under(self, folder: str) -> list[str]:
        """Image paths inside ``folder`` (recursively)."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        return [p for p in self.images if p.startswith(prefix)]

    def extensions(self, paths: list[str]) -> Counter:
        return Counter(PurePosixPath(p).suffix for p in paths)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan_folder(root: str | Path) -> Inventory:
    """Walk ``root``: index its images by folder, stem and name, and read its CSV tables as strings."""
    root = Path(root)
    if not root.is_dir():
        raise CompError(f"competition folder {root} not found; pass the folder holding the competition's files")
    inv = Inventory(root.resolve())
    for here, dirs, files in os.walk(inv.root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        rel = Path(here).relative_to(inv.root).as_posix()
        rel = "" if rel == "." else rel
        names = sorted(f for f in files if _is_image(f))
        if names:
            inv.by_dir[rel] = names
        for name in names:
            path = f"{rel}/{name}" if rel else name
            inv.images.append(path)
            inv.by_stem[os.path.splitext(name)[0]].append(path)
            inv.by_name[name].append(path)
        for name in sorted(files):
            if name.lower().endswith(".csv") and not name.startswith("."):
                path = f"{rel}/{name}" if rel else name
                inv.csvs[path] = _read(inv.root / path)
    if not inv.images:
        raise CompError(
            f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); is it the competition folder?"
        )
    return inv


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, nrows=CSV_ROWS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return pd.DataFrame()  # not a table comp could use: it simply takes no part in the guesses
