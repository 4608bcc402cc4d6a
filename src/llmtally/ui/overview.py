"""The overview page's numbers, as one JSON-ready document, from the queries of ``llmtally report``.

Every figure is a ``report()`` or ``spend_over_time()`` over the view's window and filters (rows are
``ReportRow.as_dict``, exactly what ``llmtally report --format json`` writes), so the dashboard and
the command line cannot disagree. Money stays exact (Decimal as text); ``shown`` beside it is the
amount rounded for reading as the report's table rounds it, and a cost no call of the group has a
price for is ``null`` / "unknown", never $0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .._report import Report, ReportRow, report, spend_over_time, totals
from .._report.refusals import recent_refusals
from .._report.render import cost_cell, readable
from ..ledger import Ledger
from ..ledger.budgets import read_budgets
from .view import View

__all__ = ["TOP", "budgets", "overview", "row_json", "shown_cost"]

#: Rows in each "top" table; stacks in the chart (the rest stacked as one "others").
TOP = 10
STACKS = 8
#: Refusals listed in the Budgets view (the API gives more: ``/api/refusals?limit=``).
REFUSALS_SHOWN = 20

#: Why a call is counted apart, as the page says it.
WHY_UNPRICED = "no price is known for the model (add one with a price file or llmtally.set_price)"
WHY_UNCONVERTED = "recorded in a currency with no rate to the report's (give --rates / LLMTALLY_RATES)"
WHY_ESTIMATED = (
    "the response carried no usage (a stream without usage, a cut-off stream): its tokens were counted "
    "offline with the model's tokenizer"
)


def shown_cost(row: ReportRow) -> str:
    """A row's cost as the report's table shows it, or "unknown" when no call of it has a price."""
    return cost_cell(row, row.currency) or "unknown"


def row_json(row: ReportRow, by: Sequence[str]) -> dict[str, Any]:
    """A report row as ``llmtally report --format json`` writes it, plus its cost for reading."""
    out = row.as_dict(by)
    out["shown"] = shown_cost(row)
    return out


def _rows(rows: Report, by: Sequence[str]) -> list[dict[str, Any]]:
    return [row_json(r, by) for r in rows]


def _total(rows: Report) -> ReportRow:
    total = totals(rows)
    total.currency = rows.currency
    total.latency_p50_ms, total.latency_p95_ms = rows.latency
    return total


def _money(ledger: Ledger, view: View, money: Mapping[str, Any], **kw: Any) -> Report:
    return report(
        ledger,
        since=kw.pop("start", view.start),
        until=kw.pop("end", view.end),
        where=view.where,
        currency=money.get("currency"),
        rates=money.get("rates"),
        **kw,
    )


def _periods(ledger: Ledger, view: View, money: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Today (UTC, so far), 7 and 30 days, each against the same span just before it."""
    now = view.now
    midnight = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    spans = [
        ("today", "Today (UTC)", midnight.timestamp(), (midnight - timedelta(days=1)).timestamp()),
        ("7d", "Last 7 days", now - 7 * 86400, now - 14 * 86400),
        ("30d", "Last 30 days", now - 30 * 86400, now - 60 * 86400),
    ]
    out = []
    for name, label, start, before in spans:
        length = now - start
        this = _total(_money(ledger, view, money, start=start, end=now, by=[], latency=False))
        prior = _total(_money(ledger, view, money, start=before, end=before + length, by=[], latency=False))
        change = None
        if this.known_cost is not None and prior.known_cost:
            change = float((this.cost - prior.cost) / prior.cost)
        out.append(
            {
                "name": name,
                "label": label,
                "start": start,
                "end": now,
                "cost": None if this.known_cost is None else str(this.cost),
                "shown": shown_cost(this),
                "requests": this.requests,
                "previous": {
                    "start": before,
                    "end": before + length,
                    "cost": None if prior.known_cost is None else str(prior.cost),
                    "shown": shown_cost(prior),
                    "requests": prior.requests,
                },
                "change": change,
            }
        )
    return out


def _labels(bucket: str, start: float | None, end: float, seen: Sequence[str]) -> list[str]:
    """Every bucket of the window, in order (the chart shows the quiet hours and days too)."""
    fmt, step = (
        ("%Y-%m-%d %H:00", timedelta(hours=1)) if bucket == "hour" else ("%Y-%m-%d", timedelta(days=1))
    )
    if start is None:
        if not seen:
            return []
        first = datetime.strptime(min(seen), fmt).replace(tzinfo=UTC)
    else:
        first = datetime.fromtimestamp(start, tz=UTC)
    first = first.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        first = first.replace(hour=0)
    last = datetime.fromtimestamp(end, tz=UTC)
    labels: list[str] = []
    t = first
    while t < last and len(labels) < 2000:
        labels.append(t.strftime(fmt))
        t += step
    return sorted(set(labels) | set(seen))


def _series(ledger: Ledger, view: View, money: Mapping[str, Any]) -> dict[str, Any]:
    span = None if view.start is None else (view.end or view.now) - view.start
    bucket = None if span is None else ("hour" if span <= 2 * 86400 else "day")
    bucket, rows = spend_over_time(
        ledger,
        since=view.start,
        until=view.end,
        stack_by=view.stack,
        where=view.where,
        currency=money.get("currency"),
        rates=money.get("rates"),
        bucket=bucket,
    )
    labels = _labels(bucket, view.start, view.end or view.now, sorted({r.keys[0] for r in rows}))
    at = {label: i for i, label in enumerate(labels)}
    cost: dict[str, Decimal] = {}
    calls: dict[str, int] = {}
    priced: dict[str, int] = {}
    for r in rows:
        name = r.keys[1]
        cost[name] = cost.get(name, Decimal(0)) + r.cost
        calls[name] = calls.get(name, 0) + r.requests
        priced[name] = priced.get(name, 0) + r.requests - r.unpriced_requests
    order = sorted(cost, key=lambda n: (-cost[n], -calls[n], n))
    kept = order[:STACKS]
    others = len(order) - len(kept)
    stacks = {name: [Decimal(0)] * len(labels) for name in kept}
    other = [Decimal(0)] * len(labels)
    for r in rows:
        (stacks[r.keys[1]] if r.keys[1] in stacks else other)[at[r.keys[0]]] += r.cost
    out = [
        {
            "name": name,
            "filter": name,
            "costs": [str(v) for v in stacks[name]],
            "requests": calls[name],
            # Calls of unknown price are not drawn (they would be $0): the legend says so.
            "unpriced": calls[name] - priced[name],
        }
        for name in kept
    ]
    if others:
        rest = [n for n in order if n not in stacks]
        out.append(
            {
                "name": f"({others} others)",
                "filter": None,
                "costs": [str(v) for v in other],
                "requests": sum(calls[n] for n in rest),
                "unpriced": sum(calls[n] - priced[n] for n in rest),
            }
        )
    return {"bucket": bucket, "stack": view.stack, "labels": labels, "stacks": out}


def budgets(ledger: Ledger) -> list[dict[str, Any]]:
    """Every shared budget: its period, spent, reserved (calls in flight) and limit."""
    out = []
    for b in read_budgets(ledger):
        used = b.spent + b.reserved
        out.append(
            {
                "name": b.name,
                "period": b.period,
                "window_start": b.window_start,
                "spent": str(b.spent),
                "reserved": str(b.reserved),
                "limit": str(b.max_cost),
                "shown": {
                    "spent": readable(b.spent, "USD"),
                    "reserved": readable(b.reserved, "USD"),
                    "limit": readable(b.max_cost, "USD"),
                },
                "used": None if not b.max_cost else float(used / b.max_cost),
                # At its limit: the next request that does not fit is refused.
                "full": used >= b.max_cost,
            }
        )
    return out


def overview(
    ledger: Ledger, view: View, money: Mapping[str, Any], tag_key: str | None = None
) -> dict[str, Any]:
    """Everything the overview shows for ``view``."""
    by_model = _money(ledger, view, money, by=["model"])
    total = _total(by_model)
    # Latency by model only (what the page shows): each percentile query sums the rollup's 82
    # histogram columns, the costliest read of the overview.
    scopes = _money(ledger, view, money, by=["scope"], latency=False)
    providers = _money(ledger, view, money, by=["provider"], latency=False)
    tag_keys = ledger.tag_keys(view.start, view.end)
    if tag_key is None or tag_key not in tag_keys:
        tag_key = tag_keys[0] if tag_keys else None
    tags = _money(ledger, view, money, by=[f"tag:{tag_key}"], latency=False) if tag_key else Report()
    unpriced = [
        {"model": r.keys[0], "requests": r.unpriced_requests, "why": WHY_UNPRICED}
        for r in by_model
        if r.unpriced_requests and not r.unconverted
    ]
    unpriced += [
        {"model": r.keys[0], "requests": r.unpriced_requests, "why": WHY_UNCONVERTED}
        for r in by_model
        if r.unconverted
    ]
    return {
        "currency": by_model.currency,
        "rates": {code: str(rate) for code, rate in sorted(by_model.rates.items())},
        "window": {
            "since": view.since,
            "until": view.until,
            "start": view.start,
            "end": view.end,
            "now": view.now,
        },
        "filters": [[key, list(values)] for key, values in view.where],
        "command": view.command(
            ["model"], ledger=str(ledger.url), currency=by_model.currency, rates=by_model.rates
        ),
        "periods": _periods(ledger, view, money),
        "totals": row_json(total, []),
        "latency_exact": by_model.latency_exact,
        "series": _series(ledger, view, money),
        "models": _rows(Report(by_model[:TOP]), ["model"]),
        "scopes": _rows(Report(scopes[:TOP]), ["scope"]),
        "providers": _rows(Report(providers[:TOP]), ["provider"]),
        "tags": {"key": tag_key, "keys": tag_keys, "rows": _rows(Report(tags[:TOP]), [f"tag:{tag_key}"])},
        "failures": {
            "requests": total.failed_requests,
            "rate": total.failed_requests / total.requests if total.requests else None,
            "models": [
                {"model": r.keys[0], "failed": r.failed_requests, "requests": r.requests}
                for r in by_model
                if r.failed_requests
            ],
        },
        "unpriced": {"requests": total.unpriced_requests, "models": unpriced},
        "estimated": {"requests": total.estimated_requests, "why": WHY_ESTIMATED},
        "budgets": budgets(ledger),
        # Scopes and shared budgets that hit their limits in the window (the newest few).
        "refusals": recent_refusals(ledger, view.start, view.end, view.where, limit=REFUSALS_SHOWN),
    }
