"""Plain-text terminal tables for results (member scores, blends, training summaries)."""

from __future__ import annotations

import math
from numbers import Integral, Real


def _cell(value, floatfmt: str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, Integral):
        return str(value)
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v):
            return "nan"
        return format(v, floatfmt or readable_format(v))
    return str(value)


def readable_format(v: float) -> str:
    """Digits a person reads: rates like 2230 img/s without decimals, scores like 0.9145 with four."""
    a = abs(v)
    if a >= 100:
        return ".0f"
    if a >= 10:
        return ".1f"
    return ".4f"


def format_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str | None = None) -> str:
    """Render dict rows as an aligned text table; numbers right-aligned and rounded for reading (or ``floatfmt``),
    None shown as '-'."""
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
