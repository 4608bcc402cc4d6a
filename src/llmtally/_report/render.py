"""Report output: a rich table, CSV, JSON, and the spend-over-time chart (PNG or HTML).

Every value read from the ledger (model, provider, scope, tag, price source, currency) came from a
server's reply or the user's code, so it is plain text in every format: never rich markup, never a
terminal control sequence (``_core.text.printable`` shows those as escapes), never a spreadsheet
formula, never mathtext or TeX in a chart, never HTML. JSON keeps the values exact: its escapes
already make them inert.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, TextIO

from .._core.money import format_usd
from .._core.text import printable
from .._core.usage import KINDS
from ..ledger._read import LATENCY_PRECISION
from . import FIELDS, Report, ReportRow, spend_over_time, totals

__all__ = ["cost_cell", "csv_text", "readable", "render", "write_chart"]

#: The table's number columns: the requests, then every token kind (usage.KINDS).
_NUMBERS = (
    ("requests", "Requests"),
    ("failed_requests", "Failed"),
    *((k.name, k.column) for k in KINDS),
)


#: What a spreadsheet reads as the start of a formula (OWASP's list, and its full-width forms that
#: some spreadsheets take too).
_FORMULA = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
#: A plain number, which a spreadsheet reads as a number however it starts.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _calls(n: int, one: str = "", many: str = "") -> str:
    """``1 call has`` / ``3 calls have``: a count of calls, and the verb that agrees with it."""
    noun = "call" if n == 1 else "calls"
    verb = one if n == 1 else many
    return f"{n:,} {noun} {verb}".rstrip()


def csv_text(value: object) -> object:
    """A text cell a spreadsheet shows as written (a ``'`` before what would start a formula)."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    if text.startswith(_FORMULA) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _money(value: Any, currency: str = "USD") -> str:
    return f"${format_usd(value)}" if currency == "USD" else f"{format_usd(value)} {currency}"


def _unconverted(amounts: Mapping[str, Decimal]) -> str:
    return "; ".join(f"{format_usd(amount)} {printable(code)}" for code, amount in sorted(amounts.items()))


def _money_of(rows: Sequence[ReportRow]) -> tuple[str, Mapping[str, Decimal]]:
    """The report's currency and the rates it used (a plain list of rows: its rows' currency)."""
    if isinstance(rows, Report):
        return rows.currency, rows.rates
    return (rows[0].currency if rows else "USD"), {}


def render(rows: Sequence[ReportRow], by: Sequence[str], fmt: str, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    currency, rates = _money_of(rows)
    if fmt == "json":
        total = totals(rows)
        if isinstance(rows, Report):
            total.latency_p50_ms, total.latency_p95_ms = rows.latency
        doc = {
            "by": list(by),
            "currency": currency,
            "rates": {code: str(rate) for code, rate in sorted(rates.items())},
            # Latency percentiles: exact (PostgreSQL), from a histogram (SQLite), or not read.
            "latency_exact": rows.latency_exact if isinstance(rows, Report) else None,
            "rows": [r.as_dict(by) for r in rows],
            "totals": total.as_dict([]),
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        # An unknown cost is an empty cell, the unpriced count beside it; exact amounts throughout.
        fields = [*by, *FIELDS, "cost", "currency", "unconverted", "latency_p50_ms", "latency_p95_ms"]
        text = {*by, "currency", "unconverted"}
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for r in _progress(rows, "writing CSV"):
            cells = {**r.as_dict(by), "unconverted": _unconverted(r.unconverted)}
            writer.writerow({k: csv_text(v) if k in text else v for k, v in cells.items()})
        return
    _table(rows, by, out, currency, rates)


def _progress(rows: Sequence[ReportRow], what: str) -> Any:
    if len(rows) < 10_000 or not sys.stderr.isatty():
        return rows
    from rich.progress import track

    return track(rows, description=what, console=None, transient=True)


#: Short headers, for a terminal too narrow for the long ones.
_SHORT = {
    "Requests": "Req",
    "Failed": "Fail",
    "Prompt": "In",
    "Completion": "Out",
    "Cache write": "CacheW",
    "Cache write 1h": "CacheW1h",
    "Reasoning": "Reas",
    "Unpriced": "Unpr",
    "Estimated": "Est",
    "Not converted": "Unconv",
}
#: Which columns a narrow terminal keeps, most wanted first: the groups and the cost always, then
#: the requests and how many have no price, the input and output tokens, the latency, failures,
#: the cache, the estimates, then the other kinds. Dropped from the end until the table fits.
_PRIORITY = (
    "cost",
    "requests",
    "unpriced_requests",
    "unconverted",
    "prompt_tokens",
    "completion_tokens",
    "p50",
    "p95",
    "failed_requests",
    "cached_tokens",
    "cache_write_tokens",
    "estimated_requests",
    "reasoning_tokens",
)


@dataclass
class _Column:
    name: str
    header: str
    cells: list[str]
    footer: str
    #: The same cells shorter (compact numbers), for a narrow terminal.
    short: list[str] | None = None
    short_footer: str | None = None
    style: str = ""
    #: The widest the column may be (names cut short beyond it), if limited.
    max_width: int | None = None

    def width(self, compact: bool) -> int:
        from rich.cells import cell_len

        if self.max_width is not None:
            return self.max_width

        header = _SHORT.get(self.header, self.header) if compact else self.header
        cells = self.short if compact and self.short is not None else self.cells
        footer = self.short_footer if compact and self.short_footer is not None else self.footer
        return max(cell_len(t) for t in (header, footer, *cells))


def readable(amount: Decimal, currency: str) -> str:
    """Money rounded for reading: cents from one unit up, else four significant digits (CSV and
    JSON keep the exact amounts)."""
    if not amount:
        shown = "0"
    elif abs(amount) >= 1:
        shown = f"{amount.quantize(Decimal('0.01'), ROUND_HALF_EVEN):,.2f}"
    else:
        q = amount.quantize(Decimal(1).scaleb(amount.adjusted() - 3), ROUND_HALF_EVEN)
        shown = format_usd(q)
    return f"${shown}" if currency == "USD" else f"{shown} {printable(currency)}"


def cost_cell(row: ReportRow, currency: str) -> str:
    """A group's cost: empty when no call has a known price (the Unpriced column counts them),
    "≥ amount" when some have none."""
    known = row.known_cost
    if known is None:
        return ""
    return ("≥ " if row.cost_is_partial else "") + readable(known, currency)


def _exact(row: ReportRow, currency: str) -> str:
    """A cost cell as it would read unrounded."""
    cell = cost_cell(row, currency)
    return cell and cell.replace(readable(row.cost, currency), _money(row.cost, currency))


def _compact(n: int) -> str:
    """12,345 -> 12.3k: a count shortened for a narrow terminal."""
    for size, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(n)


def _ms(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 10_000:
        return f"{value / 1000:.0f} s"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _terminal(out: TextIO) -> tuple[int | None, bool]:
    """(width, styled) of the output: a terminal's width (COLUMNS, else its size) and colour unless
    NO_COLOR is set or TERM is dumb; piped output: no width limit, no escape sequence at all."""
    import os
    import shutil

    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not tty:
        return None, False
    width = None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    else:
        try:
            width = os.get_terminal_size(out.fileno()).columns
        except (AttributeError, ValueError, OSError):
            width = shutil.get_terminal_size().columns
    styled = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    return width, styled


def _table(
    rows: Sequence[ReportRow], by: Sequence[str], out: TextIO, currency: str, rates: Mapping[str, Decimal]
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    width, styled = _terminal(out)
    total = totals(rows)
    latency, exact = (rows.latency, rows.latency_exact) if isinstance(rows, Report) else ((None, None), None)
    columns: list[_Column] = []

    def counts(name: str, header: str, style: str = "", blank_zero: bool = False) -> None:
        values = [getattr(r, name) for r in rows]
        foot = getattr(total, name)
        columns.append(
            _Column(
                name,
                header,
                ["" if blank_zero and not v else f"{v:,}" for v in values],
                f"{foot:,}",
                ["" if blank_zero and not v else _compact(v) for v in values],
                _compact(foot),
                style,
            )
        )

    # The requests, prompt and completion always; failures and every other kind only where some
    # call had them (CSV and JSON keep every column).
    counts("requests", "Requests")
    if total.failed_requests:
        counts("failed_requests", "Failed", "red", blank_zero=True)
    for name, label in _NUMBERS[2:]:
        if name in ("prompt_tokens", "completion_tokens") or getattr(total, name):
            counts(name, label)
    costs = [cost_cell(r, currency) for r in [*rows, total]]
    columns.append(_Column("cost", f"Cost ({printable(currency)})", costs[:-1], costs[-1], style="green"))
    if total.unconverted:
        columns.append(
            _Column(
                "unconverted",
                "Not converted",
                [_unconverted(r.unconverted) for r in rows],
                _unconverted(total.unconverted),
            )
        )
    if total.unpriced_requests:
        counts("unpriced_requests", "Unpriced", "yellow", blank_zero=True)
    if total.estimated_requests:
        counts("estimated_requests", "Estimated", blank_zero=True)
    if any(r.latency_p50_ms is not None for r in rows) or latency[0] is not None:
        mark = "" if exact else "≈"
        columns.append(_Column("p50", f"{mark}p50", [_ms(r.latency_p50_ms) for r in rows], _ms(latency[0])))
        columns.append(_Column("p95", f"{mark}p95", [_ms(r.latency_p95_ms) for r in rows], _ms(latency[1])))

    keys = [[printable(r.keys[i]) if i < len(r.keys) else "" for r in rows] for i in range(len(by))]
    key_columns = [
        _Column(key, printable(key), cells, "Total" if i == 0 else "")
        for i, (key, cells) in enumerate(zip(by, keys, strict=True))
    ]
    if width is not None:
        # The names take at most 40% of the width between them, cut short ("…") beyond it.
        cap = max(12, (width * 2 // 5) // max(1, len(key_columns)) - 3)
        for col in key_columns:
            col.max_width = cap if col.width(False) > cap else None
    compact, shown = _fit(key_columns, columns, width)
    dropped = [c.header for c in columns if c not in shown]

    table = Table(
        show_footer=True,
        header_style="bold" if styled else "",
        footer_style="bold" if styled else "",
        box=None if width is not None and width < 40 else _box(),
    )
    for col in key_columns:
        # A name is cut short ("…") only when the terminal is too narrow for it: never folded.
        table.add_column(
            col.header,
            footer=col.footer,
            no_wrap=True,
            overflow="ellipsis",
            max_width=col.max_width,
            style="cyan" if styled else "",
        )
    for col in shown:
        table.add_column(
            _SHORT.get(col.header, col.header) if compact else col.header,
            footer=(col.short_footer if compact and col.short_footer is not None else col.footer),
            justify="right",
            no_wrap=True,
            style=col.style if styled else "",
        )
    for i in range(len(rows)):
        table.add_row(
            *(Text(col.cells[i]) for col in key_columns),
            *(Text(col.short[i] if compact and col.short is not None else col.cells[i]) for col in shown),
        )
    # Strings too are plain text: no markup, emoji codes or highlighting read into what is printed.
    console = Console(
        file=out,
        width=width if width is not None else max(80, _natural(key_columns, shown, compact)),
        force_terminal=styled,
        no_color=not styled,
        color_system="auto" if styled else None,
        markup=False,
        emoji=False,
        highlight=False,
    )
    console.print(table)
    notes = []
    if total.unpriced_requests:
        notes.append(
            f"{_calls(total.unpriced_requests, 'has', 'have')} no known price: their tokens are counted, "
            "their cost is not (an empty cost: none of the group's calls has a price; ≥: only part of it "
            "is known)."
        )
    if total.estimated_requests:
        notes.append(
            f"{_calls(total.estimated_requests)} carried no usage; their tokens were counted offline."
        )
    if rates:
        said = ", ".join(f"1 {code} = {format_usd(rate)} {currency}" for code, rate in sorted(rates.items()))
        notes.append(f"Costs recorded in other currencies converted at: {said}.")
    if total.unconverted:
        codes = sorted(printable(code) for code in total.unconverted)
        notes.append(
            f"No rate to {currency} for {', '.join(codes)}: those calls are counted "
            f"as unpriced (set LLMTALLY_RATES or --rates, e.g. {codes[0]}=RATE)."
        )
    if exact is False and any(c.name == "p50" for c in shown):
        notes.append(
            f"Latency p50/p95 are approximate (within {LATENCY_PRECISION:.0%}), read from the ledger's "
            "hourly latency histogram."
        )
    if any(c not in (_exact(r, currency), "") for r, c in zip([*rows, total], costs, strict=True)):
        notes.append("Costs are rounded for reading; --format csv or json gives them exact.")
    if dropped:
        notes.append(f"Too narrow for {', '.join(dropped)}: see --format csv or json, or widen the terminal.")
    for note in notes:
        console.print(Text(note, style="dim" if styled else ""))


def _box() -> Any:
    from rich import box

    return box.HEAVY_HEAD


def _natural(keys: Sequence[_Column], columns: Sequence[_Column], compact: bool) -> int:
    """The width of the table with these columns: each cell padded by one space either side, and
    a border between columns and at both edges."""
    widths = [c.width(False) for c in keys] + [c.width(compact) for c in columns]
    return sum(w + 2 for w in widths) + len(widths) + 1


def _fit(
    keys: Sequence[_Column], columns: Sequence[_Column], width: int | None
) -> tuple[bool, list[_Column]]:
    """(compact, the columns shown) for a table no wider than ``width``: all the columns at full
    width, else shorter headers and numbers (12.3k), else without the columns of least priority
    (``_PRIORITY``); the group and cost columns always stay (the names cut short if need be)."""
    shown = list(columns)
    if width is None or _natural(keys, shown, False) <= width:
        return False, shown
    rank = {name: i for i, name in enumerate(_PRIORITY)}
    by_want = sorted(shown, key=lambda c: rank.get(c.name, len(rank)))
    while len(by_want) > 1 and _natural(keys, by_want, True) > width:
        by_want.pop()
    return True, [c for c in shown if c in by_want]


def write_chart(
    path: str,
    *,
    ledger: str,
    since: Any,
    until: Any,
    stack_by: str | None,
    currency: str | None = None,
    rates: Mapping[str, object] | None = None,
    top: int | None = None,
    where: Any = None,
) -> None:
    """Spend over time, stacked by ``stack_by``, as a PNG or a self-contained HTML page (inline SVG).

    ``top`` keeps the N largest spenders apart and stacks the rest as one "others"; the legend is
    beside the plot, never over the bars. Costs not known are not drawn as $0: the names whose calls
    have no price say "(no price)" and a note under the plot counts the calls left out."""
    if not (path.endswith(".png") or path.endswith(".html")):
        raise ValueError(f"--chart writes .png or .html files, not {path!r}")
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the report extra
        raise RuntimeError('charts need matplotlib: pip install "llmtally[report]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket, rows = spend_over_time(
        ledger, since=since, until=until, stack_by=stack_by, currency=currency, rates=rates, where=where
    )
    times = sorted({r.keys[0] for r in rows})
    series: dict[str, dict[str, float]] = {}
    priced: dict[str, int] = {}
    unpriced = 0
    for r in rows:
        name = r.keys[1] if len(r.keys) > 1 else "all"
        bucket_costs = series.setdefault(name, {})
        bucket_costs[r.keys[0]] = bucket_costs.get(r.keys[0], 0.0) + float(r.cost)
        priced[name] = priced.get(name, 0) + r.requests - r.unpriced_requests
        unpriced += r.unpriced_requests
    # Largest spenders at the bottom of the stack.
    order = sorted(series, key=lambda n: (-sum(series[n].values()), n))
    if top is not None and len(order) > top:
        others: dict[str, float] = {}
        for name in order[top:]:
            for t, v in series.pop(name).items():
                others[t] = others.get(t, 0.0) + v
        label = f"({len(order) - top} others)"
        series[label], priced[label] = others, 1
        order = [*order[:top], label]
    labels = [printable(n) + ("" if priced.get(n) else " (no price)") for n in order]
    title = f"LLM spend per {bucket}" + (f", by {stack_by}" if stack_by and len(order) > 1 else "")
    # A user's matplotlibrc may turn TeX on: a name would then be LaTeX source.
    with matplotlib.rc_context({"text.usetex": False}):
        fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
        try:
            bottom = [0.0] * len(times)
            bars = []
            for name in order:
                values = [series[name].get(t, 0.0) for t in times]
                bars.append(ax.bar(range(len(times)), values, bottom=bottom))
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
            ax.set_xticks(range(len(times)))
            _literal(ax.set_xticklabels([printable(t) for t in times], rotation=45, ha="right", fontsize=8))
            _literal([ax.set_ylabel(f"Cost ({printable(rows.currency)})"), ax.set_title(title)])
            if len(order) > 1:
                # Handles and labels given together: a label starting with "_" is still shown. Beside
                # the plot (outside its axes), so that it hides no bar.
                legend = ax.legend(
                    bars, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
                )
                _literal(legend.get_texts())
            if unpriced:
                note = f"{_calls(unpriced, 'has', 'have')} no known price: their cost is not in the bars."
                _literal([fig.text(0.01, 0.01, note, fontsize=8)])
            fig.tight_layout()
            if path.endswith(".png"):
                fig.savefig(path, format="png", bbox_inches="tight")
            else:
                buf = io.StringIO()
                fig.savefig(buf, format="svg", bbox_inches="tight")
                svg = buf.getvalue()
                # Inline SVG in HTML5 takes no XML prolog or doctype.
                svg = svg[svg.index("<svg") :]
                with open(path, "w", encoding="utf-8") as f:
                    f.write(
                        "<!doctype html><html><head><meta charset='utf-8'>"
                        f"<title>{html.escape(f'llmtally: {title}')}</title></head>"
                        f"<body>{svg}</body></html>\n"
                    )
        finally:
            plt.close(fig)


def _literal(texts: Iterable[Any]) -> None:
    """Labels that are the ledger's text as written: "$" is a dollar sign, never mathtext."""
    for text in texts:
        text.set_parse_math(False)
