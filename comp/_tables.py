"""Plain-text terminal tables for results (member scores, blends, training summaries)."""

from __future__ import annotations

import math
from numbers import Integral, Real


def _cell(value, floatfmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, Integral):
        return str(value)
    if isinstance(value, Real):
        return "nan" if math.isnan(value) else format(float(value), floatfmt)
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = ".4f") -> str:
    """Render dict rows as an aligned text table; numbers right-aligned, None shown as '-'."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    cells = [[_cell(row.get(c), floatfmt) for c in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(c), Real) and not isinstance(row.get(c), bool) for row in rows if row.get(c) is not None)
        for c in columns
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out = [line(list(columns)), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)
