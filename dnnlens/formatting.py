"""Units and tables, once: every number dnnlens prints goes through here.

Pipeline position: a leaf. Analysis, roofline, hardware probe, verification and the report
build rows of *data*; this module turns them into text (a terminal table drawn by ``rich``)
or HTML (a plain ``<table>``), and turns numbers into text with their unit.

The units convention, stated once (docs/units.md repeats it for readers):

* **sizes** are decimal SI, as disk and memory vendors print them and as a roofline's
  bandwidth is given: 1 kB = 1,000 B, 1 MB = 10^6 B, 1 GB = 10^9 B, 1 TB = 10^12 B;
* **rates** take the same prefixes: 1 GMAC/s = 10^9 MACs per second, 1 GB/s = 10^9 B/s;
* **times** are in ns, µs, ms or s, whichever keeps 1 to 999 before the point;
* **counts** (weights, MACs, values) are exact integers with thousands separators;
* three significant digits wherever a value is rounded (sizes, rates, times).

Imports nothing of ours, so any module may use it.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: Decimal SI prefixes for sizes and rates, largest first.
SI_PREFIXES: tuple[tuple[float, str], ...] = (
    (1e15, "P"),
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
)
#: Time units, largest first.
TIME_UNITS: tuple[tuple[float, str], ...] = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
#: One sentence naming the convention, for notes under tables and pages.
UNITS_NOTE = (
    "sizes and rates in decimal SI units (1 kB = 1,000 B, 1 GB/s = 10^9 B/s); "
    "times in ns, µs, ms, s"
)
#: What an empty cell shows (a layer without MACs has no attainable rate).
DASH = "-"


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------
def _sig3(value: float) -> str:
    """Three significant digits, thousands separators, no exponent (``67.6``, ``1,230``)."""
    if value == 0:
        return "0"
    rounded = float(f"{value:.3g}")  # 999.96 -> 1000.0: the digits follow the rounded value
    digits = max(0, 2 - math.floor(math.log10(abs(rounded))))
    return f"{rounded:,.{digits}f}"


def count(n: int | float) -> str:
    """An exact count with thousands separators: ``338,112``."""
    return f"{int(n):,}"


def si(value: float, unit: str) -> str:
    """A value with a decimal SI prefix and three significant digits: ``274 GMAC/s``."""
    if not math.isfinite(value):
        return f"{value} {unit}"
    for factor, prefix in SI_PREFIXES:
        if abs(value) >= factor * 0.9995:  # 999,950 reads as 1 M, never as 1,000 k
            return f"{_sig3(value / factor)} {prefix}{unit}"
    return f"{_sig3(value)} {unit}"


def size(nbytes: float) -> str:
    """Bytes in decimal SI units: ``512 B``, ``416 kB``, ``97.5 MB``, ``276 TB``."""
    if abs(nbytes) < 1000:
        return f"{int(nbytes)} B"
    return si(nbytes, "B")


def size_exact(nbytes: int) -> str:
    """A size with its exact byte count: ``416 kB (415,248 B)``; small ones just ``512 B``."""
    return size(nbytes) if abs(nbytes) < 1000 else f"{size(nbytes)} ({int(nbytes):,} B)"


def rate(value: float, unit: str = "MAC/s") -> str:
    """A rate: ``274 GMAC/s``, ``49.3 GB/s``."""
    return si(value, unit)


def duration(seconds: float) -> str:
    """A time in the unit that keeps 1 to 999 before the point: ``67.6 ms``, ``10.6 µs``."""
    if seconds == 0:
        return "0 s"
    if not math.isfinite(seconds):
        return f"{seconds} s"
    for factor, unit in TIME_UNITS:
        if abs(seconds) >= factor * 0.9995:
            return f"{_sig3(seconds / factor)} {unit}"
    return f"{_sig3(seconds / 1e-9)} ns"


@dataclass(frozen=True)
class Scale:
    """One unit for a whole column, named once in its header: ``bytes moved (MB)`` over
    ``3.85``, ``0.410``, ``125``, so the digits compare at a glance."""

    unit: str
    factor: float

    def __call__(self, value: float) -> str:
        return "0" if value == 0 else _sig3(value / self.factor)


def _scale(largest: float, units: Sequence[tuple[float, str]]) -> Scale:
    for factor, unit in units:
        if abs(largest) >= factor * 0.9995:
            return Scale(unit, factor)
    return Scale(units[-1][1], units[-1][0])


def size_scale(largest: float) -> Scale:
    """The size unit for a column whose largest value is ``largest`` bytes."""
    return _scale(largest, ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B")))


def time_scale(largest: float) -> Scale:
    """The time unit for a column whose largest value is ``largest`` seconds."""
    return _scale(largest, TIME_UNITS)


def percent(fraction: float) -> str:
    """``0.116`` -> ``11.6%``."""
    return f"{100 * fraction:.1f}%"


def number(value: float, digits: int = 3) -> str:
    """A plain float to ``digits`` significant digits (intensities, ratios): ``19.5``."""
    return f"{value:.{digits}g}"


def shape(dims: Sequence[Any]) -> str:
    """A shape on one line, as PyTorch prints it: ``(1, 64, 112, 112)``, ``(392,)``."""
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    """One column: its header (units belong here, not in every cell) and its alignment.
    Numbers are right-aligned so their digits line up; text is left-aligned."""

    header: str
    align: Literal["left", "right"] = "right"

    @property
    def numeric(self) -> bool:
        return self.align == "right"


def left(header: str) -> Column:
    return Column(header, "left")


def right(header: str) -> Column:
    return Column(header, "right")


Cell = Any
Row = Sequence[Cell]


def text_table(
    columns: Sequence[Column], rows: Sequence[Row], *, footer: Row | None = None, indent: int = 0
) -> str:
    """A terminal table drawn by ``rich``: a header, a rule, the rows, and a rule and the
    ``footer`` (totals) when given. Never wraps or truncates a cell (the table is as wide as
    it needs), carries no colour codes, and has no trailing spaces, so it pipes, diffs and
    pastes cleanly."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        box=box.SIMPLE,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        show_footer=footer is not None,
    )
    for i, column in enumerate(columns):
        table.add_column(
            column.header,
            justify=column.align,
            no_wrap=True,
            footer=str(footer[i]) if footer is not None else "",
        )
    for row in rows:
        table.add_row(*(str(c) for c in row))
    buffer = io.StringIO()
    # A console far wider than any table: rich then never squeezes a column.
    # force_jupyter=False: inside a notebook rich would otherwise display HTML itself.
    Console(
        file=buffer,
        width=100_000,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        highlight=False,
        emoji=False,
    ).print(table)
    pad = " " * indent
    lines = [pad + line.rstrip() for line in buffer.getvalue().splitlines()]
    return "\n".join(line if line.strip() else "" for line in lines).rstrip("\n")


def key_value_table(pairs: Sequence[tuple[str, Cell]], indent: int = 0) -> str:
    """Labels and values in two aligned columns, no header (a summary block)."""
    width = max((len(k) for k, _ in pairs), default=0)
    pad = " " * indent
    return "\n".join(f"{pad}{k:<{width}} {v}".rstrip() for k, v in pairs)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_table(
    columns: Sequence[Column],
    rows: Sequence[Row],
    *,
    footer: Row | None = None,
    row_classes: Sequence[str] | None = None,
    row_titles: Sequence[str] | None = None,
    css_class: str = "",
) -> str:
    """An HTML ``<table>``: numeric columns get ``class="n"`` (right-aligned, one line),
    text columns ``class="l"``. Cells are escaped; a cell of type :class:`Markup` is not."""

    def cls(column: Column) -> str:
        return ' class="n"' if column.numeric else ' class="l"'

    head = "".join(f"<th{cls(c)}>{esc(c.header)}</th>" for c in columns)
    body = []
    for n, row in enumerate(rows):
        attrs = ""
        if row_classes and row_classes[n]:
            attrs += f' class="{esc(row_classes[n])}"'
        if row_titles and row_titles[n]:
            attrs += f' title="{esc(row_titles[n])}"'
        cells = "".join(f"<td{cls(c)}>{_cell_html(v)}</td>" for c, v in zip(columns, row))
        body.append(f"<tr{attrs}>{cells}</tr>")
    foot = ""
    if footer is not None:
        foot = (
            "<tfoot><tr>"
            + "".join(f"<td{cls(c)}>{_cell_html(v)}</td>" for c, v in zip(columns, footer))
            + "</tr></tfoot>"
        )
    klass = f' class="{esc(css_class)}"' if css_class else ""
    return (
        f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>{foot}</table>"
    )


class Markup(str):
    """Text that is already HTML (a link, a nested element): :func:`html_table` keeps it."""


def _cell_html(value: Any) -> str:
    return str(value) if isinstance(value, Markup) else esc(value)


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------
def did_you_mean(name: str, choices: Sequence[str], limit: int = 3) -> str:
    """`` (did you mean 'resnet18'?)`` for the closest of ``choices`` to a mistyped ``name``,
    or ``""`` when nothing is close; one helper for model and device names alike."""
    import difflib

    close = difflib.get_close_matches(
        name.lower(), [c.lower() for c in choices], n=limit, cutoff=0.6
    )
    by_lower = {c.lower(): c for c in choices}
    if not close:
        return ""
    names = " or ".join(repr(by_lower[c]) for c in close)
    return f" (did you mean {names}?)"
