"""What ``comp eda`` shows of the targets, per task: class counts; label frequency and co-occurrence; the
target's distribution and its spread within groups; and, for labels made of attributes, each attribute's
counts and their joint distribution."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from comp.data._table import TrainTable
from comp.run import atomic_write, write_csv

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Plot = tuple[str, str, "Figure"]  # (title, PNG file name beside eda.html, the figure the API returns)


def save_plot(fig: Figure, path: Path, title: str) -> Plot:
    """Write ``fig`` as ``path`` (PNG) and keep it: the API hands the figure back, drawn, for a notebook."""
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=90, bbox_inches="tight"))
    return title, path.name, fig


def attribute_counts(table: TrainTable) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """Rows per value of each attribute (scoring bins) and the joint distribution: the first attribute's values
    as rows, every combination of the others as columns."""
    assert table.scheme is not None and table.attributes is not None
    values = {
        a.name: pd.Categorical(
            np.asarray(a.values, dtype=object)[table.attributes.score[a.name]], categories=list(a.values)
        )
        for a in table.scheme.attributes
    }
    counts = {n: pd.Series(v).value_counts().reindex(v.categories).fillna(0).astype(int) for n, v in values.items()}
    names = list(values)
    frame = pd.DataFrame(values)
    if len(names) == 1:
        return counts, counts[names[0]].to_frame("rows").T
    joint = pd.crosstab(frame[names[0]], [frame[n] for n in names[1:]], dropna=False)
    joint.columns = ["_".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in joint.columns]
    return counts, joint


def attribute_lines(table: TrainTable) -> list[str]:
    """Per-attribute counts (and training-bin counts where they differ) and the joint table, as text."""
    assert table.scheme is not None and table.attributes is not None
    counts, joint = attribute_counts(table)
    lines = []
    for attr in table.scheme.attributes:
        line = f"attribute {attr.name}: " + ", ".join(f"{v} {n}" for v, n in counts[attr.name].items())
        train = table.attributes.train[attr.name]
        if not np.array_equal(train, table.attributes.score[attr.name]):
            moved = int((train != table.attributes.score[attr.name]).sum())
            per = np.bincount(train, minlength=len(attr.values))
            line += (
                " (training bins: "
                + ", ".join(f"{v} {n}" for v, n in zip(attr.values, per))
                + f"; {moved} rows trained as another value)"
            )
        lines.append(line)
    if joint.shape[1] <= 30:
        lines.append("joint distribution (rows per combination):\n" + joint.to_string())
    return lines


def attribute_plot(out: Path, table: TrainTable) -> list[Plot]:
    from matplotlib.figure import Figure

    counts, joint = attribute_counts(table)
    fig = Figure(figsize=(max(6, 0.6 * joint.shape[1] + 3 * len(counts)), max(3, 0.4 * joint.shape[0] + 2)))
    axes = fig.subplots(
        1, len(counts) + 1, gridspec_kw={"width_ratios": [1] * len(counts) + [max(2, joint.shape[1] / 3)]}
    )
    for ax, (name, c) in zip(axes, counts.items()):
        ax.bar([str(v) for v in c.index], c.to_numpy())
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=90)
    ax = axes[-1]
    im = ax.imshow(joint.to_numpy(), cmap="viridis")
    for (r, c), n in np.ndenumerate(joint.to_numpy()):
        ax.text(c, r, str(n), ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(joint.shape[1]), joint.columns, rotation=90)
    ax.set_yticks(range(joint.shape[0]), joint.index)
    fig.colorbar(im, ax=ax)
    ax.set_title("joint distribution")
    return [save_plot(fig, out / "attributes.png", "attributes: counts and joint distribution")]


# ---------------------------------------------------------------- the targets, per task


def row_labels(table: TrainTable) -> pd.Series:
    """Each row's target as text: its class, its space-separated tags, or its value(s)."""
    t = table.targets
    if table.task == "classification":
        return pd.Series(np.asarray(table.classes, dtype=object)[t]).astype(str)
    if table.task == "multilabel":
        names = np.asarray(table.classes, dtype=object)
        return pd.Series([" ".join(names[row > 0.5]) for row in t])
    return pd.Series([", ".join(f"{v:.4g}" for v in row) for row in t])


def colour_groups(table: TrainTable) -> list[tuple[str, np.ndarray]]:
    """(name, row mask) of the row groups whose colour statistics are compared: classes, labels, or quartiles."""
    t = table.targets
    if table.task == "classification":
        return [(c, t == i) for i, c in enumerate(table.classes)]
    if table.task == "multilabel":
        return [(c, t[:, j] > 0.5) for j, c in enumerate(table.classes)]
    y = t[:, 0]
    edges = np.quantile(y, [0.25, 0.5, 0.75])
    q = np.searchsorted(edges, y, side="right")
    name = table.classes[0]
    return [(f"{name} quartile {k + 1}", q == k) for k in range(4)]


def class_view(out: Path, table: TrainTable) -> tuple[list[str], list[Plot], pd.DataFrame]:
    from matplotlib.figure import Figure

    counts = pd.Series(np.bincount(table.targets, minlength=len(table.classes)), index=table.classes)
    imbalance = counts.max() / max(1, counts.min())
    fig = Figure(figsize=(max(4, 0.4 * len(counts)), 3))
    ax = fig.subplots()
    ax.bar([str(c) for c in counts.index], counts.to_numpy())
    ax.set_title("images per class")
    ax.tick_params(axis="x", rotation=90)
    line = (
        f"{len(table.df)} train images, {len(counts)} classes, imbalance ratio {imbalance:.2f} (largest/smallest class)"
    )
    return (
        [line],
        [save_plot(fig, out / "class_counts.png", "class counts")],
        pd.DataFrame({"class": counts.index, "images": counts.to_numpy()}),
    )


def label_cooccurrence(table: TrainTable) -> pd.DataFrame:
    """Images holding both labels, for every pair (the diagonal: images holding the label)."""
    Y = (table.targets > 0.5).astype(np.int64)
    return pd.DataFrame(Y.T @ Y, index=table.classes, columns=table.classes)


def multilabel_view(out: Path, table: TrainTable) -> tuple[list[str], list[Plot], pd.DataFrame]:
    from matplotlib.figure import Figure

    Y = table.targets > 0.5
    n = len(Y)
    freq = pd.DataFrame({"label": table.classes, "images": Y.sum(0), "rate": Y.mean(0)})
    co = label_cooccurrence(table)
    write_csv(out / "label_cooccurrence.csv", co.rename_axis("label").reset_index())
    per_image = Y.sum(1)
    rarest = freq.sort_values("images").iloc[0]
    lines = [
        f"{n} train images, {len(table.classes)} labels, {per_image.mean():.2f} labels per image on average, "
        f"{int((per_image == 0).sum())} with no label; rarest label {rarest['label']!r} on {int(rarest['images'])} "
        f"images ({rarest['rate']:.2%})",
    ]
    fig = Figure(figsize=(max(8, 0.5 * len(co) + 4), max(3, 0.35 * len(co) + 1)))
    a1, a2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    a1.bar([str(c) for c in table.classes], freq["images"].to_numpy())
    a1.set_title("images per label")
    a1.tick_params(axis="x", rotation=90)
    # co-occurrence as P(column label | row label): which labels come together
    cond = co.to_numpy() / np.maximum(np.diag(co.to_numpy())[:, None], 1)
    im = a2.imshow(cond, cmap="viridis", vmin=0, vmax=1)
    a2.set_xticks(range(len(co)), co.columns, rotation=90)
    a2.set_yticks(range(len(co)), co.index)
    a2.set_title("P(column label | row label)")
    fig.colorbar(im, ax=a2)
    return lines, [save_plot(fig, out / "labels.png", "label frequency and co-occurrence")], freq


def regression_view(out: Path, table: TrainTable) -> tuple[list[str], list[Plot], pd.DataFrame]:
    from matplotlib.figure import Figure

    y = table.targets
    rows, lines = [], []
    for j, name in enumerate(table.classes):
        col = y[:, j]
        row = {"target": name, "min": col.min(), "max": col.max(), "mean": col.mean(), "std": col.std()}
        if table.groups is not None:  # how much of the spread lies between groups: what group k-fold keeps apart
            by = pd.Series(col).groupby(np.asarray(table.groups).astype(str))
            row["within_group_std"] = float(np.sqrt((by.transform("mean") - col).pow(2).mean()))
        rows.append(row)
        lines.append(
            f"target {name}: {row['min']:.4g} to {row['max']:.4g}, mean {row['mean']:.4g}, std {row['std']:.4g}"
            + (f", std within groups {row['within_group_std']:.4g}" if "within_group_std" in row else "")
        )
    lines.insert(0, f"{len(y)} train images, {len(table.classes)} numeric target(s)")
    k = len(table.classes)
    fig = Figure(figsize=(4 * k + (5 if table.groups is not None else 0), 3))
    axes = fig.subplots(1, k + (1 if table.groups is not None else 0), squeeze=False)[0]
    for j, name in enumerate(table.classes):
        axes[j].hist(y[:, j], bins=min(50, max(5, len(y) // 10)))
        axes[j].set_title(f"{name}")
    if table.groups is not None:  # the first target per group, largest groups first
        frame = pd.DataFrame({"g": np.asarray(table.groups).astype(str), "y": y[:, 0]})
        top = frame["g"].value_counts().index[:30]
        axes[-1].boxplot([frame.loc[frame["g"] == g, "y"].to_numpy() for g in top])
        axes[-1].set_xticks(range(1, len(top) + 1), list(top), rotation=90, fontsize=6)
        axes[-1].set_title(f"{table.classes[0]} by group (largest 30)")
    return lines, [save_plot(fig, out / "targets.png", "target distribution (and by group)")], pd.DataFrame(rows)


TARGET_VIEWS = {"classification": class_view, "multilabel": multilabel_view, "regression": regression_view}
