"""The ``data.layout`` spec: its keys, types and regexes, checked before anything is read.

Reading the folders and images a spec names is ``comp/data/_layout.py``; this module only parses the
spec, so ``load_config`` checks it without the data package.

Spec (a plain dict, the YAML under ``data.layout``; paths are relative to ``root``)::

    csv: train/train.csv              # optional: rows to expand; omit for a pure folder layout
    columns: [id, path]               # optional: the CSV columns to keep (default: all)
    folder: "train/images/{path}"     # with csv: each row's folder, a format over its columns (a glob that
                                      #   must match one folder); without csv: a glob of folders
    files: "*"                        # glob of the images inside each folder, a format over the columns,
                                      #   the folder's fields and {folder}; default "*"
    extensions: [.jpg, .jpeg, .png]   # optional: image types kept (default IMAGE_EXTENSIONS); others ignored
    fields:
      folder: '(?P<folder_gender>male|female)...'    # optional regex that must fullmatch the folder's name
      stem: '(?P<mask>mask[1-5]|incorrect_mask|normal)'  # optional regex that must fullmatch each file's stem
    skip_unmatched: false             # true: skip folders and files a regex does not match, instead of failing
    per_folder: 7                     # optional: the exact number of images every folder must hold
    id: "{path}/{stem}"               # id of each row; default: the image path relative to root
    group: "{path}"                   # group of each row; default: the id (every image its own group)

The three common layouts::

    # one row per image (id column + extension, or any path template)
    {csv: train.csv, folder: train, files: "{id}.png", id: "{id}"}
    # class per folder (ImageFolder: train/<class>/<file>)
    {folder: "train/*", fields: {folder: "(?P<label>.+)"}}
    # one CSV row per person, seven photos in the person's folder (boostcamp mask contest)
    {csv: train/train.csv, folder: "train/images/{path}", fields: {stem: "(?P<mask>...)",
     folder: "(?P<pid>[^_]+)_(?P<folder_gender>[^_]+)_(?P<folder_race>[^_]+)_(?P<folder_age>\\d+)"},
     per_folder: 7, id: "{path}/{stem}", group: "{path}"}

Template names are checked when the rows are read (they depend on the CSV's columns).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comp.errors import CompError, closest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OUTPUT_COLUMNS = ("id", "path", "group")
SPEC_KEYS = (
    "csv",
    "columns",
    "folder",
    "files",
    "extensions",
    "fields",
    "skip_unmatched",
    "per_folder",
    "id",
    "group",
)
FIELD_SOURCES = ("folder", "stem")


@dataclass(frozen=True)
class LayoutSpec:
    """A validated layout spec (see the module docstring)."""

    csv: Path | None
    columns: tuple[str, ...] | None
    folder: str
    files: str
    extensions: frozenset[str]
    folder_re: re.Pattern[str] | None
    stem_re: re.Pattern[str] | None
    skip_unmatched: bool
    per_folder: int | None
    id: str | None
    group: str | None
    key: str


def parse_layout(spec: Mapping[str, Any], *, root: str | Path = ".", key: str = "data.layout") -> LayoutSpec:
    """Validate a layout spec dict; fail with one line naming the key and the fix."""
    if not isinstance(spec, Mapping):
        raise CompError(f"config key '{key}' must be a mapping (csv, folder, files, fields, id, group)")
    for name in spec:
        if name not in SPEC_KEYS:
            raise CompError(
                f"config key '{key}.{name}' is unknown{closest(str(name), SPEC_KEYS)}; keys are {', '.join(SPEC_KEYS)}"
            )
    folder = _string(spec, "folder", key, required=True)
    assert folder is not None
    csv = _string(spec, "csv", key)
    fields = spec.get("fields") or {}
    if not isinstance(fields, Mapping):
        raise CompError(f"config key '{key}.fields' must map 'folder' and/or 'stem' to a regex")
    for name in fields:
        if name not in FIELD_SOURCES:
            raise CompError(
                f"config key '{key}.fields.{name}' is unknown{closest(str(name), FIELD_SOURCES)}; use folder or stem"
            )
    folder_re = _regex(fields.get("folder"), f"{key}.fields.folder")
    stem_re = _regex(fields.get("stem"), f"{key}.fields.stem")
    if folder_re is not None and stem_re is not None:
        both = sorted(set(folder_re.groupindex) & set(stem_re.groupindex))
        if both:
            raise CompError(
                f"config key '{key}.fields': group '{both[0]}' is in both the folder and the stem regex; rename one"
            )
    for pattern, where in ((folder_re, "folder"), (stem_re, "stem")):
        for name in pattern.groupindex if pattern is not None else ():
            if name in OUTPUT_COLUMNS:
                raise CompError(
                    f"config key '{key}.fields.{where}': group '{name}' clashes with the output column {name}; rename the group"
                )
    per_folder = spec.get("per_folder")
    if per_folder is not None and (isinstance(per_folder, bool) or not isinstance(per_folder, int) or per_folder < 1):
        raise CompError(f"config key '{key}.per_folder' must be a positive integer, not {per_folder!r}")
    return LayoutSpec(
        csv=None if csv is None else Path(root) / csv,
        columns=_string_list(spec, "columns", key),
        folder=folder,
        files=_string(spec, "files", key) or "*",
        extensions=frozenset(
            "." + e.lower().lstrip(".") for e in (_string_list(spec, "extensions", key) or IMAGE_EXTENSIONS)
        ),
        folder_re=folder_re,
        stem_re=stem_re,
        skip_unmatched=bool(spec.get("skip_unmatched", False)),
        per_folder=per_folder,
        id=_string(spec, "id", key),
        group=_string(spec, "group", key),
        key=key,
    )


def _regex(pattern: Any, key: str) -> re.Pattern[str] | None:
    """Compile a field regex, failing on bad syntax or a regex without named groups."""
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise CompError(f"config key '{key}' must be a regex string, not {type(pattern).__name__}")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise CompError(f"config key '{key}' {pattern!r} is not a valid regex ({exc}); fix it") from None
    if not compiled.groupindex:
        raise CompError(f"config key '{key}' {pattern!r} has no named group; name the fields, e.g. (?P<mask>...)")
    return compiled


def _string(spec: Mapping[str, Any], name: str, key: str, *, required: bool = False) -> str | None:
    """A string option, or None when absent."""
    value = spec.get(name)
    if value is None:
        if required:
            raise CompError(f"config key '{key}.{name}' is missing; set it (see the layout docs)")
        return None
    if not isinstance(value, str) or not value:
        raise CompError(f"config key '{key}.{name}' must be a non-empty string, not {value!r}")
    return value


def _string_list(spec: Mapping[str, Any], name: str, key: str) -> tuple[str, ...] | None:
    """A list-of-strings option, or None when absent."""
    value = spec.get(name)
    if value is None:
        return None
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not all(isinstance(v, str) for v in value)
        or not value
    ):
        raise CompError(f"config key '{key}.{name}' must be a non-empty list of strings, not {value!r}")
    return tuple(value)
