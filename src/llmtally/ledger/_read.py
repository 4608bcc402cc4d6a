"""What every backend shares to answer a report: the groups, the sums, the SQL around them.

A report asks a ledger for ``sums(groups, start, end, where)``: one row per group, the group's values
followed by ``SUMS`` (request counts, every token kind, the cost in picodollars). Each backend
supplies the SQL expression of each group in its own dialect; the sums and the statement's shape
are built here, from ``SUMS``, so every backend sums the same things in the same order.

``where`` keeps the calls whose value of a group is one of those given, the value as a report shows
it (``parse_where``): ``model=gpt-4o`` keeps exactly the calls of the ``gpt-4o`` row of a report
``--by model``, ``scope=job > step`` those of that scope path (not its nested scopes, which are rows
of their own), ``tag:team=(none)`` the calls without that tag. Several values of one group are
alternatives; different groups must all match. The rule is the same over the calls and over an
hourly rollup, so a filtered report reads the rollup as fast as an unfiltered one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from ._records import COST_HI, LATENCY_BOUNDS, SUMS

__all__ = [
    "CALLS_ONLY",
    "FILTERS",
    "GROUPS",
    "NO_SCOPE",
    "NO_VALUE",
    "ONLY",
    "SCOPE_SEPARATOR",
    "Where",
    "browse_sql",
    "check_group",
    "exact_sum",
    "grouped",
    "latency_bucket_sql",
    "merge",
    "parse_where",
    "percentiles",
    "refusals_sql",
    "scope_value",
    "sum_of_calls",
    "sums_of_calls",
    "sums_of_rollup",
    "tag_names",
    "where_sql",
]

#: What a percentile read from the latency histogram may be off by: half a bucket (a quarter of an
#: octave) on a log scale, 2**(1/8) - 1.
LATENCY_PRECISION = 2 ** (1 / 8) - 1
#: The quantiles a report shows.
QUANTILES = (0.5, 0.95)

GROUPS = ("model", "provider", "endpoint", "day", "hour", "scope", "currency", "price_source", "tag:KEY")
#: Groups the hourly rollup does not keep: a report by them reads the calls.
CALLS_ONLY = ("price_source",)
_TAG_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: The groups a report can be filtered on (time has ``since`` and ``until``).
FILTERS = ("model", "provider", "endpoint", "scope", "currency", "price_source", "tag:KEY")
#: How a report shows an empty or missing value, a call outside every scope, and a scope path.
NO_VALUE = "(none)"
NO_SCOPE = "(no scope)"
SCOPE_SEPARATOR = " > "

#: A filter: (group, the values it keeps), every group's values kept at once.
Where = tuple[tuple[str, tuple[str, ...]], ...]


def check_group(key: str) -> str | None:
    """Raise ``ValueError`` for a group a report cannot use; the tag name for ``tag:KEY``."""
    if key.startswith("tag:"):
        name = key[4:]
        if not _TAG_KEY.match(name):
            raise ValueError(f"bad tag name in --by {key!r} (letters, digits, _ . - only)")
        return name
    if key not in GROUPS:
        raise ValueError(f"cannot group by {key!r}; choose from {', '.join(GROUPS)}")
    return None


def parse_where(where: str | Iterable[str | tuple[str, Any]] | Mapping[str, Any] | None) -> Where:
    """A filter from ``"model=gpt-4o"``, a list of such strings or (group, value) pairs, or a mapping
    {group: value or list of values}; ``ValueError`` naming what is wrong. Values are as a report
    shows them (``(none)``, ``(no scope)``, ``job > step``)."""
    if not where:
        return ()
    pairs: list[tuple[str, str]] = []
    items: Iterable[Any]
    if isinstance(where, str):
        items = [where]
    elif isinstance(where, Mapping):
        items = [(k, v) for k, vs in where.items() for v in ([vs] if isinstance(vs, str) else list(vs))]
    else:
        items = where
    for item in items:
        if isinstance(item, str):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"a filter is GROUP=VALUE (model=gpt-4o, tag:team=search), not {item!r}")
        else:
            key, value = item
        key = str(key).strip()
        if key in ("day", "hour"):
            raise ValueError(f"filter time with since and until, not {key}=")
        check_group(key)  # a tag name, or one of GROUPS
        if not key.startswith("tag:") and key not in FILTERS:
            raise ValueError(f"cannot filter on {key!r}; choose from {', '.join(FILTERS)}")
        # (group, several values): a filter parsed before (``Where``) passes through as it is.
        values = value if isinstance(value, (tuple, list)) else [value]
        pairs += [(key, str(v)) for v in values]
    merged: dict[str, list[str]] = {}
    for key, value in pairs:
        values = merged.setdefault(key, [])
        if value not in values:
            values.append(value)
    return tuple((key, tuple(values)) for key, values in merged.items())


def scope_value(shown: str) -> str:
    """The ``scope_path`` column llmtally writes for a scope as a report shows it."""
    return "[]" if shown == NO_SCOPE else json.dumps(shown.split(SCOPE_SEPARATOR))


def where_sql(
    where: Where, expr: Callable[[str], tuple[str, list[Any]]], mark: str = "?"
) -> tuple[list[str], list[Any]]:
    """The conditions (to AND) and their parameters of a filter, given each group's SQL expression
    (and the parameters it binds) over the table read."""
    conditions: list[str] = []
    params: list[Any] = []
    for key, values in where:
        e, args = expr(key)
        alternatives = []
        for value in values:
            if key == "scope":
                # As written by llmtally (a JSON list), or as it is (a path written by other code).
                alternatives.append(f"{e} IN ({mark}, {mark})")
                params += [*args, scope_value(value), value]
            elif value == NO_VALUE:
                alternatives.append(f"COALESCE({e}, '') IN ('', {mark})")
                params += [*args, value]
            else:
                alternatives.append(f"{e} = {mark}")
                params += [*args, value]
        conditions.append("(" + " OR ".join(alternatives) + ")")
    return conditions, params


#: The calls a listing can be narrowed to, beyond a filter: each the condition a report counts them by.
ONLY = {
    "failed": "ok = 0",
    "unpriced": "cost IS NULL",
    "estimated": "estimated = 1",
}


def browse_sql(
    columns: Sequence[str],
    start: float | None,
    end: float | None,
    where: Where,
    expr: Callable[[str], tuple[str, list[Any]]],
    only: str | None,
    before: tuple[float, str] | None,
    limit: int,
    mark: str = "?",
) -> tuple[str, list[Any]]:
    """SELECT the ``columns`` of the calls in ``[start, end)`` that ``where`` (and ``only``) keep,
    newest first, ``limit`` of them, from just after ``before`` (the (started_at, id) of the last
    call of the previous page): pages by key, as fast deep in a large ledger as at its start."""
    if only is not None and only not in ONLY:
        raise ValueError(f"only= is one of {', '.join(ONLY)}, not {only!r}")
    conditions, params = where_sql(where, expr, mark)
    if start is not None:
        conditions.append(f"started_at >= {mark}")
        params.append(start)
    if end is not None:
        conditions.append(f"started_at < {mark}")
        params.append(end)
    if only is not None:
        conditions.append(ONLY[only])
    if before is not None:
        # The bound alone lets the database seek to the page; the rest breaks ties between equal times.
        conditions.append(f"started_at <= {mark}")
        conditions.append(f"(started_at < {mark} OR id < {mark})")
        params += [before[0], before[0], before[1]]
    sql = f"SELECT {', '.join(columns)} FROM calls"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += f" ORDER BY started_at DESC, id DESC LIMIT {int(limit)}"
    return sql, params


#: The filters that apply to refusals (a refused request has no served model, price or currency:
#: ``model`` is the model it asked for). Others leave refusals unfiltered.
REFUSAL_FILTERS = ("model", "provider", "endpoint", "scope")


def refusals_sql(
    columns: Sequence[str],
    start: float | None,
    end: float | None,
    where: Where,
    expr: Callable[[str], tuple[str, list[Any]]],
    limit: int | None,
    mark: str = "?",
) -> tuple[str, list[Any]]:
    """SELECT the ``columns`` (or, with ``limit=None``, the counts per ``action``) of the refusals in
    ``[start, end)`` that ``where`` keeps, newest first. ``expr`` gives a group's expression over
    the calls; over refusals ``model`` is the requested model (it is all a refusal knows)."""

    def over_refusals(key: str) -> tuple[str, list[Any]]:
        if key == "model":
            return "COALESCE(requested_model, 'unknown')", []
        return expr(key)

    kept = tuple((k, v) for k, v in where if k in REFUSAL_FILTERS or k.startswith("tag:"))
    conditions, params = where_sql(kept, over_refusals, mark)
    if start is not None:
        conditions.append(f"at >= {mark}")
        params.append(start)
    if end is not None:
        conditions.append(f"at < {mark}")
        params.append(end)
    what = "action, COUNT(*)" if limit is None else ", ".join(columns)
    sql = f"SELECT {what} FROM refusals"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if limit is None:
        sql += " GROUP BY action"
    else:
        sql += f" ORDER BY at DESC, id DESC LIMIT {int(limit)}"
    return sql, params


def tag_names(rows: Iterable[Sequence[Any]]) -> list[str]:
    """The tag names of (tags JSON, count) rows, most calls first; text that is not a JSON object
    (not written by llmtally) is skipped, never a failure."""
    seen: dict[str, int] = {}
    for tags, count in rows:
        try:
            found = json.loads(tags) if tags else {}
        except (TypeError, ValueError, RecursionError):
            continue
        if isinstance(found, dict):
            for name in found:
                if _TAG_KEY.match(str(name)):
                    seen[str(name)] = seen.get(str(name), 0) + int(count or 0)
    return sorted(seen, key=lambda name: (-seen[name], name))


def exact_sum(column: str, hi: str | None = None) -> str:
    """SQLite's SUM of a 64-bit integer column, exact past 2**63 (it raises "integer overflow"
    there: $9.2M in picodollars, a team's year of spend): the sum in millions and the sum of the
    remainders, written out as the digits of one number, which Python reads as an int. ``hi``: a
    column of units of ``COST_HI`` to add (the rollup's ``cost_pico_hi``)."""
    low = f"SUM({column} % 1000000)"
    high = f" + SUM({hi}) * {COST_HI // 1000000}" if hi else ""
    return f"(SUM({column} / 1000000){high} + {low} / 1000000) || printf('%06d', {low} % 1000000)"


def sum_of_calls(name: str, columns: Collection[str], wide: bool = False) -> str:
    """One of SUMS over the ``calls`` table; a kind whose column the ledger lacks (an older schema,
    read without migrating it) sums to 0. ``wide``: the cost summed with ``exact_sum``."""
    if wide and name == "cost_pico" and name in columns:
        return exact_sum("cost_pico")
    if name == "requests":
        return "COUNT(*)"
    if name == "failed_requests":
        return "SUM(1 - ok)"
    if name == "unpriced_requests":
        return "SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END)"
    if name == "estimated_requests":
        return "SUM(estimated)"
    return f"SUM(COALESCE({name}, 0))" if name in columns else "0"


def sums_of_calls(columns: Collection[str], wide: bool = False) -> str:
    """The SUMS over the ``calls`` table."""
    return ", ".join(sum_of_calls(name, columns, wide) for name in SUMS)


def sums_of_rollup(columns: Collection[str], wide: bool = False) -> str:
    """The SUMS over an hourly rollup table whose columns are named after them."""
    hi = "cost_pico_hi" if "cost_pico_hi" in columns else None
    return ", ".join(
        "0"
        if name not in columns
        else exact_sum(name, hi)
        if wide and name == "cost_pico"
        else f"SUM({name})"
        for name in SUMS
    )


def grouped(
    exprs: Sequence[str],
    sums: str,
    table: str,
    column: str,
    start: Any,
    end: Any,
    mark: str = "?",
    filters: tuple[list[str], list[Any]] = ([], []),
) -> tuple[str, list[Any]]:
    """SELECT groups and sums FROM table WHERE start <= column < end AND the ``filters``
    (``where_sql``'s) GROUP BY the groups."""
    where, params = [], []
    if start is not None:
        where.append(f"{column} >= {mark}")
        params.append(start)
    if end is not None:
        where.append(f"{column} < {mark}")
        params.append(end)
    where += filters[0]
    params += filters[1]
    sql = f"SELECT {', '.join([*exprs, sums])} FROM {table}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if exprs:
        sql += " GROUP BY " + ", ".join(str(i + 1) for i in range(len(exprs)))
    return sql, params


def merge(parts: Sequence[Sequence[Any]], n: int) -> list[tuple[Any, ...]]:
    """Rows of the same groups (the first ``n`` values) from several queries, summed."""
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


def latency_bucket_sql(column: str = "latency_ms") -> str:
    """The histogram bucket of ``column`` in SQL: ``bisect_right(LATENCY_BOUNDS, value)``, as the
    rollup counts it in Python, by a binary search of nested CASEs (7 comparisons a row)."""

    def search(lo: int, hi: int) -> str:  # the bucket among lo..hi, knowing BOUNDS[lo-1] <= value
        if lo == hi:
            return str(lo)
        mid = (lo + hi + 1) // 2
        below, above = search(lo, mid - 1), search(mid, hi)
        return f"CASE WHEN {column} < {LATENCY_BOUNDS[mid - 1]!r} THEN {below} ELSE {above} END"

    return search(0, len(LATENCY_BOUNDS))


def _bucket_value(i: int) -> float:
    """The latency a bucket stands for: the geometric middle of its bounds (half of 1 ms under it;
    the lower bound of the last, open one)."""
    if i == 0:
        return LATENCY_BOUNDS[0] / 2
    if i >= len(LATENCY_BOUNDS):
        return LATENCY_BOUNDS[-1]
    return math.sqrt(LATENCY_BOUNDS[i - 1] * LATENCY_BOUNDS[i])


def percentiles(histogram: Sequence[int], quantiles: Sequence[float] = QUANTILES) -> tuple[float | None, ...]:
    """The nearest-rank percentiles (in ms) of the calls a latency histogram counts, each within
    ``LATENCY_PRECISION`` of the exact one; ``None`` if it counts none."""
    n = sum(histogram)
    if not n:
        return tuple(None for _ in quantiles)
    out: list[float | None] = []
    for q in quantiles:
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, count in enumerate(histogram):
            seen += count
            if seen >= rank:
                out.append(_bucket_value(i))
                break
    return tuple(out)
