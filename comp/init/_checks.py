"""``comp eda``'s checks on a sample of the training images, quick enough for a folder of any size: image sizes,
grayscale stored as RGB, near duplicates that sit in different groups, and classes with fewer groups than folds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from comp.data._table import TrainTable
from comp.diagnostics._eda import near_pairs, scan

SAMPLE = 200  # images decoded: sizes and channels settle long before; duplicates are a sample's lower bound


@dataclass
class Look:
    heights: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sampled: int = 0


def look(table: TrainTable, n_splits: int, *, seed: int = 0, sample: int = SAMPLE) -> Look:
    """Sizes and warnings from ``sample`` training images (all of them when there are fewer)."""
    rng = np.random.default_rng(seed)
    n = len(table.paths)
    idx = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    found = scan([table.paths[i] for i in idx])
    out = Look(sampled=len(idx))
    ok = np.flatnonzero(found.ok)
    out.heights = [int(h) for h in found.height[ok]]
    out.widths = [int(w) for w in found.width[ok]]
    of = f"of {len(idx)} sampled" if len(idx) < n else f"of {n}"
    if found.bad:
        out.warnings.append(
            f"{len(found.bad)} {of} images are unreadable (first: {found.bad[0]['path']}); comp eda lists them"
        )
    gray = int(found.gray[ok].sum())
    if len(ok) and gray >= 0.9 * len(ok):
        out.warnings.append(
            f"{gray} {of} images are grayscale stored as RGB; --set models.0.in_chans=1 trains on one channel"
        )
    if table.groups is not None and len(ok) > 1:
        keep = idx[ok]
        hashes = found.dhash[ok]
        leaks = [
            (a, b)
            for a, b, _ in near_pairs(hashes, hashes, 3, same=True)
            if table.groups[keep[a]] != table.groups[keep[b]]
        ]
        if leaks:
            a, b = keep[leaks[0][0]], keep[leaks[0][1]]
            out.warnings.append(
                f"{len(leaks)} near-duplicate pairs {of} images sit in different groups (e.g. {table.paths[a].name} in "
                f"{table.groups[a]!r} ~ {table.paths[b].name} in {table.groups[b]!r}): a leak group k-fold cannot see; "
                "run comp eda for every pair"
            )
    if table.task == "classification" and table.targets.ndim == 1:
        groups = table.groups if table.groups is not None else np.arange(n)
        per_class = pd.DataFrame({"y": table.targets, "g": groups}).groupby("y")["g"].nunique()
        thin = [table.classes[int(c)] for c, k in per_class.items() if k < n_splits]
        if thin:
            out.warnings.append(
                f"{len(thin)} classes have fewer groups than the {n_splits} folds ({', '.join(map(str, thin[:5]))}): "
                "some validation folds will miss them"
            )
    return out
