"""The shape of a competition folder: where the training rows come from (a table, per-group folders, or an
ImageFolder tree), which columns are ids, labels and groups, the task, the test images and the sample's format.

Every decision is a :class:`Guess` with its evidence and the ``--set`` key that overrides it; a key given with
``--set`` is taken as decided. Two equally plausible candidates stop with a one-line error naming both.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from comp.config._layout import IMAGE_EXTENSIONS
from comp.errors import CompError
from comp.init._columns import Guess, LabelKind, ambiguous, group_evidence, is_binary, label_kind, pick, wide_kind
from comp.init._scan import Inventory

SAMPLE_NAMES = re.compile(r"(sample|submission)", re.I)
ID_SAMPLE = 300  # ids looked up per table: enough to tell a match from chance


@dataclass
class Match:
    """How a column's values name image files: a folder, an extension or a path template, and the share matched."""

    column: str
    image_dir: str
    image_ext: str
    template: str | None
    rate: float
    images: int

    def describe(self) -> str:
        how = f"template {self.template}" if self.template else f"<id>{self.image_ext}" if self.image_ext else "<id>"
        return f"{self.rate:.0%} of its values name images in {self.image_dir or '.'}/ as {how}"


@dataclass
class Source:
    """Where the training rows come from, and the table whose columns hold their labels and groups."""

    kind: str  # table | groups | imagefolder
    data: dict[str, Any]
    table: pd.DataFrame  # one row per image (table, imagefolder) or per group folder (groups)
    id_column: str | None
    exclude: set[str]  # columns that are neither label nor group
    extra: list[LabelKind] = field(default_factory=list)  # labels from the layout (folder or file names)
    images: list[str] = field(default_factory=list)  # training images (relative to the root)


@dataclass
class Detection:
    data: dict[str, Any]
    task: str
    guesses: list[Guess]
    notes: list[str]
    images: list[str]  # training images
    test_images: list[str]


def _locate(inv: Inventory, value: str) -> list[tuple[str, str]]:
    """(folder prefix, extension) of every image ``value`` could name: with or without extension, in subfolders."""
    v = value.strip().lstrip("./")
    if not v:
        return []
    out = []
    if PurePosixPath(v).suffix.lower() in IMAGE_EXTENSIONS:
        for p in inv.by_name.get(PurePosixPath(v).name, ()):
            if p == v or p.endswith("/" + v):
                out.append((p[: len(p) - len(v)].rstrip("/"), ""))
    else:
        for p in inv.by_stem.get(PurePosixPath(v).name, ()):
            stem, ext = os.path.splitext(p)
            if stem == v or stem.endswith("/" + v):
                out.append((stem[: len(stem) - len(v)].rstrip("/"), ext))
    return out


def match_ids(inv: Inventory, df: pd.DataFrame, column: str, *, avoid: str | None = None) -> Match | None:
    """How ``df[column]`` names image files, or None when fewer than 95% of its (sampled) values do."""
    values = df[column].astype(str)
    sample = values.iloc[:: max(1, len(values) // ID_SAMPLE)][:ID_SAMPLE]
    found = [_locate(inv, v) for v in sample]
    if sum(bool(f) for f in found) < 0.95 * len(sample) or not len(sample):
        return None
    counts = Counter(c for f in found for c in set(f))
    # one folder and extension for (almost) every id; prefer a folder other than ``avoid`` (the training images)
    best = max(counts, key=lambda c: (counts[c], c[0] != avoid, "test" in c[0].lower()))
    rate = counts[best] / len(sample)
    if rate >= 0.95:
        return Match(column, best[0], best[1], None, rate, len(values))
    # ids in subfolders named by another column: <dir>/<column value>/<id><ext>
    exts = {c[1] for f in found for c in f}
    prefixes = [f[0][0] for f in found if f]
    if len(exts) != 1 or not prefixes:
        return None
    base = os.path.commonpath(prefixes) if all(prefixes) else ""
    rel = [p[len(base) :].strip("/") for p in prefixes]
    picked = sample[[bool(f) for f in found]]
    for other in df.columns:
        if other != column and (df.loc[picked.index, other].astype(str).to_numpy() == rel).mean() >= 0.95:
            ext = exts.pop()
            return Match(column, base, ext, f"{{{other}}}/{{{column}}}{ext}", 1.0, len(values))
    return None


def _id_match(inv: Inventory, df: pd.DataFrame, *, avoid: str | None = None) -> Match | None:
    """The column of ``df`` that names its images (the first that does, left to right)."""
    for col in df.columns:
        m = match_ids(inv, df, col, avoid=avoid)
        if m is not None:
            return m
    return None


# ---------------------------------------------------------------- where the training rows come from


def _group_folders(inv: Inventory, df: pd.DataFrame) -> tuple[str, str] | None:
    """(column, parent folder) when a column's values name folders of images, one folder per row."""
    named = inv.dirs_named()
    for col in df.columns:
        values = df[col].astype(str)
        if values.nunique() < 2 or values.nunique() < len(values):  # one row per folder; else a table of images
            continue
        parents: Counter[str] = Counter()
        sample = values.iloc[:ID_SAMPLE]
        for v in sample:
            for d in named.get(PurePosixPath(v).name, ()):
                if d == v or d.endswith("/" + v):
                    parents[d[: len(d) - len(v)].rstrip("/")] += 1
        if parents and parents.most_common(1)[0][1] >= 0.95 * len(sample):
            return col, parents.most_common(1)[0][0]
    return None


def _groups_source(inv: Inventory, csv: str, df: pd.DataFrame, col: str, parent: str) -> Source:
    """One CSV row per group, each naming a folder of images (the face-mask contest's train/images/<person>/)."""
    folders = [f"{parent}/{v}" if parent else str(v) for v in df[col].astype(str)]
    counts = Counter(len(inv.by_dir.get(f, ())) for f in folders)
    stems = [frozenset(os.path.splitext(n)[0] for n in inv.by_dir.get(f, ())) for f in folders]
    layout: dict[str, Any] = {"csv": csv, "folder": f"{parent}/{{{col}}}" if parent else f"{{{col}}}", "files": "*"}
    extra = []
    shared = set.intersection(*(set(s) for s in stems)) if stems else set()
    if len(counts) == 1 and 2 <= len(shared) and all(s == stems[0] for s in stems):
        # every folder holds the same file names (mask1..5, incorrect_mask, normal): the name is a per-image label
        layout["fields"] = {"stem": "(?P<kind>.+)"}
        extra.append(
            LabelKind(
                "kind",
                "classification",
                f"file names: the same {len(shared)} in every {col} folder ({', '.join(sorted(shared)[:4])}, ...)",
                1,
            )
        )
    if len(counts) == 1:
        layout["per_folder"] = next(iter(counts))
    layout.update(id=f"{{{col}}}/{{stem}}", group=f"{{{col}}}")
    images = [f"{f}/{n}" for f in folders for n in inv.by_dir.get(f, ())]
    return Source("groups", {"layout": layout}, df, None, {col}, extra, images)


def _imagefolder_source(inv: Inventory, forced: dict[str, Any]) -> Source | None:
    """A class-per-folder tree (train/<class>/*.jpg); the one whose name says train when there are several."""
    trees = []
    for parent in {d.rpartition("/")[0] for d in inv.by_dir if d}:
        kids = inv.children(parent)
        if len(kids) >= 2 and len(inv.by_dir.get(parent, ())) < len(inv.under(parent)) / 10:
            trees.append((parent, kids))
    if not trees:
        return None
    trained = [t for t in trees if "train" in t[0].lower()] or trees
    if len(trained) > 1:
        raise ambiguous(
            "training images", "data.layout.folder", [(f"{p}/*", f"{len(k)} class folders") for p, k in trained]
        )
    parent, kids = trained[0]
    labels = [PurePosixPath(d).name for d in kids for _ in inv.by_dir[d]]
    images = [f"{d}/{n}" for d in kids for n in inv.by_dir[d]]
    layout = {
        "folder": f"{parent}/*" if parent else "*",
        "fields": {"folder": "(?P<label>.+)"},
        "id": "{folder}/{stem}",
    }
    table = pd.DataFrame({"label": labels})
    extra = [LabelKind("label", "classification", f"ImageFolder tree: {len(kids)} class folders under {parent}/", 3)]
    return Source("imagefolder", {"layout": layout}, table, None, {"label"}, extra, images)


def _train_source(inv: Inventory, forced: dict[str, Any], sample: str | None, guesses: list[Guess]) -> Source:
    tables = {p: df for p, df in inv.csvs.items() if len(df.columns) and p != sample and len(df)}
    if "data.train_csv" in forced:
        want = str(forced["data.train_csv"])
        if want not in tables:
            raise CompError(f"--set data.train_csv={want}: no such table; tables are {', '.join(sorted(tables))}")
        tables = {want: tables[want]}
    grouped = []
    for path, df in tables.items():
        hit = _group_folders(inv, df)
        if hit is not None:
            grouped.append((path, df, *hit))
    if grouped:
        path, df, col, parent = grouped[0]
        src = _groups_source(inv, path, df, col, parent)
        per = src.data["layout"].get("per_folder")
        guesses.append(
            Guess(
                "data.layout",
                f"{path}: one row per {col} folder under {parent}/",
                f"column {col} names {len(df)} folders of images"
                + (f", {per} in each" if per else "")
                + "; ids '<folder>/<file stem>', groups the folders",
                "--set data.layout=...",
            )
        )
        return src
    matched = []
    for path, df in tables.items():
        m = _id_match(inv, df)
        if m is not None:
            matched.append((path, df, m))
    if len(matched) > 1:
        train_named = [t for t in matched if "train" in PurePosixPath(t[0]).name.lower()]
        matched = train_named or matched
        if len(matched) > 1:
            most = max(len(t[1]) for t in matched)
            matched = [t for t in matched if len(t[1]) == most]
        if len(matched) > 1:
            raise ambiguous(
                "training table", "data.train_csv", [(p, f"{len(d)} rows, {m.describe()}") for p, d, m in matched]
            )
    if matched:
        path, df, m = matched[0]
        data: dict[str, Any] = {"train_csv": path, "image_dir": m.image_dir or ".", "id_column": m.column}
        if m.template:
            data["path_template"] = m.template
        else:
            data["image_ext"] = m.image_ext
        guesses.append(Guess("data.train_csv", path, f"{len(df)} rows; its column {m.column} names images"))
        guesses.append(Guess("data.id_column", m.column, m.describe()))
        guesses.append(Guess("data.image_dir", m.image_dir or ".", f"{len(inv.under(m.image_dir))} images"))
        if m.template:
            guesses.append(Guess("data.path_template", m.template, "ids sit in subfolders named by that column"))
        else:
            guesses.append(
                Guess("data.image_ext", m.image_ext, "ids name their files" if not m.image_ext else "ids + this suffix")
            )
        return Source("table", data, df, m.column, {m.column}, [], inv.under(m.image_dir))
    tree = _imagefolder_source(inv, forced)
    if tree is not None:
        guesses.append(
            Guess(
                "data.layout",
                f"ImageFolder {tree.data['layout']['folder']}",
                tree.extra[0].evidence + f", {len(tree.images)} images",
                "--set data.layout=...",
            )
        )
        return tree
    raise CompError(
        f"{inv.root}: no training table whose ids name images, no per-group image folders and no class-per-folder "
        "tree found; set data.train_csv and data.image_dir with --set"
    )


# ---------------------------------------------------------------- labels, task and groups


def _labels(src: Source, sample_df: pd.DataFrame | None, forced: dict[str, Any]) -> tuple[dict[str, Any], str, Guess]:
    """The label key(s), the task and the guess saying why."""
    table = src.table
    columns = [c for c in table.columns if c not in src.exclude]
    known = {k.column: k for k in src.extra}
    if "data.label_columns" in forced and forced["data.label_columns"]:
        cols = list(forced["data.label_columns"])
        task, why = wide_kind(table, cols)
        return {"label_columns": cols}, task, Guess("data.label_columns", cols, why + " (set on the command line)")
    if "data.label_column" in forced:
        col = str(forced["data.label_column"])
        kind = known.get(col) or (label_kind(col, table[col], hinted=True) if col in table.columns else None)
        if kind is None:
            raise CompError(
                f"--set data.label_column={col}: not a usable label column; columns are {', '.join([*known, *columns])}"
            )
        return {"label_column": col}, kind.task, Guess("data.label_column", col, kind.evidence)
    if sample_df is not None and len(sample_df.columns) >= 2:
        targets = list(sample_df.columns[1:])
        if len(targets) == 1 and targets[0] in table.columns:
            kind = label_kind(targets[0], table[targets[0]], hinted=True)
            if kind is not None:
                why = f"the sample submission's column; {kind.evidence}"
                return {"label_column": kind.column}, kind.task, Guess("data.label_column", kind.column, why)
        if len(targets) > 1 and all(t in table.columns for t in targets):
            task, why = wide_kind(table, targets)
            why = f"the sample submission's columns; {why}"
            return {"label_columns": targets}, task, Guess("data.label_columns", targets, why)
        if len(targets) > 1:  # one probability column per class or label: the column whose values they are
            for col in columns:
                vocab = {t for v in table[col].astype(str) for t in v.split()}
                if set(targets) <= vocab:
                    kind = label_kind(col, table[col], hinted=True)
                    if kind is not None:
                        why = f"its values are the sample submission's columns; {kind.evidence}"
                        return {"label_column": col}, kind.task, Guess("data.label_column", col, why)
    ranked = [(k.column, k.evidence, k.score) for k in src.extra]
    kinds = {k.column: k for k in src.extra}
    for col in columns:
        kind = label_kind(col, table[col])
        if kind is not None:
            ranked.append((col, kind.evidence, kind.score))
            kinds[col] = kind
    wide = [c for c in columns if is_binary(table[c])]
    chosen = pick("label column", "data.label_column", ranked)
    if chosen is None and len(wide) >= 2:
        task, why = wide_kind(table, wide)
        return {"label_columns": wide}, task, Guess("data.label_columns", wide, why)
    if chosen is None:
        raise CompError(
            "no label column found (no column with classes, tags or numbers); set data.label_column with --set"
        )
    kind = kinds[chosen[0]]
    return {"label_column": kind.column}, kind.task, Guess("data.label_column", kind.column, kind.evidence)


def _group(src: Source, label: dict[str, Any], task: str, forced: dict[str, Any]) -> Guess:
    if src.kind == "groups":
        col = src.data["layout"]["group"]
        return Guess("data.layout.group", col, "each folder is one group: its images never straddle folds")
    if "data.group_column" in forced:
        return Guess("data.group_column", forced["data.group_column"], "set on the command line")
    if src.kind == "imagefolder":
        return Guess("data.group_column", None, "an ImageFolder tree names no groups: every image is its own")
    taken = set(src.exclude) | set(label.get("label_columns") or []) | {label.get("label_column")}
    classes = "label_column" in label and task == "classification" and label["label_column"] in src.table.columns
    labels = src.table[label["label_column"]].to_numpy() if classes else None
    ranked = []
    for col in src.table.columns:
        if col in taken:
            continue
        found = group_evidence(col, src.table[col].astype(str), labels)
        if found is not None:
            ranked.append((col, *found))
    chosen = pick("group column", "data.group_column", ranked)
    if chosen is None:
        return Guess("data.group_column", None, "no column repeats per image source: every image is its own group")
    return Guess("data.group_column", chosen[0], chosen[1])


# ---------------------------------------------------------------- test images and the sample submission


def _sample(inv: Inventory, forced: dict[str, Any]) -> str | None:
    if "data.sample_submission" in forced:
        value = forced["data.sample_submission"]
        return None if value is None else str(value)
    named = [p for p in inv.csvs if SAMPLE_NAMES.search(PurePosixPath(p).name) and len(inv.csvs[p].columns)]
    if len(named) > 1:
        both = [p for p in named if "sample" in p.lower() and "submission" in p.lower()]
        named = both or named
    if len(named) > 1:
        raise ambiguous("sample submission", "data.sample_submission", [(p, f"{len(inv.csvs[p])} rows") for p in named])
    return named[0] if named else None


def _test(
    inv: Inventory, src: Source, sample: str | None, forced: dict[str, Any], guesses: list[Guess]
) -> tuple[dict[str, Any], str | None, list[str]]:
    """(test keys, the id column the test side uses, test images)."""
    train_dir = src.data.get("image_dir")
    out: dict[str, Any] = {}
    test_csv = forced.get("data.test_csv")
    if test_csv is None and "data.test_csv" not in forced:
        for path, df in inv.csvs.items():
            if path in (src.data.get("train_csv"), (src.data.get("layout") or {}).get("csv")) or not len(df):
                continue
            if sample is None and match_ids(inv, df, df.columns[0], avoid=train_dir) is not None:
                test_csv = path
                break
    source = test_csv or sample
    if source is None:
        return {"sample_submission": None}, None, []
    df = inv.csvs.get(str(source))
    if df is None or not len(df.columns):
        raise CompError(f"test table {source} not found or empty under {inv.root}; fix --set data.test_csv")
    m = match_ids(inv, df, df.columns[0], avoid=train_dir)
    if m is None:
        raise CompError(
            f"{source}: its first column {df.columns[0]!r} names no image files under {inv.root}; set "
            "data.test_image_dir and data.image_ext with --set"
        )
    if sample is None and len(df.columns) >= 2:
        sample = str(source)  # a test table with answer columns is the submission's format (eval/info.csv: ans)
    out["test_csv"] = test_csv
    out["test_image_dir"] = m.image_dir or "."
    out["sample_submission"] = sample
    if test_csv:
        guesses.append(Guess("data.test_csv", test_csv, f"{len(df)} test ids; {m.describe()}"))
    guesses.append(Guess("data.test_image_dir", m.image_dir or ".", m.describe()))
    if sample:
        sdf = inv.csvs[sample]
        cols = list(sdf.columns[1:])
        fmt = (
            f"one column {cols[0]!r} ({_fill(sdf[cols[0]])})"
            if len(cols) == 1
            else f"{len(cols)} columns ({', '.join(cols[:4])}{', ...' if len(cols) > 4 else ''})"
        )
        guesses.append(Guess("data.sample_submission", sample, f"{len(sdf)} rows, id {sdf.columns[0]!r}, {fmt}"))
    images = inv.under(m.image_dir)
    if m.image_ext:
        out["image_ext"] = m.image_ext
    return out, str(df.columns[0]), images


def _fill(s: pd.Series) -> str:
    nums = pd.to_numeric(s, errors="coerce")
    if nums.notna().all() and not s.astype(str).str.contains(r"[.eE]").any():
        return "integers: class codes or grades"
    if nums.notna().all():
        return "numbers: probabilities or values"
    return "labels or tags as text"


def detect(inv: Inventory, forced: dict[str, Any]) -> Detection:
    """Every data key of the config, the task and the evidence for each, from the folder's contents."""
    guesses: list[Guess] = []
    notes: list[str] = []
    sample = _sample(inv, forced)
    src = _train_source(inv, forced, sample, guesses)
    test, test_id, test_images = _test(inv, src, sample, forced, guesses)
    sample = test.get("sample_submission")
    sample_df = inv.csvs.get(sample) if sample else None
    label, task, label_guess = _labels(src, sample_df, forced)
    guesses.append(label_guess)
    if "task" in forced:
        task = str(forced["task"])
        guesses.append(Guess("task", task, "set on the command line"))
    else:
        guesses.append(Guess("task", task, f"from {label_guess.key}: {label_guess.evidence.split(';')[-1].strip()}"))
    group = _group(src, label, task, forced)
    guesses.append(group)
    data = {**src.data, **label}
    if group.key == "data.group_column" and group.value is not None:
        data["group_column"] = group.value
    # ids: the table's column; a layout's ids go under the test side's id column so all tables share one name
    id_col = src.id_column or test_id or "id"
    if src.id_column and test_id and test_id != src.id_column and "data.id_column" not in forced:
        raise CompError(
            f"{src.data.get('train_csv')} names its ids {src.id_column!r} but {sample or test.get('test_csv')} names "
            f"them {test_id!r}; comp reads both through data.id_column: rename one column so they match"
        )
    data["id_column"] = forced.get("data.id_column", id_col)
    if src.kind != "table":
        guesses.append(Guess("data.id_column", data["id_column"], "the test table's id column; layout ids go under it"))
    ext = test.pop("image_ext", None)
    if src.kind != "table" and ext:
        data["image_ext"] = ext
    elif src.kind == "table" and ext is not None and ext != data.get("image_ext") and not data.get("path_template"):
        notes.append(f"test images end in {ext!r} but training images in {data.get('image_ext')!r}")
    data.update(test)
    if test.get("sample_submission") is None:
        notes.append("no sample submission found: predict writes test.csv only (set data.sample_submission)")
    return Detection(data, task, guesses, notes, src.images, test_images)
