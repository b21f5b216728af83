"""Look at the data before training (``comp eda``): classes, groups, image sizes, channels, colour,
unreadable files and duplicates, as ``eda.html`` with PNG plots, ``duplicates.csv`` and a short summary.

Duplicates: exact (same file bytes) and near (dHash: 9x8 grayscale, 64 bits; Hamming distance <= threshold)
within train and between train and test. A train pair whose two images sit in different groups is a
leak: group k-fold puts them in different folds, so validation sees a copy of a training image.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from comp._files import file_problem
from comp._progress import Progress, track
from comp._tables import Rendered
from comp.config import Config
from comp.data._table import TrainTable, load_image, load_test_table, load_train_table
from comp.diagnostics._eda_targets import (
    TARGET_VIEWS,
    Plot,
    attribute_counts,
    attribute_lines,
    attribute_plot,
    colour_groups,
    row_labels,
    save_plot,
)
from comp.diagnostics._near import near_pairs, plan
from comp.errors import CompError
from comp.run import check_report_folder, data_inputs, image_trees, write_csv, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(repr=False)
class EdaResult(Rendered):
    """The EDA report: its summary lines, ``eda.html``, the duplicate pairs and unreadable files."""

    summary: list[str]
    html: Path
    duplicates: pd.DataFrame  # duplicates.csv: exact and near pairs within train and train-test, leaks marked
    unreadable: pd.DataFrame  # path, error
    gray: int  # grayscale images stored as RGB
    plots: list[str]  # PNG file names beside eda.html
    figures: dict[str, Figure] = field(default_factory=dict)  # the same plots by name ("class_counts"), drawn

    def text(self) -> str:
        return "\n".join(self.summary)

    def title(self) -> str:
        return f"EdaResult: {self.html}"

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"summary": self.summary})


def dhash(img: np.ndarray) -> np.uint64:
    """64-bit difference hash: grayscale, resize to 9x8, bit = left pixel brighter than its right neighbour
    (the first pixel pair is the highest bit)."""
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return np.uint64(int.from_bytes(np.packbits(bits).tobytes(), "big"))


@dataclass
class Scanned:
    """Per-file facts as columns, one entry per path (at 500k images a dict per file held ~3 kB each): whether
    it was read (``ok``; the other columns are 0 / "" where not), its size, dHash, gray-as-RGB, pixel count
    and per-channel sums and sums of squares, the SHA-1 of its bytes; ``bad``: the unreadable ones."""

    ok: np.ndarray
    height: np.ndarray
    width: np.ndarray
    dhash: np.ndarray
    gray: np.ndarray
    n: np.ndarray
    sum: np.ndarray  # (n, 3)
    sumsq: np.ndarray  # (n, 3)
    sha1: np.ndarray  # object: hex digests
    bad: list[dict]

    @classmethod
    def empty(cls, n: int) -> Scanned:
        ints = [np.zeros(n, dtype=np.int64) for _ in range(3)]
        return cls(
            np.zeros(n, dtype=bool), ints[0], ints[1], np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool),
            ints[2], np.zeros((n, 3)), np.zeros((n, 3)), np.full(n, "", dtype=object), [],
        )  # fmt: skip

    def info(self) -> pd.DataFrame:
        return pd.DataFrame({"ok": self.ok, "height": self.height, "width": self.width, "gray": self.gray})


def scan(paths, *, desc: str = "", progress: bool = True) -> Scanned:
    """Per-file facts: bytes hash, size, dHash, gray-as-RGB, channel sums; unreadable files listed.

    ``desc``: a progress bar with that title (none when empty or ``progress`` is off)."""
    paths = list(paths)
    out = Scanned.empty(len(paths))
    for i, p in enumerate(track(paths, desc, enabled=progress and bool(desc))):
        p = Path(p)
        problem = file_problem(p)  # read_bytes would block on a FIFO and never end on /dev/zero
        if problem:
            out.bad.append({"path": str(p), "error": f"{p} {problem}"})
            continue
        try:
            sha1 = hashlib.sha1(p.read_bytes()).hexdigest()
            img = load_image(p)
        except (CompError, OSError) as exc:
            out.bad.append({"path": str(p), "error": str(exc)})
            continue
        px = img.reshape(-1, 3).astype(np.float64)
        out.ok[i], out.sha1[i], out.height[i], out.width[i] = True, sha1, img.shape[0], img.shape[1]
        out.dhash[i] = dhash(img)
        out.gray[i] = bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())
        out.n[i], out.sum[i], out.sumsq[i] = len(px), px.sum(0), (px**2).sum(0)
    return out


def _plots(
    out: Path, labels: pd.Series, classes, groups, info: pd.DataFrame, table: TrainTable | None = None
) -> list[Plot]:
    from matplotlib.figure import Figure

    made: list[Plot] = []
    parts = labels.astype(str).str.split("_")
    nparts = parts.map(len)
    if table is not None and table.scheme is not None:  # the attributes are declared: no guessing from names
        made += attribute_plot(out, table)
    elif (table is None or table.task == "classification") and nparts.nunique() == 1 and nparts.iloc[0] >= 2:
        first = parts.map(lambda p: p[0])
        rest = parts.map(lambda p: "_".join(p[1:]))
        joint = pd.crosstab(first, rest)
        fig = Figure(figsize=(max(4, 0.5 * joint.shape[1]), max(3, 0.4 * joint.shape[0])))
        ax = fig.subplots()
        im = ax.imshow(joint.to_numpy(), cmap="viridis")
        ax.set_xticks(range(joint.shape[1]), joint.columns, rotation=90)
        ax.set_yticks(range(joint.shape[0]), joint.index)
        fig.colorbar(im, ax=ax)
        ax.set_title("joint label distribution (first part vs rest)")
        made.append(save_plot(fig, out / "label_joint.png", "joint label distribution"))
    if groups is not None:
        sizes = pd.Series(groups).value_counts()
        fig = Figure(figsize=(4, 3))
        ax = fig.subplots()
        ax.hist(sizes.to_numpy(), bins=min(30, max(1, sizes.nunique())))
        ax.set_title("images per group")
        made.append(save_plot(fig, out / "group_sizes.png", "group sizes"))
    ok = info[info["ok"]]
    if len(ok):
        fig = Figure(figsize=(8, 3))
        axes = fig.subplots(1, 2)
        axes[0].scatter(ok["width"], ok["height"], s=6, alpha=0.5)
        axes[0].set_xlabel("width")
        axes[0].set_ylabel("height")
        axes[0].set_title("image sizes")
        axes[1].hist((ok["width"] / ok["height"]).to_numpy(), bins=30)
        axes[1].set_title("aspect ratio (w/h)")
        made.append(save_plot(fig, out / "image_sizes.png", "image sizes and aspect ratios"))
    return made


def run_eda(cfg: Config, out_dir, threshold: int = 5, *, progress: bool = True) -> EdaResult:
    """Write the report (eda.html, plots, duplicates.csv, ...) into ``out_dir``; the result also holds the plots
    as matplotlib Figures (``result.figures``), which a notebook shows inline with the summary; ``progress``
    shows bars."""
    if not 0 <= threshold <= 64:
        raise CompError("--threshold is a Hamming distance between 0 and 64")
    out = Path(out_dir)
    data = cfg.data
    check_report_folder(out, reads=data_inputs(data), trees=image_trees(data))  # no report file replaces an input
    table = load_train_table(data, check_images=False, task=cfg.task)
    id_col = data.id_column
    ids = table.df[id_col].astype(str).to_numpy()
    labels = row_labels(table)  # class name, tags, or the target values, as text
    train = scan(table.paths, desc="eda: train images", progress=progress)
    info = train.info()
    test_ids: np.ndarray = np.array([], dtype=str)
    test = Scanned.empty(0)
    if data.test_csv or data.sample_submission:
        try:
            tdf, tpaths = load_test_table(data, check_images=False)
            test_ids, test = (
                tdf[id_col].astype(str).to_numpy(),
                scan(tpaths, desc="eda: test images", progress=progress),
            )
        except CompError:
            pass  # no test set described: train-only report

    # duplicates
    tr_idx, te_idx = np.flatnonzero(train.ok), np.flatnonzero(test.ok)
    tr_hash, te_hash = train.dhash[tr_idx], test.dhash[te_idx]
    groups = table.groups
    train_sha, test_sha = train.sha1, test.sha1
    bands = plan(threshold, len(tr_hash), len(tr_hash))[0] + plan(threshold, len(tr_hash), len(te_hash))[0]
    with Progress(bands, "near duplicates (bands)", enabled=progress) as bar:
        within = near_pairs(tr_hash, tr_hash, threshold, same=True, progress=bar)
        across = near_pairs(tr_hash, te_hash, threshold, same=False, progress=bar)
    ia, ib = tr_idx[within[:, 0]], tr_idx[within[:, 1]]
    ga = None if groups is None else np.asarray(groups)[ia].astype(str)
    gb = None if groups is None else np.asarray(groups)[ib].astype(str)
    train_dups = pd.DataFrame(
        {
            "set": "train",
            "id_a": ids[ia],
            "id_b": ids[ib],
            "kind": np.where(train_sha[ia] == train_sha[ib], "exact", "near"),
            "distance": within[:, 2],
            "label_a": labels.to_numpy()[ia],
            "label_b": labels.to_numpy()[ib],
            "group_a": ga,
            "group_b": gb,
            "leak": ga != gb if groups is not None else False,
        }
    )
    ja, jb = tr_idx[across[:, 0]], te_idx[across[:, 1]]
    test_dups = pd.DataFrame(
        {
            "set": "train-test",
            "id_a": ids[ja],
            "id_b": test_ids[jb],
            "kind": np.where(train_sha[ja] == test_sha[jb], "exact", "near"),
            "distance": across[:, 2],
            "label_a": labels.to_numpy()[ja],
            "label_b": None,
            "group_a": None if groups is None else np.asarray(groups)[ja].astype(str),
            "group_b": None,
            "leak": False,
        }
    )
    cols = ["set", "id_a", "id_b", "kind", "distance", "label_a", "label_b", "group_a", "group_b", "leak"]
    dups = pd.concat([train_dups[cols], test_dups[cols]], ignore_index=True)
    write_csv(out / "duplicates.csv", dups)

    # colour statistics per class (multilabel: per label; regression: per quartile of the first target)
    color_rows = []
    ok_rows, n_px, px_sum, px_sq = train.ok, train.n.astype(np.float64), train.sum, train.sumsq
    for c, member in colour_groups(table):
        sel = member & ok_rows
        if not sel.any():
            continue
        n = n_px[sel].sum()
        mean = px_sum[sel].sum(0) / n
        std = np.sqrt(np.maximum(px_sq[sel].sum(0) / n - mean**2, 0))
        color_rows.append(
            {
                "class": c,
                "images": int(sel.sum()),
                **{f"mean_{ch}": mean[k] for k, ch in enumerate("RGB")},
                **{f"std_{ch}": std[k] for k, ch in enumerate("RGB")},
            }
        )
    colors = pd.DataFrame(color_rows)
    write_csv(out / "class_colour.csv", colors)
    bad = pd.DataFrame(train.bad + test.bad, columns=["path", "error"])
    if len(bad):
        write_csv(out / "unreadable.csv", bad)

    ok = info[info["ok"]]
    n_gray = int(ok["gray"].sum()) if len(ok) else 0
    target_lines, target_plots, count_table = TARGET_VIEWS[table.task](out, table)
    plots = target_plots + _plots(out, labels, table.classes, groups, info, table)
    leaks = dups[dups["leak"]]
    summary = [
        *target_lines,
        (
            f"{len(set(groups))} groups, {pd.Series(groups).value_counts().min()}-{pd.Series(groups).value_counts().max()} "
            "images per group"
        )
        if groups is not None
        else "no group column",
        (
            f"sizes: {ok['width'].min()}-{ok['width'].max()} wide, {ok['height'].min()}-{ok['height'].max()} high; "
            f"{n_gray} grayscale stored as RGB"
        )
        if len(ok)
        else "no readable images",
        f"{len(bad)} unreadable or truncated files" + (f" (see {out / 'unreadable.csv'})" if len(bad) else ""),
        f"duplicates: {int((dups['set'] == 'train').sum())} within train, {int((dups['set'] == 'train-test').sum())} "
        f"train-test, {len(leaks)} across groups (leaks)"
        + (f" e.g. {leaks.iloc[0]['id_a']} ~ {leaks.iloc[0]['id_b']}" if len(leaks) else ""),
    ]
    if table.scheme is not None:
        summary += attribute_lines(table)
        write_csv(out / "attributes.csv", attribute_counts(table)[1].reset_index())
    esc = html.escape
    source = data.train_csv if data.layout is None else "data.layout rows"
    body = (
        [f"<h1>EDA: {esc(str(source))}</h1>", "<ul>"]
        + [f"<li><pre>{esc(s)}</pre></li>" if "\n" in s else f"<li>{esc(s)}</li>" for s in summary]
        + ["</ul>"]
    )
    for title, name, _ in plots:
        body.append(f'<h2>{esc(title)}</h2><img src="{esc(name)}" alt="{esc(title)}">')
    body.append("<h2>per-class RGB mean/std (0-255)</h2>" + colors.to_html(index=False, float_format="%.1f"))
    body.append("<h2>targets</h2>" + count_table.to_html(index=False, float_format="%.4g"))
    body.append("<h2>unreadable / truncated files</h2>" + (bad.to_html(index=False) if len(bad) else "<p>none</p>"))
    body.append(
        "<h2>duplicates (first 200; all in duplicates.csv)</h2>"
        + (dups.head(200).to_html(index=False) if len(dups) else "<p>none</p>")
    )
    page = (
        '<!doctype html><html><head><meta charset="utf-8"><title>comp eda</title><style>body{font-family:sans-serif}'
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    html_path = write_text(out / "eda.html", page)
    figures = {Path(name).stem: fig for _, name, fig in plots}
    return EdaResult(summary, html_path, dups, bad, n_gray, [name for _, name, _ in plots], figures=figures)
