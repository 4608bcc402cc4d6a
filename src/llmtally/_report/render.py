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
from decimal import Decimal
from typing import Any, TextIO

from .._core.money import format_usd
from .._core.text import printable
from .._core.usage import KINDS
from . import FIELDS, Report, ReportRow, spend_over_time, totals

__all__ = ["render", "write_chart"]

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


def _csv_text(value: object) -> object:
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
        doc = {
            "by": list(by),
            "currency": currency,
            "rates": {code: str(rate) for code, rate in sorted(rates.items())},
            "rows": [r.as_dict(by) for r in rows],
            "totals": totals(rows).as_dict([]),
        }
        json.dump(doc, out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        fields = [*by, *FIELDS, "cost", "currency", "unconverted"]
        text = {*by, "currency", "unconverted"}
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in _progress(rows, "writing CSV"):
            cells = {**r.as_dict(by), "unconverted": _unconverted(r.unconverted)}
            writer.writerow({k: _csv_text(v) if k in text else v for k, v in cells.items()})
        return
    _table(rows, by, out, currency, rates)


def _progress(rows: Sequence[ReportRow], what: str) -> Any:
    if len(rows) < 10_000 or not sys.stderr.isatty():
        return rows
    from rich.progress import track

    return track(rows, description=what, console=None, transient=True)


def _table(
    rows: Sequence[ReportRow], by: Sequence[str], out: TextIO, currency: str, rates: Mapping[str, Decimal]
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_footer=True, header_style="bold", footer_style="bold")
    total = totals(rows)
    # The requests, prompt and completion always; every other kind only where some call had it
    # (CSV and JSON keep every column).
    always = {"requests", "failed_requests", "prompt_tokens", "completion_tokens"}
    numbers = [(name, label) for name, label in _NUMBERS if name in always or getattr(total, name)]
    for i, key in enumerate(by):
        # Folded, never cut short: a name is shown whole, so one cannot pass for another.
        table.add_column(key, footer="Total" if i == 0 else "", overflow="fold")
    for name, label in numbers:
        table.add_column(label, justify="right", footer=f"{getattr(total, name):,}")
    table.add_column(f"Cost ({currency})", justify="right", footer=_money(total.cost, currency))
    if total.unconverted:
        table.add_column("Not converted", justify="right", footer=_unconverted(total.unconverted))
    table.add_column("Unpriced", justify="right", footer=f"{total.unpriced_requests:,}")
    table.add_column("Estimated", justify="right", footer=f"{total.estimated_requests:,}")
    for r in rows:
        table.add_row(
            *(Text(printable(key)) for key in r.keys),
            *(f"{getattr(r, name):,}" for name, _ in numbers),
            _money(r.cost, currency),
            *([_unconverted(r.unconverted)] if total.unconverted else []),
            f"{r.unpriced_requests:,}" if r.unpriced_requests else "",
            f"{r.estimated_requests:,}" if r.estimated_requests else "",
        )
    # Strings too are plain text: no markup, emoji codes or highlighting read into what is printed.
    console = Console(
        file=out,
        width=max(100, 14 * (len(by) + len(numbers) + 3)),
        force_terminal=False,
        markup=False,
        emoji=False,
        highlight=False,
    )
    console.print(table)
    if total.unpriced_requests:
        console.print(
            f"{total.unpriced_requests} calls have no known price: their tokens are counted, "
            "their cost is not in the totals."
        )
    if total.estimated_requests:
        console.print(
            f"{total.estimated_requests} calls carried no usage; their tokens were counted offline."
        )
    if rates:
        said = ", ".join(f"1 {code} = {format_usd(rate)} {currency}" for code, rate in sorted(rates.items()))
        console.print(f"Costs recorded in other currencies converted at: {said}.")
    if total.unconverted:
        codes = sorted(printable(code) for code in total.unconverted)
        console.print(
            f"No rate to {currency} for {', '.join(codes)}: those calls are counted "
            f"as unpriced (set LLMTALLY_RATES or --rates, e.g. {codes[0]}=RATE)."
        )


def write_chart(
    path: str,
    *,
    ledger: str,
    since: Any,
    until: Any,
    stack_by: str | None,
    currency: str | None = None,
    rates: Mapping[str, object] | None = None,
) -> None:
    """Spend over time, stacked by ``stack_by``, as a PNG or a self-contained HTML page (inline SVG)."""
    if not (path.endswith(".png") or path.endswith(".html")):
        raise ValueError(f"--chart writes .png or .html files, not {path!r}")
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is in the report extra
        raise RuntimeError('charts need matplotlib: pip install "llmtally[report]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bucket, rows = spend_over_time(
        ledger, since=since, until=until, stack_by=stack_by, currency=currency, rates=rates
    )
    times = sorted({r.keys[0] for r in rows})
    series: dict[str, dict[str, float]] = {}
    for r in rows:
        name = r.keys[1] if len(r.keys) > 1 else "all"
        series.setdefault(name, {})[r.keys[0]] = float(r.cost)
    # Largest spenders at the bottom of the stack.
    order = sorted(series, key=lambda n: -sum(series[n].values()))
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
                # Handles and labels given together: a label starting with "_" is still shown.
                _literal(ax.legend(bars, [printable(n) for n in order], fontsize=8).get_texts())
            fig.tight_layout()
            if path.endswith(".png"):
                fig.savefig(path, format="png")
            else:
                buf = io.StringIO()
                fig.savefig(buf, format="svg")
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
