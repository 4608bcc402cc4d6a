"""Report output: a rich table, CSV, JSON, and the spend-over-time chart (PNG or HTML)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TextIO

from .._core.money import format_usd
from .._core.usage import KINDS
from . import FIELDS, Report, ReportRow, spend_over_time, totals

__all__ = ["render", "write_chart"]

#: The table's number columns: the requests, then every token kind (usage.KINDS).
_NUMBERS = (
    ("requests", "Requests"),
    ("failed_requests", "Failed"),
    *((k.name, k.column) for k in KINDS),
)


def _money(value: Any, currency: str = "USD") -> str:
    return f"${format_usd(value)}" if currency == "USD" else f"{format_usd(value)} {currency}"


def _unconverted(amounts: Mapping[str, Decimal]) -> str:
    return "; ".join(f"{format_usd(amount)} {code}" for code, amount in sorted(amounts.items()))


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
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for r in _progress(rows, "writing CSV"):
            writer.writerow({**r.as_dict(by), "unconverted": _unconverted(r.unconverted)})
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

    table = Table(show_footer=True, header_style="bold", footer_style="bold")
    total = totals(rows)
    # The requests, prompt and completion always; every other kind only where some call had it
    # (CSV and JSON keep every column).
    always = {"requests", "failed_requests", "prompt_tokens", "completion_tokens"}
    numbers = [(name, label) for name, label in _NUMBERS if name in always or getattr(total, name)]
    for i, key in enumerate(by):
        table.add_column(key, footer="Total" if i == 0 else "")
    for name, label in numbers:
        table.add_column(label, justify="right", footer=f"{getattr(total, name):,}")
    table.add_column(f"Cost ({currency})", justify="right", footer=_money(total.cost, currency))
    if total.unconverted:
        table.add_column("Not converted", justify="right", footer=_unconverted(total.unconverted))
    table.add_column("Unpriced", justify="right", footer=f"{total.unpriced_requests:,}")
    table.add_column("Estimated", justify="right", footer=f"{total.estimated_requests:,}")
    for r in rows:
        table.add_row(
            *r.keys,
            *(f"{getattr(r, name):,}" for name, _ in numbers),
            _money(r.cost, currency),
            *([_unconverted(r.unconverted)] if total.unconverted else []),
            f"{r.unpriced_requests:,}" if r.unpriced_requests else "",
            f"{r.estimated_requests:,}" if r.estimated_requests else "",
        )
    console = Console(file=out, width=max(100, 14 * (len(by) + len(numbers) + 3)), force_terminal=False)
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
        console.print(
            f"No rate to {currency} for {', '.join(sorted(total.unconverted))}: those calls are counted "
            f"as unpriced (set LLMTALLY_RATES or --rates, e.g. {min(total.unconverted)}=RATE)."
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
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    bottom = [0.0] * len(times)
    for name in order:
        values = [series[name].get(t, 0.0) for t in times]
        ax.bar(range(len(times)), values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(times)))
    ax.set_xticklabels(times, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"Cost ({rows.currency})")
    ax.set_title(f"LLM spend per {bucket}" + (f", by {stack_by}" if stack_by and len(order) > 1 else ""))
    if len(order) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path.endswith(".png"):
        fig.savefig(path, format="png")
    else:
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                "<!doctype html><html><head><meta charset='utf-8'><title>llmtally spend</title></head>"
                f"<body>{buf.getvalue()}</body></html>\n"
            )
    plt.close(fig)
