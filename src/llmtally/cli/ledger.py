"""``llmtally ledger``: look after a ledger that grows for years.

``status``       where it is, its schema, how many calls from when to when, what waits in the spool and
                 what was set apart (the dead-letter file);
``quarantined``  the records set apart, each with why (text the server sent is shown escaped);
``reimport``     tries them again, once fixed (edit the dead-letter file: one JSON object a line);
``check``        SQLite's integrity check and the hourly totals (every rollup) against the calls;
``prune``        deletes calls (and refusals) older than a date, keeping their hourly totals in reports
                 (SQLite) or not;
``refusals``     the requests a scope's limit or a shared budget refused (or, in warn mode, let through
                 past it), newest first: when, which scope, which limit, allowed, spent, model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ledger.sqlite import Coarser

__all__ = ["add_parser", "ledger_command"]


def add_parser(sub: Any) -> None:
    led = sub.add_parser(
        "ledger",
        help="the ledger's state, records set apart, integrity check, pruning",
        description="Look after the ledger: status, quarantined, reimport, check, prune, refusals.",
    )
    led.add_argument("action", choices=("status", "quarantined", "reimport", "check", "prune", "refusals"))
    led.add_argument(
        "--ledger", metavar="URL", help="the ledger (default: LLMTALLY_LEDGER, else the default file)"
    )
    led.add_argument("--before", metavar="WHEN", help="prune: calls started before this (2026-01-01, 90d)")
    led.add_argument(
        "--totals",
        choices=("keep", "drop"),
        default="keep",
        help="prune: keep the pruned calls' hourly totals in reports (SQLite), or drop them too",
    )
    led.add_argument(
        "--format", choices=("text", "json"), default="text", help="quarantined, refusals: text or json"
    )
    led.add_argument("--since", metavar="WHEN", default="7d", help="refusals: from when (default 7d; all)")
    led.add_argument("--until", metavar="WHEN", help="refusals: until when")
    led.add_argument(
        "--where",
        metavar="GROUP=VALUE",
        action="append",
        default=[],
        help="refusals: keep those of a model (asked for), provider, endpoint, scope or tag:KEY",
    )
    led.add_argument("--limit", type=int, default=50, help="refusals: how many to list (default 50)")


def _say(text: str) -> None:
    from .._core.text import printable

    print("\n".join(printable(line) for line in text.split("\n")))


def ledger_command(args: argparse.Namespace) -> int:
    from .._runtime import RUNTIME
    from ..ledger import LedgerError

    url = RUNTIME.ledger_url(args.ledger)
    assert url is not None
    try:
        return int(_ACTIONS[args.action](url, args))
    except BrokenPipeError:
        raise  # `llmtally ledger refusals | head`: main() ends quietly
    except (LedgerError, ValueError, OSError) as exc:
        from .._core.text import printable

        print(f"llmtally ledger {args.action}: {printable(str(exc))}", file=sys.stderr)
        return 2


def _open(url: str, write: bool = False) -> Any:
    from ..ledger import LedgerError, open_ledger, redact_url

    ledger = open_ledger(url, create=write)
    if ledger is None:
        raise LedgerError(f"no ledger to look after ({redact_url(url)!r}); pass --ledger URL")
    return ledger


def _spool(ledger: Any) -> Any:
    from ..ledger._spool import Spool

    return Spool(ledger.url)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def _status(url: str, args: argparse.Namespace) -> int:
    ledger = _open(url)
    try:
        (version,) = ledger.execute("SELECT MAX(version) FROM llmtally_schema")[0]
        n, first, last = ledger.execute("SELECT COUNT(*), MIN(started_at), MAX(started_at) FROM calls")[0]
        spool = _spool(ledger)
        waiting = len(spool.read())
        apart = len(spool.quarantined())
    finally:
        ledger.close()
    _say(f"ledger: {ledger.url} (schema {version})")
    _say(f"calls: {n:,}" + (f", from {_when(first)} to {_when(last)}" if n else ""))
    _say(f"spool: {waiting:,} record(s) waiting for the ledger" + (f" in {spool.path}" if waiting else ""))
    hint = " (`llmtally ledger quarantined` shows them)" if apart else ""
    _say(f"set apart: {apart:,} record(s)" + (f" in {spool.dead_path}" if apart else "") + hint)
    return 0


def _quarantined(url: str, args: argparse.Namespace) -> int:
    ledger = _open(url)
    try:
        entries = _spool(ledger).quarantined()
    finally:
        ledger.close()
    if args.format == "json":
        json.dump(entries, sys.stdout, indent=2, default=repr)
        print()
        return 0
    if not entries:
        _say("no record is set apart")
        return 0
    for e in entries:
        record = e.get("record")
        if isinstance(record, dict) and record.get("kind") == "refusal":
            what = f"refusal {record.get('id')} ({record.get('refused_by')})"
        elif isinstance(record, dict):
            what = f"call {record.get('id')} ({record.get('model') or record.get('requested_model')})"
        else:
            what = f"line {str(e.get('line', ''))[:120]!r}"
        _say(f"{e.get('at', '?')}  {what}: {e.get('reason', '?')}")
    _say(f"{len(entries)} record(s); fix them in the dead-letter file, then `llmtally ledger reimport`")
    return 0


def _reimport(url: str, args: argparse.Namespace) -> int:
    from ..ledger._records import RefusalRow, check_row, from_spool, refused

    ledger = _open(url, write=True)
    written = 0

    def retry(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal written
        left = []
        for e in entries:
            record = e.get("record")
            if record is None and isinstance(e.get("line"), str):
                try:
                    record = json.loads(e["line"])
                except (ValueError, RecursionError):
                    record = None
            if not isinstance(record, dict):
                left.append(e)
                continue
            row = from_spool(record)
            reason = check_row(row)
            if reason is None:
                try:
                    if type(row) is RefusalRow:
                        ledger.write([], ignore_duplicates=True, refusals=[row])
                    else:
                        ledger.write([row], ignore_duplicates=True)
                    written += 1
                    continue
                except Exception as exc:
                    if not refused(exc):
                        raise  # the ledger itself failed: everything stays set apart
                    reason = f"refused by the ledger: {type(exc).__name__}: {exc}"[:500]
            left.append({**e, "reason": reason})
        return left

    try:
        _spool(ledger).take_quarantined(retry)
        left = len(_spool(ledger).quarantined())
    finally:
        ledger.close()
    _say(f"reimported {written} record(s); {left} still set apart")
    return 0 if not left else 1


def _int(text: Any) -> int | str:
    """An exact sum read back (``exact_sum``'s digits), or the text as it is if it is not one (a
    float an older rollup overflowed into): a mismatch the check reports."""
    try:
        return int(text or 0)
    except ValueError:
        return str(text)


def _check_coarser(ledger: Any, coarse: Coarser) -> list[str]:
    """A coarser rollup's rows (``sqlite.COARSER``) against the calls, row by row, for the hours that
    still have their calls; none to check in a ledger without it (schema 11 or older)."""
    from ..ledger._read import exact_sum

    table = coarse.table
    if not ledger.execute(f"PRAGMA table_info({table})"):
        return []
    keys = ", ".join(coarse.keys)
    first = "(SELECT CAST(MIN(started_at) / 3600 AS INTEGER) * 3600 FROM calls)"
    rolled = {
        tuple(r[:-2]): (r[-2], _int(r[-1]))
        for r in ledger.execute(
            f"SELECT {keys}, requests, {exact_sum('cost_pico', 'cost_pico_hi')} FROM {table} "
            f"WHERE hour >= {first} GROUP BY {keys}"
        )
    }
    exprs = ", ".join(coarse.key_sql)
    counted = {
        tuple(r[:-2]): (r[-2], _int(r[-1]))
        for r in ledger.execute(
            f"SELECT {exprs}, COUNT(*), {exact_sum('COALESCE(cost_pico, 0)')} FROM calls "
            f"GROUP BY {', '.join(str(i + 1) for i in range(len(coarse.keys)))}"
        )
    }
    problems = []
    for key in sorted(rolled.keys() | counted.keys(), key=repr):
        n, cost = rolled.get(key, (0, 0))
        calls_n, calls_cost = counted.get(key, (0, 0))
        if (n, cost) != (calls_n, calls_cost):
            what = ", ".join(str(v) for v in key[1:])
            problems.append(
                f"{table} of {_when(key[0])} ({what}): {n} calls, {cost} pico in the rollup; "
                f"{calls_n} calls, {calls_cost} pico in the calls"
            )
    return problems


def _check(url: str, args: argparse.Namespace) -> int:
    from ..ledger._read import exact_sum
    from ..ledger.sqlite import COARSER, SQLiteLedger

    ledger = _open(url)
    problems: list[str] = []
    try:
        if isinstance(ledger, SQLiteLedger):
            result = [r[0] for r in ledger.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                problems += [f"integrity: {r}" for r in result[:20]]
            # The hourly totals of the hours that still have their calls (pruning may keep older ones),
            # summed exactly past 2**63 picodollars.
            hourly = {r[1] for r in ledger.execute("PRAGMA table_info(calls_hourly)")}
            hi = "cost_pico_hi" if "cost_pico_hi" in hourly else None
            sql = (
                "SELECT h.hour, h.n, h.cost, c.n, c.cost FROM "
                f"(SELECT hour, SUM(requests) n, {exact_sum('cost_pico', hi)} cost FROM calls_hourly "
                "GROUP BY hour) h "
                "LEFT JOIN (SELECT CAST(started_at / 3600 AS INTEGER) * 3600 hour, COUNT(*) n, "
                f"{exact_sum('COALESCE(cost_pico, 0)')} cost FROM calls GROUP BY 1) c ON c.hour = h.hour "
                "WHERE h.hour >= (SELECT CAST(MIN(started_at) / 3600 AS INTEGER) * 3600 FROM calls)"
            )
            for hour, n, cost, calls_n, calls_cost in ledger.execute(sql):
                cost, calls_cost = _int(cost), _int(calls_cost)
                if (n, cost) != (calls_n or 0, calls_cost):
                    problems.append(
                        f"hourly totals of {_when(hour)}: {n} calls, {cost} pico in the rollup; "
                        f"{calls_n or 0} calls, {calls_cost or 0} pico in the calls"
                    )
            for coarse in COARSER:
                problems += _check_coarser(ledger, coarse)
            # SQLite's key is (started_at, id), so that time windows are range scans: one id twice is
            # a record whose time was edited (a spool line by hand) and then replayed.
            for rid, times in ledger.execute(
                "SELECT id, COUNT(*) FROM calls GROUP BY id HAVING COUNT(*) > 1 ORDER BY id LIMIT 20"
            ):
                problems.append(f"record {rid!r} is stored {times} times, at different times")
        (n,) = ledger.execute("SELECT COUNT(*) FROM calls")[0]
    finally:
        ledger.close()
    for p in problems:
        _say(p)
    verdict = "no problem found" if not problems else f"{len(problems)} problem(s)"
    _say(f"{ledger.url}: {n:,} calls, {verdict}")
    return 0 if not problems else 1


def _prune(url: str, args: argparse.Namespace) -> int:
    from .._report import parse_time
    from ..ledger import LedgerError
    from ..ledger.sqlite import SQLiteLedger

    if not args.before:
        raise ValueError("prune needs --before WHEN (2026-01-01, 90d): calls started before it are deleted")
    cutoff = parse_time(args.before)
    assert cutoff is not None
    cutoff = cutoff // 3600 * 3600  # whole hours: the hourly totals stay exact for what remains
    ledger = _open(url, write=True)
    try:
        sqlite = isinstance(ledger, SQLiteLedger)
        if args.totals == "keep" and not sqlite:
            raise ValueError(
                "a PostgreSQL ledger keeps no hourly totals: pruning takes the calls out of reports; "
                "say so with --totals drop"
            )
        p = ledger.placeholder
        if sqlite:  # the calls and the rollups' hours at once, or none of them
            ledger.execute("BEGIN IMMEDIATE")
        try:
            (n,) = ledger.execute(f"SELECT COUNT(*) FROM calls WHERE started_at < {p}", (cutoff,))[0]
            ledger.execute(f"DELETE FROM calls WHERE started_at < {p}", (cutoff,))
            ledger.execute(f"DELETE FROM refusals WHERE at < {p}", (cutoff,))  # migrated: it exists
            if sqlite and args.totals == "drop":
                from ..ledger.sqlite import COARSER

                ledger.execute(f"DELETE FROM calls_hourly WHERE hour < {p}", (cutoff,))
                for coarse in COARSER:
                    if ledger.execute(f"PRAGMA table_info({coarse.table})"):
                        ledger.execute(f"DELETE FROM {coarse.table} WHERE hour < {p}", (cutoff,))
            if sqlite:
                ledger.execute("COMMIT")
        except BaseException:
            if sqlite:
                with contextlib.suppress(LedgerError):  # a failed COMMIT may already have ended it
                    ledger.execute("ROLLBACK")
            raise
    finally:
        ledger.close()
    kept = "kept in reports" if args.totals == "keep" else "dropped"
    _say(f"pruned {n:,} call(s) started before {_when(cutoff)}; their hourly totals are {kept}")
    return 0


def _refusals(url: str, args: argparse.Namespace) -> int:
    from .._report import parse_time
    from .._report.refusals import recent_refusals
    from ..ledger._read import parse_where

    since = None if args.since == "all" else args.since
    start, end = parse_time(since), parse_time(args.until)
    where = parse_where(args.where)
    from ..ledger._read import REFUSAL_FILTERS

    unknown = sorted({k for k, _ in where if k not in REFUSAL_FILTERS and not k.startswith("tag:")})
    if unknown:  # a refused request has no currency nor price: say so, never ignore the filter
        raise ValueError(
            f"refusals cannot be filtered by {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(REFUSAL_FILTERS))} or tag:KEY"
        )
    ledger = _open(url)
    try:
        doc = recent_refusals(ledger, start, end, where, limit=max(1, args.limit))
    finally:
        ledger.close()
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
        return 0
    window = "ever" if start is None else f"since {_when(start)}"
    _say(f"{doc['refused']:,} request(s) refused, {doc['warned']:,} sent past a limit (warn mode), {window}")
    for r in doc["rows"]:
        by = f"{r['refused_by']} (budget)" if r["by"] == "budget" else str(r["refused_by"])
        worst = f", could cost {r['shown']['worst']}" if r["worst"] is not None else ""
        _say(
            f"{_when(r['at'])}  {r['action']:<7}  {r['scope']}  {r['limit']} limit of {by}: "
            f"{r['shown']['spent']} of {r['shown']['allowed']}{worst}  model {r['model'] or '-'}"
        )
    return 0


_ACTIONS = {
    "refusals": _refusals,
    "status": _status,
    "quarantined": _quarantined,
    "reimport": _reimport,
    "check": _check,
    "prune": _prune,
}
