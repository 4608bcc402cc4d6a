"""The calls behind a number: pages of them, one call's whole record, and both as CSV.

A record is what the ledger holds and nothing more: no prompt or completion text, key or header
exists there to show. Pages go by key (the last call's time and id), so the thousandth page of a
million calls is read as fast as the first.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from .._report import group_key
from .._report.render import csv_text
from ..ledger import Ledger
from .view import View

__all__ = ["CSV_LIMIT", "PAGE", "call_json", "calls_csv", "page", "parse_before"]

#: Calls per page, and at most in one CSV export.
PAGE = 50
CSV_LIMIT = 100_000
#: The columns a listing shows (the record has them all).
LISTED = (
    "id",
    "started_at",
    "latency_ms",
    "provider",
    "model",
    "requested_model",
    "endpoint",
    "status",
    "ok",
    "error",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "currency",
    "estimated",
    "scope_path",
    "tags",
)
#: Columns holding JSON text, shown decoded.
_JSON = ("tags", "price_context")


def call_json(record: dict[str, Any]) -> dict[str, Any]:
    """A call's record ready for the page: its scope as a report shows it, tags decoded, the time
    in ISO form beside the epoch seconds."""
    out = dict(record)
    out["scope"] = group_key("scope", record.get("scope_path"))
    for name in _JSON:
        if isinstance(out.get(name), str):
            try:
                out[name] = json.loads(out[name])
            except ValueError:
                pass  # not written by llmtally: shown as it is
    for name in ("started_at", "ended_at"):
        if isinstance(out.get(name), (int, float)):
            out[name + "_iso"] = datetime.fromtimestamp(out[name], tz=UTC).isoformat(timespec="milliseconds")
    return out


def page(
    ledger: Ledger,
    view: View,
    *,
    only: str | None = None,
    before: tuple[float, str] | None = None,
    limit: int = PAGE,
) -> dict[str, Any]:
    """One page of the view's calls, newest first, and the key of the next page (None: the last)."""
    rows = ledger.browse(view.start, view.end, view.where, only=only, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    calls = [call_json({k: r.get(k) for k in LISTED if k in r}) for r in rows]
    nxt = None
    if more and rows:
        nxt = f"{rows[-1]['started_at']!r}:{rows[-1]['id']}"
    return {"calls": calls, "next": nxt}


def parse_before(text: str | None) -> tuple[float, str] | None:
    """The ``before`` key of a page (``next`` of the one before it): ``<started_at>:<id>``."""
    if not text:
        return None
    at, _, call_id = text.partition(":")
    try:
        return float(at), call_id
    except ValueError:
        raise ValueError(f"not a page key: {text!r}") from None


def calls_csv(ledger: Ledger, view: View, *, only: str | None = None) -> Iterator[str]:
    """The view's calls as CSV, newest first, text cells escaped as the report's CSV escapes them
    (no cell a spreadsheet would run as a formula), at most ``CSV_LIMIT`` rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    names: list[str] | None = None
    before = None
    written = 0
    while written < CSV_LIMIT:
        rows = ledger.browse(view.start, view.end, view.where, only=only, before=before, limit=5000)
        if not rows:
            break
        if names is None:
            names = list(rows[0])
            writer.writerow(names)
        for r in rows:
            writer.writerow([csv_text(r.get(n)) if isinstance(r.get(n), str) else r.get(n) for n in names])
        written += len(rows)
        before = (rows[-1]["started_at"], rows[-1]["id"])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    if names is None:
        yield ",".join(LISTED) + "\n"
