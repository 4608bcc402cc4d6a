"""Reports over the ledger: what was spent, when, on which model, scope or tag.

The same query serves the command line (``llmtally report``) and notebooks::

    rows = llmtally.report(since="7d", by=["model"])
    for row in rows:
        print(row.keys, row.requests, row.cost)

Costs are exact: the ledger keeps each call's cost in integer picodollars, summed in SQL and turned
back into a Decimal. Calls whose price is unknown are counted apart (``unpriced_requests``), never
as $0 in disguise; calls counted offline are ``estimated_requests``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

__all__ = ["ReportRow", "parse_time", "report", "spend_over_time", "totals"]

_PICO = Decimal("1e-12")
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
GROUPS = ("model", "provider", "endpoint", "day", "hour", "scope", "tag:KEY")


@dataclass
class ReportRow:
    """One group's totals. ``keys`` holds the group's values, in the order of ``by``."""

    keys: tuple[str, ...]
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)
    unpriced_requests: int = 0
    estimated_requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self, by: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = dict(zip(by, self.keys, strict=False))
        for name in (
            "requests",
            "failed_requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "unpriced_requests",
            "estimated_requests",
        ):
            out[name] = getattr(self, name)
        out["cost"] = str(self.cost)
        return out


def parse_time(text: str | float | datetime | None, *, now: float | None = None) -> float | None:
    """An instant (epoch seconds) from ``7d`` / ``12h`` ago, a date ``2026-11-01`` (UTC midnight),
    an ISO date-time, a datetime or a number. ``None`` stays ``None``."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    if isinstance(text, datetime):
        return (text if text.tzinfo else text.replace(tzinfo=timezone.utc)).timestamp()
    s = text.strip()
    m = _RELATIVE.match(s)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use 7d, 12h, 2026-11-01 or 2026-11-01T09:30)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _group_sql(key: str) -> str:
    if key == "model":
        return "COALESCE(model, requested_model, 'unknown')"
    if key == "provider":
        return "COALESCE(provider, 'unknown')"
    if key == "endpoint":
        return "endpoint"
    if key == "day":
        return "strftime('%Y-%m-%d', started_at, 'unixepoch')"
    if key == "hour":
        return "strftime('%Y-%m-%d %H:00', started_at, 'unixepoch')"
    if key == "scope":
        return "scope_path"
    if key.startswith("tag:"):
        name = key[4:]
        if not _TAG_KEY.match(name):
            raise ValueError(f"bad tag name in --by {key!r} (letters, digits, _ . - only)")
        return f"COALESCE(json_extract(tags, '$.\"{name}\"'), '')"
    raise ValueError(f"cannot group by {key!r}; choose from {', '.join(GROUPS)}")


_AGGREGATES = """
    COUNT(*),
    SUM(1 - ok),
    SUM(COALESCE(prompt_tokens, 0)),
    SUM(COALESCE(completion_tokens, 0)),
    SUM(COALESCE(cached_tokens, 0)),
    SUM(COALESCE(cache_write_tokens, 0)),
    SUM(COALESCE(reasoning_tokens, 0)),
    SUM(COALESCE(cost_pico, 0)),
    SUM(CASE WHEN cost IS NULL AND prompt_tokens IS NOT NULL THEN 1 ELSE 0 END),
    SUM(estimated)
"""


def _ledger_path(ledger: str | None) -> str:
    """The SQLite file of a ledger URL (the configured one, LLMTALLY_LEDGER, or the default)."""
    import os

    from .ledger import LedgerError, default_sqlite_path

    url = ledger or os.environ.get("LLMTALLY_LEDGER") or "sqlite://"
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise LedgerError(f"reports read SQLite ledgers in this version, not {url.split('@')[-1]!r}")
    path = default_sqlite_path() if rest in ("", "/") else rest[1:]
    if not os.path.exists(path):
        raise LedgerError(f"no ledger at {path} (record calls with `llmtally run` or llmtally.configure)")
    return path


def _query(ledger: str | None, since: Any, until: Any, groups: Sequence[str]) -> list[tuple[Any, ...]]:
    import sqlite3

    from .ledger import LedgerError

    path = _ledger_path(ledger)
    exprs = [_group_sql(g) for g in groups]
    where, params = [], []
    start, end = parse_time(since), parse_time(until)
    if start is not None:
        where.append("started_at >= ?")
        params.append(start)
    if end is not None:
        where.append("started_at < ?")
        params.append(end)
    sql = f"SELECT {', '.join([*exprs, _AGGREGATES])} FROM calls"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if exprs:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs)))
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a readable llmtally ledger: {exc}") from exc
    finally:
        conn.close()


def _key(group: str, value: Any) -> str:
    if group == "scope":
        import json

        try:
            names = json.loads(value) if value else []
        except ValueError:
            return str(value)
        return " > ".join(names) if names else "(no scope)"
    if value is None or value == "":
        return "(none)"
    return str(value)


def _row(values: tuple[Any, ...], groups: Sequence[str]) -> ReportRow:
    n = len(groups)
    keys = tuple(_key(g, v) for g, v in zip(groups, values[:n], strict=True))
    agg = [int(v or 0) for v in values[n:]]
    return ReportRow(
        keys,
        requests=agg[0],
        failed_requests=agg[1],
        prompt_tokens=agg[2],
        completion_tokens=agg[3],
        cached_tokens=agg[4],
        cache_write_tokens=agg[5],
        reasoning_tokens=agg[6],
        cost=(Decimal(agg[7]) * _PICO).normalize() if agg[7] else Decimal(0),
        unpriced_requests=agg[8],
        estimated_requests=agg[9],
    )


def report(
    *,
    ledger: str | None = None,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    by: Sequence[str] = ("model",),
    top: int | None = None,
) -> list[ReportRow]:
    """Totals per group over the ledger's calls in ``[since, until)``, most expensive first.

    ``by``: any of ``model``, ``provider``, ``endpoint``, ``day``, ``hour``, ``scope``, ``tag:KEY``.
    ``top`` keeps the N most expensive groups. ``ledger`` defaults to ``LLMTALLY_LEDGER``, then the
    default SQLite file.
    """
    groups = list(by)
    rows = [_row(values, groups) for values in _query(ledger, since, until, groups)]
    rows.sort(key=lambda r: (-r.cost, -r.requests, r.keys))
    return rows[:top] if top else rows


def totals(rows: Sequence[ReportRow]) -> ReportRow:
    """The sum of rows (a report's totals line)."""
    total = ReportRow(("TOTAL",))
    for r in rows:
        for name in (
            "requests",
            "failed_requests",
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "unpriced_requests",
            "estimated_requests",
        ):
            setattr(total, name, getattr(total, name) + getattr(r, name))
        total.cost += r.cost
    return total


def spend_over_time(
    *, ledger: str | None = None, since: Any = None, until: Any = None, stack_by: str | None = "model"
) -> tuple[str, list[ReportRow]]:
    """Cost per time bucket (hours for two days or less, else days), split by ``stack_by``."""
    rows = _query(ledger, since, until, ["hour"])
    span = len(rows)
    bucket = "hour" if span <= 48 else "day"
    groups = [bucket] + ([stack_by] if stack_by and stack_by not in ("day", "hour") else [])
    return bucket, [_row(v, groups) for v in _query(ledger, since, until, groups)]
