"""What every backend shares to answer a report: the groups, the sums, the SQL around them.

A report asks a ledger for ``sums(groups, start, end)``: one row per group, the group's values
followed by ``SUMS`` (request counts, every token kind, the cost in picodollars). Each backend
supplies the SQL expression of each group in its own dialect; the sums and the statement's shape
are built here, from ``SUMS``, so every backend sums the same things in the same order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from typing import Any

from ._records import COST_HI, LATENCY_BOUNDS, SUMS

__all__ = [
    "CALLS_ONLY",
    "GROUPS",
    "check_group",
    "exact_sum",
    "grouped",
    "latency_bucket_sql",
    "merge",
    "percentiles",
    "sum_of_calls",
    "sums_of_calls",
    "sums_of_rollup",
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
