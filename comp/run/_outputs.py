"""Where a command may write: never onto a file it reads, never into a folder of another kind.

One guard for every path a user points a command's output at (predict's and ensemble's submission, pseudo's
CSV, the bundle folder, eda's and explain's report folders, a blend's run folder) and for the files comp
writes into a run folder. A path is compared after symlinks are resolved (and by inode, so a hard link
counts too): ``--out train.csv`` through a link named ``sub.csv`` is still the training table.

The same module knows what a run folder holds (:func:`strangers`), so a command that replaces or deletes a
run folder (``comp demo --fresh``, ``comp ensemble --name``) touches only what comp wrote there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from comp.errors import CompError

if TYPE_CHECKING:
    from comp.config import DataConfig

Named = tuple[str, "str | Path | None"]  # (what it is, its path): "the training table data.train_csv", path


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same inode (hard links, symlinks) or, for paths that do not exist
    yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def check_output(
    out: str | Path,
    reads: Iterable[Named],
    *,
    option: str = "--out",
    trees: Iterable[Named] = (),
    label: str | None = None,
    fix: str | None = None,
) -> None:
    """Refuse ``out`` when it is one of the files the command reads or writes otherwise (``reads``), or an
    existing file inside a folder whose files it must not replace (``trees``: a run's models/, the images).
    The message names the output as ``label`` (default: the option) and ends in ``fix`` (default: choose another
    ``option``)."""
    out = Path(out)
    name = f"{label or option} {out}"
    fix = fix or f"choose another {option}"
    for what, path in reads:
        if path and same_file(out, path):
            raise CompError(
                f"{name} is {what} ({Path(path).resolve()}), which this command reads or writes; writing "
                f"there would replace it; {fix}"
            )
    if not out.exists():
        return
    for what, folder in trees:
        if folder and Path(folder).is_dir() and _inside(out, Path(folder)):
            raise CompError(
                f"{name} is a file inside {what} ({Path(folder).resolve()}); writing there would replace it; {fix}"
            )


def data_inputs(data: DataConfig) -> list[Named]:
    """The competition files a config reads: the tables, the sample, the pseudo labels, a layout's CSV."""
    found: list[Named] = [
        ("the training table data.train_csv", data.train_csv if data.layout is None else None),
        ("the test table data.test_csv", data.test_csv),
        ("the sample submission data.sample_submission", data.sample_submission),
        ("the pseudo-labelled rows data.extra_train", data.extra_train),
    ]
    layout_csv = (data.layout or {}).get("csv")
    if isinstance(layout_csv, str):
        found.append(("the layout table data.layout.csv", Path(data.root or ".") / layout_csv))
    return found


def image_trees(data: DataConfig) -> list[Named]:
    return [
        ("the training images data.image_dir", data.image_dir),
        ("the test images data.test_image_dir", data.test_image_dir),
    ]


def run_files(root: str | Path) -> list[tuple[str, Path]]:
    """A run folder's own files: its config, folds and sources (its model folders are a tree, see ``run_tree``)."""
    root = Path(root)
    return [(f"the run's {n}", root / n) for n in ("config.yaml", "folds.csv", "sources.json")]


def run_tree(root: str | Path) -> Named:
    return (f"the model folders of run {root}", Path(root) / "models")


# ---------------------------------------------------------------- folders and what they hold

_RUN_ROOT = re.compile(
    r"config\.yaml|folds\.csv|sources\.json|models|cache|\.trt_cache|\.(commit|witness)-.*\.json|\..*\.tmp"
)
_MODEL_FILE = re.compile(
    r"fold\d+\.(pt|state\.pt|lock|oof\.csv|history\.csv|onnx|int8\.onnx)|fused(\.int8)?\.onnx|oof(_tta)?\.csv|test\.csv|metrics\.json"
    r"|export\.json|explain|\.fold\d+\.lock\..*|\.(commit|witness)-.*\.json|\..*\.tmp"
)


def strangers(root: str | Path) -> list[Path]:
    """Entries of a run folder that comp does not write there (a user's notes, a thesis): what a command that
    replaces or deletes the folder must not touch. Sorted; empty for a folder holding only comp's files."""
    root = Path(root)
    out = [p for p in root.iterdir() if not _RUN_ROOT.fullmatch(p.name)]
    models = root / "models"
    if models.is_dir() and not models.is_symlink():
        for d in models.iterdir():
            if not d.is_dir() or d.is_symlink():
                out.append(d)
                continue
            out += [p for p in d.iterdir() if not _MODEL_FILE.fullmatch(p.name)]
    return sorted(out)


def clear_run(root: str | Path) -> list[Path]:
    """Delete what comp wrote in a run folder (config, folds, sources, caches, every model folder's artifacts) and
    keep everything else (a user's notes stay, and so does a model folder holding them). Returns what it deleted.
    A fold lock held by a live process stops it first, before anything is deleted."""
    import shutil

    from comp.run._io import LockHeld, exclusive

    root = Path(root)
    if not root.is_dir():
        return []
    models = root / "models"
    folders = [d for d in models.iterdir() if d.is_dir() and not d.is_symlink()] if models.is_dir() else []
    for d in folders:  # a fold another process is training: its lock is live, so refuse before deleting
        for lock in d.glob("fold*.lock"):
            try:
                with exclusive(lock, f"{d.name} {lock.stem}"):
                    pass
            except LockHeld as exc:
                raise CompError(f"cannot start {root} again: {exc}") from None
    gone: list[Path] = []
    for d in folders:
        for p in d.iterdir():
            if _MODEL_FILE.fullmatch(p.name):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                gone.append(p)
        if not any(d.iterdir()):
            d.rmdir()
    for p in root.iterdir():
        if _RUN_ROOT.fullmatch(p.name) and p.name != "models":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            gone.append(p)
    if models.is_dir() and not any(models.iterdir()):
        models.rmdir()
    return gone


def folder_kind(path: str | Path) -> str | None:
    """What a folder already is, when a report or bundle must not be written into it: "a run folder", "a model
    folder of a run", "a comp bundle"; None for anything else (new, empty, a plain folder)."""
    p = Path(path)
    if not p.is_dir():
        return None
    p = p.resolve()
    if (p / "config.yaml").is_file():
        return "a run folder"
    if p.parent.name == "models" and (p.parent.parent / "config.yaml").is_file():
        return "a model folder of a run"
    try:
        if json.loads((p / "manifest.json").read_text()).get("format", "").startswith("comp.bundle/"):
            return "a comp bundle"
    except (OSError, ValueError, AttributeError):
        pass
    return None


def check_report_folder(
    out: str | Path, *, reads: Iterable[Named] = (), trees: Iterable[Named] = (), option: str = "--out"
) -> None:
    """A report (eda, explain) goes into a folder of its own: never a run, model or bundle folder, never one
    that holds a file the report is made from (``reads``), and never in or around the images (``trees``), whose
    folder layouts would pick its plots up as images. So no report file, whatever its name, replaces an input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CompError(f"{option} {out} is a file; pass a folder for the report")
    kind = folder_kind(out)
    if kind is not None:
        raise CompError(f"{option} {out} is {kind}; the report's files would mix with its artifacts; pass a new folder")
    here = out.resolve()
    for what, path in reads:
        if path and Path(path).resolve().is_relative_to(here):
            raise CompError(
                f"{option} {out} holds {what} ({Path(path).resolve()}); a report file could replace it; pass a "
                "folder of its own"
            )
    for what, folder in trees:
        there = Path(folder).resolve() if folder else None
        if there is not None and (there.is_relative_to(here) or here.is_relative_to(there)):
            where = "is inside" if here.is_relative_to(there) else "holds"
            raise CompError(f"{option} {out} {where} {what} ({there}); pass a folder of its own")
