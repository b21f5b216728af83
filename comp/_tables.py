"""Plain-text terminal tables for results (member scores, blends, training summaries)."""

from __future__ import annotations

import html
import math
from numbers import Integral, Real
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


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


def table_frame(rows: list[dict], columns: list[str] | None = None) -> pd.DataFrame:
    """Dict rows as a DataFrame with ``columns`` in order (every key of the rows when None)."""
    import pandas as pd

    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    df = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    for c in columns:  # whole numbers with gaps (best_epoch of a CV row) stay whole: nullable Int64, not float
        values = [row.get(c) for row in rows]
        known = [v for v in values if v is not None]
        if (
            known
            and len(known) < len(values)
            and all(isinstance(v, Integral) and not isinstance(v, bool) for v in known)
        ):
            df[c] = pd.array(values, dtype="Int64")
    return df


def format_frame(df: pd.DataFrame, floatfmt: str | None = None) -> str:
    """A DataFrame as ``format_table`` renders rows: missing values as '-', numbers rounded for reading."""
    if not len(df):
        return "(no rows)"
    rows = [{c: (None if _missing(v) else v) for c, v in zip(df.columns, r)} for r in df.itertuples(index=False)]
    return format_table(rows, [str(c) for c in df.columns], floatfmt)


def _missing(v: Any) -> bool:
    import pandas as pd

    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


class Rendered:
    """A result that shows itself: a readable ``repr`` (its title and table) and an HTML view for notebooks.

    Subclasses (dataclasses with ``repr=False``) give ``table()`` as a DataFrame and may give ``title()``."""

    floatfmt: str | None = None
    empty_text = "(no rows)"

    def table(self) -> pd.DataFrame:
        raise NotImplementedError

    def title(self) -> str:
        return type(self).__name__

    def text(self) -> str:
        """The table as the CLI prints it."""
        df = self.table()
        return format_frame(df, self.floatfmt) if len(df) else self.empty_text

    def __repr__(self) -> str:
        return f"{self.title()}\n{self.text()}"

    def __str__(self) -> str:
        return self.__repr__()

    def _repr_html_(self) -> str:
        df = self.table()

        def fmt(v):
            return format(v, self.floatfmt or readable_format(v))

        body = (
            df.to_html(index=False, na_rep="-", float_format=fmt, border=0) if len(df) else f"<i>{self.empty_text}</i>"
        )
        figures = getattr(self, "figures", None) or {}  # diagnostics' plots, shown under the table
        body += "".join(figure_html(fig, name) for name, fig in figures.items())
        return f"<div><b>{html.escape(self.title())}</b>{body}</div>"


def figure_html(fig: Any, title: str = "") -> str:
    """A matplotlib Figure as an inline PNG ``<img>`` (drawn by Agg through ``savefig``, so the caller's backend
    and pyplot's figure list are never involved)."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    alt = html.escape(title)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
