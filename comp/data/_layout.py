"""Rows of a training table from a data layout: CSV rows, the folders they name, and the images in them.

One mechanism covers the usual shapes. A *folder* is found per CSV row (or, without a CSV, by a glob);
each image file inside it becomes one row. Fields come from the CSV's columns, from a regex over the
folder's name and from a regex over each file's stem.

The spec (``data.layout``, parsed by ``comp/config/_layout.py``) is a plain dict; its paths are relative to
``root``.

Template names: the CSV columns, the regex groups, and the built-ins ``folder`` (the folder's name),
``stem``, ``file`` (name with extension) and ``ext`` (as written, with the dot); a CSV column or regex
group of the same name hides a built-in. A regex group may not share its name with a CSV column: when
two sources disagree (the contest's CSV gender vs its folder name), name them apart and let the label
spec pick its ``source``. Values put into ``folder`` and ``files`` are glob-escaped and may not climb
out with ``..``.

Output: columns ``id``, ``path`` (absolute image path), ``group``, then every CSV column (those named
id, path or group become ``csv_id``, ``csv_path``, ``csv_group``), the folder's fields and the stem's
fields, all strings (an empty CSV cell is NaN, as ``read_csv`` gives it); one row per image, sorted by
id. Hidden files (names starting with '.', e.g. ``._mask1.jpg``) are ignored.

``files_from_ids`` reads a test CSV whose ids name files directly (``abc.jpg`` -> ``<image_dir>/abc.jpg``).
"""

from __future__ import annotations

import glob
import os
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from comp._files import file_problem
from comp._progress import track
from comp.config._layout import IMAGE_EXTENSIONS, OUTPUT_COLUMNS, LayoutSpec, parse_layout
from comp.data._csv import check_ids, read_csv, require_columns
from comp.errors import CompError, closest

__all__ = [
    "IMAGE_EXTENSIONS",
    "LayoutSpec",
    "files_from_ids",
    "parse_layout",
    "read_layout",
]  # the spec's names re-exported


@dataclass(frozen=True)
class _Folder:
    """One folder to list: its path, the values of its CSV row, and where it came from (for errors)."""

    path: Path
    values: dict[str, Any]
    where: str


def read_layout(
    spec: Mapping[str, Any] | LayoutSpec, *, root: str | Path = ".", key: str = "data.layout"
) -> pd.DataFrame:
    """One row per image of the layout: id, path, group and every field, sorted by id."""
    lay = spec if isinstance(spec, LayoutSpec) else parse_layout(spec, root=root, key=key)
    base = Path(root).resolve()
    folders = _csv_folders(lay, base) if lay.csv is not None else _glob_folders(lay, base)
    rows = [row for folder in track(folders, "reading the layout") for row in _folder_rows(lay, folder, base)]
    if not rows:
        raise CompError(f"config key '{lay.key}' found no images; check folder, files and fields there")
    df = pd.DataFrame(rows)
    _check_unique(df, lay)
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def files_from_ids(
    csv: str | Path,
    *,
    id_column: str,
    image_dir: str | Path,
    image_ext: str | None = None,
    root: str | Path = ".",
    check: bool = True,
) -> pd.DataFrame:
    """Test rows whose ids name their files: id kept as written, path absolute, then the other CSV columns.

    An id that already ends in an image extension is the file name; otherwise ``image_ext`` is appended,
    or, without it, the one image named ``<id>.<ext>`` is found.
    """
    csv_path = Path(root) / csv
    df = read_csv(csv_path, "test CSV")
    require_columns(df, [id_column], csv_path, "the id column")
    check_ids(df, id_column, csv_path)
    if image_ext and not image_ext.startswith("."):
        raise CompError(f"image extension {image_ext!r} must start with a dot, e.g. '.{image_ext}'")
    folder = (Path(root) / image_dir).resolve()
    if check and not folder.is_dir():
        raise CompError(f"image folder {folder} not found; set the test image folder in the config")
    paths = []
    for line, ident in enumerate(df[id_column], start=2):
        where = f"{csv_path} line {line}"
        if Path(ident).suffix.lower() in IMAGE_EXTENSIONS:
            rel = ident
        elif image_ext:
            rel = ident + image_ext
        else:
            rel = _find_by_stem(folder, ident, where) if check else ident
        path = inside(folder, rel)
        if path is None:
            raise CompError(
                f"{where}: id {ident!r} names a file outside the image folder {folder}; use names inside it"
            )
        problem = file_problem(path) if check else None
        if problem:
            fix = (
                "check the test image folder and extension"
                if problem == "not found"
                else "replace it with the image file or remove its row"
            )
            raise CompError(f"{where}: image {path} for id {ident!r} {problem}; {fix}")
        paths.append(str(path))
    rest = df.drop(columns=[id_column]).rename(columns={c: f"csv_{c}" for c in OUTPUT_COLUMNS if c != id_column})
    out = pd.DataFrame({"id": df[id_column].to_numpy(), "path": paths})
    return pd.concat([out, rest.reset_index(drop=True)], axis=1)


def inside(folder: Path, rel: str) -> Path | None:
    """``folder / rel`` with '.' and '..' folded away, or None when that leaves ``folder`` (an absolute ``rel``,
    or '..' past its top). Decided on the names, not on where symlinks point: an image folder made of links
    into a shared pool is the user's own layout, while a CSV cell cannot reach out of the folder it names."""
    top = os.path.normpath(os.fspath(folder))
    path = os.path.normpath(os.path.join(top, rel))  # on strings: pathlib took ~60 us a row (30 s at 500k rows)
    if top == ".":
        within = not os.path.isabs(path) and path != ".." and not path.startswith(".." + os.sep)
    else:
        within = path == top or path.startswith(top.rstrip(os.sep) + os.sep)
        within = within and path.startswith("//") == top.startswith("//")  # POSIX: '//' is a root of its own
    return Path(path) if within else None


def _csv_folders(lay: LayoutSpec, base: Path) -> Iterator[_Folder]:
    """Each CSV row's folder, which must exist and be the only match of its pattern."""
    assert lay.csv is not None
    df = read_csv(lay.csv, "layout CSV")
    if lay.columns is not None:
        require_columns(df, lay.columns, lay.csv, f"{lay.key}.columns")
        df = df[list(lay.columns)]
    for pattern in (lay.folder_re, lay.stem_re):
        for name in pattern.groupindex if pattern is not None else ():
            if name in df.columns:
                raise CompError(
                    f"config key '{lay.key}.fields': group '{name}' is also a column of {lay.csv}; rename the group "
                    f"(e.g. folder_{name}) and pick the one the labels trust as their source"
                )
    for line, record in enumerate(df.to_dict("records"), start=2):
        values = {str(k): v for k, v in record.items()}
        where = f"{lay.csv} line {line}"
        rel = _fill(lay.folder, values, f"{lay.key}.folder", where, glob_safe=True)
        found = _glob_dirs(base, rel)
        if not found:
            raise CompError(
                f"{where}: folder {base / rel} not found ({lay.key}.folder {lay.folder!r}); add it or drop the row"
            )
        if len(found) > 1:
            raise CompError(
                f"{where}: {lay.key}.folder {lay.folder!r} matches {len(found)} folders ({found[0]}, {found[1]}); make it specific"
            )
        yield _Folder(found[0], values, where)


def _glob_folders(lay: LayoutSpec, base: Path) -> list[_Folder]:
    """The folders a folder glob matches, sorted."""
    if _template_names(lay.folder, f"{lay.key}.folder"):
        raise CompError(
            f"config key '{lay.key}.folder' {lay.folder!r} uses {{names}} but there is no csv; set {lay.key}.csv or use a glob"
        )
    found = _glob_dirs(base, lay.folder)
    if not found:
        raise CompError(f"config key '{lay.key}.folder' {lay.folder!r} matches no folder under {base}; fix the glob")
    return [_Folder(path, {}, f"{lay.key}.folder {lay.folder!r}") for path in found]


def _folder_rows(lay: LayoutSpec, folder: _Folder, base: Path) -> list[dict[str, Any]]:
    """The rows of one folder's images, or none when its name is skipped."""
    folder_fields = _match(
        lay.folder_re, folder.path.name, f"{folder.where}: folder name {folder.path.name!r}", lay, "folder"
    )
    if folder_fields is None:
        return []
    names = {"folder": folder.path.name, **folder.values, **folder_fields}
    pattern = _fill(lay.files, names, f"{lay.key}.files", folder.where, glob_safe=True)
    images = _images(folder.path, pattern, lay.extensions)
    if not images:
        raise CompError(
            f"{folder.where}: no images matching {pattern!r} in folder {folder.path} (types {', '.join(sorted(lay.extensions))}); "
            f"add them, fix {lay.key}.files, or remove that row or folder"
        )
    columns = {(f"csv_{k}" if k in OUTPUT_COLUMNS else k): v for k, v in folder.values.items()}
    rows = []
    for image in images:
        stem_fields = _match(lay.stem_re, image.stem, f"{folder.where}: image {image}", lay, "stem")
        if stem_fields is None:
            continue
        names_here = {"stem": image.stem, "file": image.name, "ext": image.suffix, **names, **stem_fields}
        ident = (
            _fill(lay.id, names_here, f"{lay.key}.id", f"{folder.where}: image {image}")
            if lay.id
            else _relative(image, base)
        )
        group = (
            _fill(lay.group, names_here, f"{lay.key}.group", f"{folder.where}: image {image}") if lay.group else ident
        )
        rows.append({"id": ident, "path": str(image), "group": group, **columns, **folder_fields, **stem_fields})
    if lay.per_folder is not None and len(rows) != lay.per_folder:
        raise CompError(
            f"{folder.where}: folder {folder.path} has {len(rows)} images, not {lay.per_folder} ({lay.key}.per_folder); "
            "add the missing ones or fix per_folder"
        )
    if not rows:
        raise CompError(
            f"{folder.where}: no image in folder {folder.path} matches {lay.key}.fields.stem; fix the regex"
        )
    return rows


def _check_unique(df: pd.DataFrame, lay: LayoutSpec) -> None:
    """Fail on the first id two images share, naming both files."""
    dup = df["id"].duplicated(keep=False).to_numpy()
    if dup.any():
        first = df["id"].iloc[int(np.flatnonzero(dup)[0])]
        paths = df.loc[df["id"] == first, "path"].tolist()
        raise CompError(
            f"id {first!r} is produced by two images ({paths[0]}, {paths[1]}); make {lay.key}.id tell them apart "
            "(e.g. add {stem} or {file}) or remove the duplicate"
        )


def _images(folder: Path, pattern: str, extensions: frozenset[str]) -> list[Path]:
    """Image files under ``folder`` matching ``pattern``, skipping hidden ones, sorted."""
    found = []
    for name in glob.glob(os.path.join(glob.escape(str(folder)), pattern), recursive=True):
        path = Path(name)
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        # macOS copies leave '._name' resource forks next to the images; they are not images
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        found.append(path)
    return sorted(found)


def _glob_dirs(base: Path, pattern: str) -> list[Path]:
    """Folders matching ``pattern`` (relative to ``base`` unless absolute), sorted."""
    names = glob.glob(os.path.join(glob.escape(str(base)), pattern), recursive=True)
    return sorted(Path(os.path.normpath(n)) for n in names if os.path.isdir(n))


def _find_by_stem(folder: Path, stem: str, where: str) -> str:
    """The one image named ``<stem>.<ext>`` in ``folder``."""
    found = [p for p in _images(folder, glob.escape(stem) + ".*", frozenset(IMAGE_EXTENSIONS)) if p.stem == stem]
    if len(found) != 1:
        what = "no image" if not found else f"{len(found)} images ({found[0].name}, {found[1].name})"
        raise CompError(f"{where}: {what} named {stem!r} with an image extension in {folder}; set the image extension")
    return found[0].name


def _fill(template: str, names: Mapping[str, Any], key: str, where: str, *, glob_safe: bool = False) -> str:
    """Format ``template`` with ``names``; with ``glob_safe`` the values are glob-escaped and may not hold '..'."""
    values = {}
    for name in _template_names(template, key):
        if name not in names:
            raise CompError(
                f"config key '{key}' {template!r}: {{{name}}} is no column, field or built-in{closest(name, names)} "
                f"(at {where}); names are {', '.join(names)}"
            )
        value = names[name]
        if not isinstance(value, str):
            raise CompError(
                f"{where}: {{{name}}} is empty but '{key}' {template!r} needs it; fill the cell or drop the row"
            )
        if glob_safe:
            if ".." in PurePosixPath(value.replace("\\", "/")).parts or os.path.isabs(value):
                raise CompError(
                    f"{where}: {name} {value!r} would leave the data folder; use a relative name without '..'"
                )
            value = glob.escape(value)
        values[name] = value
    return template.format_map(values)


def _template_names(template: str, key: str) -> list[str]:
    """The names a format template uses; only plain names, no positional, attribute or index access."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise CompError(
            f"config key '{key}' {template!r} is not a valid template ({exc}); use {{name}} placeholders"
        ) from None
    names = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or not name.strip() or any(c in name for c in ".["):
            raise CompError(
                f"config key '{key}' {template!r} has placeholder {{{name}}}; use a plain column or field name"
            )
        names.append(name)
    return names


def _match(
    pattern: re.Pattern[str] | None, text: str, what: str, lay: LayoutSpec, source: str
) -> dict[str, str] | None:
    """The named groups of ``pattern`` fully matching ``text``; None when skipped; {} without a pattern."""
    if pattern is None:
        return {}
    found = pattern.fullmatch(text)
    if found is not None:
        return {k: ("" if v is None else v) for k, v in found.groupdict().items()}
    if lay.skip_unmatched:
        return None
    raise CompError(
        f"{what} does not match {lay.key}.fields.{source} {pattern.pattern!r}; fix the regex, "
        f"remove the file, or set {lay.key}.skip_unmatched: true"
    )


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` as a posix string, or absolute when outside it."""
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
