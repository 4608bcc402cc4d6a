"""Reports over a ledger: what was spent, when, on which model, scope or tag.

The same query serves the command line (``llmtally report``) and notebooks::

    rows = llmtally.report(since="7d", by=["model"])
    for row in rows:
        print(row.keys, row.requests, row.cost)

Costs are exact: the ledger keeps each call's cost in integer picodollars, summed in SQL and turned
back into a Decimal. Calls whose price is unknown are counted apart (``unpriced_requests``), never
as $0 in disguise: ``cost`` is the part known, ``known_cost`` is ``None`` when no call of the group
has a price and ``cost_is_partial`` says when some have none; calls counted offline are
``estimated_requests``.

Each group's latency (``latency_p50_ms``, ``latency_p95_ms``, nearest rank) comes from the ledger:
SQLite's from the latency histogram kept with its hourly rollup (``Report.latency_exact`` false:
within ``ledger._read.LATENCY_PRECISION``, about 9%), PostgreSQL's exact, computed by the server.

A report is in one currency (``currency=``, else the display currency configured): the ledger sums
each currency apart, and costs recorded in another currency are converted at the rates the user
set (``rates=``, else those configured), which the report keeps in ``Report.rates``. Costs in a
currency with no rate stay out of ``cost``: they are in ``unconverted`` and their calls are counted
as unpriced, never as 0.

A report reads any ``Ledger`` (SQLite, PostgreSQL) through its ``sums()``, opened read-only: it
never creates or migrates anything. Which ledger is decided by the caller (``_runtime.ledger_url``),
who passes its URL, or a ledger it holds open (the dashboard, which asks many questions a second).

``where`` keeps the calls whose value of a group is one of those given, as the report shows it
(``model=gpt-4o``, ``tag:team=search``, ``scope=job > step``; ``ledger._read.parse_where``): a
report filtered so holds exactly the calls of that group's row in the unfiltered report.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .._core.money import from_pico
from .._core.usage import COUNT_NAMES, TOKEN_NAMES, Totals
from ..ledger import Ledger, LedgerError, open_ledger, redact_url
from ..ledger._read import Where, parse_where
from ..ledger._records import SUMS

__all__ = [
    "FIELDS",
    "Report",
    "ReportRow",
    "Source",
    "group_key",
    "parse_time",
    "parse_where",
    "reading",
    "report",
    "spend_over_time",
    "totals",
]

#: What a report reads: a ledger's URL (opened and closed for it), or a ledger held open.
Source = str | Ledger
#: What ``where=`` takes: ``parse_where``'s forms.
Filter = str | Iterable[str | tuple[str, Any]] | Mapping[str, Any] | None

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

#: A row's numbers, in the order the CSV and JSON formats write them (the cost last).
FIELDS: tuple[str, ...] = (
    "requests",
    "failed_requests",
    *TOKEN_NAMES,
    *(n for n in COUNT_NAMES if n not in ("requests", "failed_requests")),
)


@dataclass(slots=True)
class ReportRow(Totals):
    """One group's totals. ``keys`` holds the group's values, in the order of ``by``."""

    keys: tuple[str, ...] = ()
    cost: Decimal = field(default_factory=Decimal)
    #: The currency of ``cost``.
    currency: str = "USD"
    #: Costs recorded in currencies with no rate to ``currency``: not in ``cost``, their calls unpriced.
    unconverted: dict[str, Decimal] = field(default_factory=dict)
    #: The median and 95th percentile latency of the group's calls, in ms (``None``: not known). Not
    #: compared by ``==``: their precision is the ledger's (exact or from a histogram), not the calls'.
    latency_p50_ms: float | None = field(default=None, compare=False)
    latency_p95_ms: float | None = field(default=None, compare=False)

    @property
    def known_cost(self) -> Decimal | None:
        """``cost``, or ``None`` when no call of the group has a known price (never a $0 in disguise)."""
        return None if self.requests and self.unpriced_requests >= self.requests else self.cost

    @property
    def cost_is_partial(self) -> bool:
        """Some calls have a price and some none: ``cost`` is what is known, the total is at least that."""
        return 0 < self.unpriced_requests < self.requests

    def as_dict(self, by: Sequence[str]) -> dict[str, object]:
        out: dict[str, object] = dict(zip(by, self.keys, strict=False))
        for name in FIELDS:
            out[name] = getattr(self, name)
        known = self.known_cost
        out["cost"] = None if known is None else str(known)
        out["cost_is_partial"] = self.cost_is_partial
        out["currency"] = self.currency
        out["unconverted"] = {code: str(amount) for code, amount in sorted(self.unconverted.items())}
        for name in ("latency_p50_ms", "latency_p95_ms"):
            value = getattr(self, name)
            out[name] = None if value is None else round(value, 3)
        return out


class Report(list[ReportRow]):
    """A report's rows, most expensive first, with the currency they are in and the rates used."""

    def __init__(
        self,
        rows: Sequence[ReportRow] = (),
        currency: str = "USD",
        rates: Mapping[str, Decimal] | None = None,
    ) -> None:
        super().__init__(rows)
        self.currency = currency
        #: {currency: units of ``currency`` per one of it}, for every currency converted.
        self.rates: dict[str, Decimal] = dict(rates or {})
        #: The p50 and p95 latency (ms) of every call of the report, whatever its group.
        self.latency: tuple[float | None, float | None] = (None, None)
        #: Whether the latencies are exact (PostgreSQL) or read from a histogram (SQLite); None: not read.
        self.latency_exact: bool | None = None

    def with_others(self, top: int, by: Sequence[str]) -> Report:
        """The ``top`` first rows, and the rest summed in one row "(N others)" (its latency unknown)."""
        if len(self) <= top:
            return self
        rest = totals(self[top:])
        rest.keys = (f"({len(self) - top} others)",) + ("",) * (len(by) - 1)
        out = Report([*self[:top], rest], self.currency, self.rates)
        out.latency, out.latency_exact = self.latency, self.latency_exact
        return out


def parse_time(text: str | float | datetime | None, *, now: float | None = None) -> float | None:
    """An instant (epoch seconds) from ``7d`` / ``12h`` ago, a date ``2026-11-01`` (UTC midnight),
    an ISO date-time, a datetime or a number. ``None`` stays ``None``."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    if isinstance(text, datetime):
        return (text if text.tzinfo else text.replace(tzinfo=UTC)).timestamp()
    s = text.strip()
    m = _RELATIVE.match(s)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 7d, 12h, 2026-11-01 or 2026-11-01T09:30)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _open(url: str) -> Ledger:
    ledger = open_ledger(url, create=False)
    if ledger is None:
        raise LedgerError(
            f"no ledger to report on ({redact_url(url)!r}); pass --ledger URL or set LLMTALLY_LEDGER"
        )
    return ledger


@contextlib.contextmanager
def reading(source: Source) -> Iterator[Ledger]:
    """The ledger a report reads: opened (read-only) and closed for it from a URL, else the one given."""
    if not isinstance(source, str):
        yield source
        return
    ledger = _open(source)
    try:
        yield ledger
    finally:
        ledger.close()


def _sums(
    source: Source, since: Any, until: Any, groups: Sequence[str], where: Where
) -> list[tuple[Any, ...]]:
    start, end = parse_time(since), parse_time(until)
    with reading(source) as ledger:
        return ledger.sums(groups, start, end, where)


def _latencies(
    source: Source, since: Any, until: Any, groups: Sequence[str], rows: Report, where: Where
) -> None:
    """Each row's p50 and p95 latency, and the whole report's, from the ledger."""
    start, end = parse_time(since), parse_time(until)
    with reading(source) as ledger:
        found = {
            tuple(_key(g, v) for g, v in zip(groups, values, strict=False)): values[len(groups) :]
            for values in ledger.latency(groups, start, end, where)
        }
        overall = ledger.latency([], start, end, where) if groups else list(found.values())
        rows.latency_exact = bool(getattr(ledger, "latency_exact", False))
    for row in rows:
        row.latency_p50_ms, row.latency_p95_ms = found.get(row.keys, (None, None))
    if overall:
        rows.latency = (overall[0][0], overall[0][1])


def group_key(group: str, value: Any) -> str:
    """A group's value as a report shows it (and a filter takes it): a scope path as ``a > b``,
    an empty value as ``(none)``."""
    if group == "scope":
        import json

        try:
            names = json.loads(value) if value else []
        except ValueError:
            return str(value)
        if not isinstance(names, list):  # not written by llmtally: shown as it is, never a crash
            return str(value)
        return " > ".join(map(str, names)) if names else "(no scope)"
    if value is None or value == "":
        return "(none)"
    return str(value)


_key = group_key


def _money_in(currency: str | None, rates: Mapping[str, object] | None) -> tuple[str, dict[str, Decimal]]:
    """The report's currency and rates: as given (validated), else those configured."""
    from .._core import currency as money

    code = currency or money.display()
    if rates is None:
        rates = money.rates() if code == money.display() else {}
    return money.parse(code, rates)


def _rows(
    source: Source,
    since: Any,
    until: Any,
    groups: Sequence[str],
    currency: str | None,
    rates: Any,
    where: Where = (),
) -> Report:
    """The ledger's sums per group and currency, each group's costs converted into one currency."""
    code, table = _money_in(currency, rates)
    asked = list(groups)
    split = "currency" not in asked
    query = [*asked, "currency"] if split else asked
    at = query.index("currency")
    n = len(asked)
    rows: dict[tuple[str, ...], ReportRow] = {}
    used: dict[str, Decimal] = {}
    for values in _sums(source, since, until, query, where):
        keys = tuple(_key(g, v) for g, v in zip(asked, values[:n], strict=False))
        sums = dict(zip(SUMS, (int(v or 0) for v in values[len(query) :]), strict=True))
        pico = sums.pop("cost_pico")
        row = rows.get(keys)
        if row is None:
            row = rows[keys] = ReportRow(keys=keys, currency=code)
        for name, value in sums.items():
            setattr(row, name, getattr(row, name) + value)
        recorded = str(values[at] or "USD")
        amount = from_pico(pico)
        if recorded == code:
            row.cost += amount
        elif recorded in table:
            used[recorded] = table[recorded]
            row.cost += amount * table[recorded]
        else:
            # No rate: these calls' cost is not known in the report's currency.
            row.unpriced_requests += sums["requests"] - sums["unpriced_requests"]
            row.unconverted[recorded] = row.unconverted.get(recorded, Decimal(0)) + amount
    return Report(list(rows.values()), code, used)


def report(
    url: Source,
    *,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    by: Sequence[str] = ("model",),
    top: int | None = None,
    currency: str | None = None,
    rates: Mapping[str, object] | str | None = None,
    latency: bool = True,
    where: Filter = None,
) -> Report:
    """Totals per group over the calls in ``[since, until)`` of the ledger at ``url`` (or the ledger
    given) that ``where`` keeps, most expensive first; ``top`` keeps the N most expensive groups.
    With ``latency``, each group's p50 and p95 latency too (one more query).

    Costs are in ``currency`` (default: the display currency configured), costs recorded in other
    currencies converted at ``rates`` ({"USD": "0.92"} or "USD=0.92": units of ``currency`` per
    one; default: the rates configured).
    """
    kept = parse_where(where)
    rows = _rows(url, since, until, by, currency, rates, kept)
    rows.sort(key=lambda r: (-r.cost, -r.requests, r.keys))
    if latency:
        _latencies(url, since, until, by, rows, kept)
    if top:
        del rows[top:]
    return rows


def totals(rows: Sequence[ReportRow]) -> ReportRow:
    """The sum of rows (a report's totals line)."""
    total = ReportRow(keys=("TOTAL",), currency=rows[0].currency if rows else "USD")
    for r in rows:
        for name in FIELDS:
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.cost += r.cost
        for code, amount in r.unconverted.items():
            total.unconverted[code] = total.unconverted.get(code, Decimal(0)) + amount
    return total


def spend_over_time(
    url: Source,
    *,
    since: Any = None,
    until: Any = None,
    stack_by: str | None = "model",
    currency: str | None = None,
    rates: Mapping[str, object] | str | None = None,
    where: Filter = None,
    bucket: str | None = None,
) -> tuple[str, Report]:
    """Cost per time ``bucket`` (``hour`` or ``day``; by default hours when the calls span two days or
    less, else days), split by ``stack_by``."""
    kept = parse_where(where)
    if bucket is None:
        span = len(_sums(url, since, until, ["hour"], kept))
        bucket = "hour" if span <= 48 else "day"
    elif bucket not in ("hour", "day"):
        raise ValueError(f"a time bucket is 'hour' or 'day', not {bucket!r}")
    groups = [bucket] + ([stack_by] if stack_by and stack_by not in ("day", "hour") else [])
    # In time order (then by stack), whichever database grouped them: charts come out the same.
    rows = _rows(url, since, until, groups, currency, rates, kept)
    rows.sort(key=lambda r: r.keys)
    return bucket, rows
