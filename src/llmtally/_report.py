"""Reports over the ledger: what was spent, when, on which model, scope or tag.

The same query serves the command line (``llmtally report``) and notebooks::

    rows = llmtally.report(since="7d", by=["model"])
    for row in rows:
        print(row.keys, row.requests, row.cost)

Costs are exact: the ledger keeps each call's cost in integer picodollars, summed in SQL and turned
back into a Decimal. Calls whose price is unknown are counted apart (``unpriced_requests``), never
as $0 in disguise; calls counted offline are ``estimated_requests``.

Reports read SQLite ledgers and PostgreSQL ones (``postgresql://...``, through psycopg 3), with the
same groups, sums and results; a PostgreSQL ledger is only read, in a read-only transaction.
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


#: A row's counts, in its field order.
COUNTS = (
    "requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "unpriced_requests",
    "estimated_requests",
)


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
        for name in COUNTS:
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


def _ledger_url(ledger: str | None) -> str:
    """The ledger URL to read: the one given, else LLMTALLY_LEDGER, else the default SQLite file."""
    import os

    return ledger or os.environ.get("LLMTALLY_LEDGER") or "sqlite://"


def _is_postgres(url: str) -> bool:
    scheme, sep, _ = url.strip().partition("://")
    return bool(sep) and scheme.lower() in ("postgresql", "postgres")


def _ledger_path(ledger: str | None) -> str:
    """The SQLite file of a ledger URL (the configured one, LLMTALLY_LEDGER, or the default)."""
    import os

    from .ledger import LedgerError, default_sqlite_path, redact_url

    url = _ledger_url(ledger)
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise LedgerError(
            f"reports read SQLite and PostgreSQL ledgers (sqlite:///path.db, postgresql://...), "
            f"not {redact_url(url)!r}"
        )
    path = default_sqlite_path() if rest in ("", "/") else rest[1:]
    if not os.path.exists(path):
        raise LedgerError(f"no ledger at {path} (record calls with `llmtally run` or llmtally.configure)")
    return path


def _query(ledger: str | None, since: Any, until: Any, groups: Sequence[str]) -> list[tuple[Any, ...]]:
    import sqlite3

    from .ledger import LedgerError

    url = _ledger_url(ledger)
    if _is_postgres(url):
        return _query_postgres(url.strip(), since, until, groups)
    path = _ledger_path(url)
    start, end = parse_time(since), parse_time(until)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
    try:
        has_rollup = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='calls_hourly'"
        ).fetchone()
        if not has_rollup:
            return _select_calls(conn, groups, start, end)
        # Whole hours from the hourly sums; the partial hours at the window's edges from the calls.
        first = None if start is None else -(-start // 3600) * 3600
        last = None if end is None else end // 3600 * 3600
        if first is not None and last is not None and first >= last:
            return _select_calls(conn, groups, start, end)
        parts = _select_hourly(conn, groups, first, last)
        if start is not None and first is not None and start < first:
            parts += _select_calls(conn, groups, start, first)
        if end is not None and last is not None and last < end:
            parts += _select_calls(conn, groups, last, end)
        return _merge(parts, len(groups))
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a readable llmtally ledger: {exc}") from exc
    finally:
        conn.close()


def _grouped(
    exprs: Sequence[str], sums: str, table: str, column: str, start: Any, end: Any, mark: str = "?"
) -> tuple[str, list[Any]]:
    """SELECT groups and sums FROM table WHERE start <= column < end GROUP BY the groups."""
    where, params = [], []
    if start is not None:
        where.append(f"{column} >= {mark}")
        params.append(start)
    if end is not None:
        where.append(f"{column} < {mark}")
        params.append(end)
    sql = f"SELECT {', '.join([*exprs, sums])} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if exprs:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs)))
    return sql, params


def _select_calls(conn: Any, groups: Sequence[str], start: float | None, end: float | None) -> list[Any]:
    sql, params = _grouped([_group_sql(g) for g in groups], _AGGREGATES, "calls", "started_at", start, end)
    return list(conn.execute(sql, params).fetchall())


def _hourly_sql(key: str) -> str:
    """A group's expression over calls_hourly (its keys are already COALESCEd as _group_sql does)."""
    if key == "day":
        return "strftime('%Y-%m-%d', hour, 'unixepoch')"
    if key == "hour":
        return "strftime('%Y-%m-%d %H:00', hour, 'unixepoch')"
    if key.startswith("tag:"):
        return _group_sql(key).replace("json_extract(tags,", "json_extract(NULLIF(tags, ''),")
    if key in ("model", "provider", "endpoint"):
        return key
    return _group_sql(key)  # scope: scope_path; anything else raises


def _select_hourly(conn: Any, groups: Sequence[str], first: float | None, last: float | None) -> list[Any]:
    from .ledger.sqlite import ROLLUP_SUMS

    sums = ", ".join(f"SUM({name})" for name in ROLLUP_SUMS)
    sql, params = _grouped([_hourly_sql(g) for g in groups], sums, "calls_hourly", "hour", first, last)
    return list(conn.execute(sql, params).fetchall())


def _merge(parts: list[Any], n: int) -> list[tuple[Any, ...]]:
    merged: dict[tuple[Any, ...], list[int]] = {}
    for values in parts:
        key = tuple(values[:n])
        sums = [int(v or 0) for v in values[n:]]
        if not any(sums):
            continue  # an empty aggregate row (no calls in that part)
        acc = merged.get(key)
        if acc is None:
            merged[key] = sums
        else:
            for i, v in enumerate(sums):
                acc[i] += v
    return [(*k, *v) for k, v in merged.items()]


# PostgreSQL: the same groups and sums (_AGGREGATES: the same columns, ledger/_records.py COLUMNS)
# in PostgreSQL's SQL, with psycopg's %s placeholders. There, SUM of an INTEGER column is a BIGINT
# and SUM of cost_pico (BIGINT) an exact NUMERIC (no overflow past $9.2M): _row makes ints of both.


def _group_sql_postgres(key: str) -> tuple[str, list[Any]]:
    """A group's expression for PostgreSQL and its parameters (tag names are bound, never inlined)."""
    if key in ("model", "provider", "endpoint", "scope"):
        return _group_sql(key), []
    if key == "day":
        return "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')", []
    if key == "hour":
        return "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:00')", []
    if key.startswith("tag:"):
        _group_sql(key)  # the same check of the name, and the same error, as for SQLite
        name = key[4:]
        # As SQLite's json_extract reads them: JSON true/false are 1/0 there, not true/false.
        return (
            "COALESCE(CASE jsonb_typeof(tags::jsonb -> %s) "
            "WHEN 'boolean' THEN ((tags::jsonb -> %s)::boolean::int)::text "
            "ELSE tags::jsonb ->> %s END, '')",
            [name, name, name],
        )
    return _group_sql(key), []  # raises: cannot group by ...


def _query_postgres(url: str, since: Any, until: Any, groups: Sequence[str]) -> list[tuple[Any, ...]]:
    """The report's rows from a PostgreSQL ledger, read in a read-only transaction.

    Never creates or migrates anything (unlike opening the ledger to write). Messages show the URL
    with its password replaced by ``***``, and driver errors (which may quote it) are not chained.
    """
    from .ledger import LedgerError, redact_url
    from .ledger._records import url_secrets
    from .ledger.postgres import _psycopg

    exprs, params = [], []
    for g in groups:
        expr, args = _group_sql_postgres(g)
        exprs.append(expr)
        params += args
    sql, window = _grouped(
        exprs, _AGGREGATES, "calls", "started_at", parse_time(since), parse_time(until), "%s"
    )
    params += window

    shown = redact_url(url)
    secrets = url_secrets(url)

    def scrub(exc: BaseException) -> str:
        text = str(exc).strip().replace(url, shown)
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    pg = _psycopg()
    try:
        options = pg.conninfo.conninfo_to_dict(url)
    except pg.Error as exc:
        raise LedgerError(f"bad PostgreSQL ledger URL {shown}: {scrub(exc)}") from None
    extra: dict[str, Any] = {}
    if "connect_timeout" not in options:
        extra["connect_timeout"] = 10
    if "application_name" not in options:
        extra["application_name"] = "llmtally report"
    try:
        conn = pg.connect(url, **extra)
    except pg.Error as exc:
        raise LedgerError(f"cannot connect to the PostgreSQL ledger {shown}: {scrub(exc)}") from None
    try:
        conn.read_only = True  # BEGIN READ ONLY: a report never writes
        if conn.execute("SELECT to_regclass('calls')").fetchone() == (None,):
            raise LedgerError(
                f"no calls table in the PostgreSQL ledger {shown}: not an llmtally ledger, or no call "
                "recorded in it yet (record calls with `llmtally run` or llmtally.configure)"
            )
        rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
        return rows
    except pg.Error as exc:
        raise LedgerError(f"cannot read the PostgreSQL ledger {shown}: {scrub(exc)}") from None
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
        for name in COUNTS:
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
    # In time order (then by stack), whichever database grouped them: charts come out the same.
    return bucket, sorted(
        (_row(v, groups) for v in _query(ledger, since, until, groups)), key=lambda r: r.keys
    )
