"""Requests a limit stopped (or let through in warn mode), as the ledger recorded them.

``llmtally ledger refusals`` and the dashboard's Budgets view read the same thing: the ledger's
``refusals`` (``Ledger.refusals``) over a window, filtered where a filter applies to a request that
was never answered (``model`` is the model asked for; ``currency`` and ``price_source`` do not
apply), newest first, with how many were refused and warned in the window. Money is exact text,
``shown`` beside it rounded for reading, as reports do.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from ..ledger import Ledger
from ..ledger._read import NO_SCOPE, SCOPE_SEPARATOR, Where
from .render import readable

__all__ = ["recent_refusals", "refusal_json"]


def _scope(text: Any) -> str:
    try:
        path = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return str(text)
    if not isinstance(path, list):
        return str(text)
    return SCOPE_SEPARATOR.join(str(p) for p in path) if path else NO_SCOPE


def _tags(text: Any) -> dict[str, Any]:
    try:
        tags = json.loads(text) if text else {}
    except (TypeError, ValueError, RecursionError):
        return {}
    return tags if isinstance(tags, dict) else {}


def _shown(value: Any, limit: str, currency: Any) -> str:
    if value is None:
        return ""
    if limit != "cost":
        return str(value)
    try:
        return readable(Decimal(str(value)), str(currency or "USD"))
    except (InvalidOperation, ValueError):
        return str(value)


def refusal_json(row: dict[str, Any]) -> dict[str, Any]:
    """One refusal as the dashboard and ``--format json`` give it."""
    limit = str(row.get("limit_kind"))
    return {
        "id": row.get("id"),
        "at": row.get("at"),
        "action": row.get("action"),
        "refused_by": row.get("refused_by"),
        "by": row.get("by_kind"),
        "limit": limit,
        "allowed": row.get("allowed"),
        "spent": row.get("spent"),
        "worst": row.get("worst"),
        "currency": row.get("currency"),
        "shown": {k: _shown(row.get(k), limit, row.get("currency")) for k in ("allowed", "spent", "worst")},
        "scope": _scope(row.get("scope_path")),
        "tags": _tags(row.get("tags")),
        "model": row.get("requested_model"),
        "provider": row.get("provider"),
        "endpoint": row.get("endpoint"),
        "host": row.get("host"),
        "pid": row.get("pid"),
        "run_id": row.get("run_id"),
    }


def recent_refusals(
    ledger: Ledger, start: float | None, end: float | None, where: Where = (), limit: int = 50
) -> dict[str, Any]:
    """The refusals of ``[start, end)`` that ``where`` keeps: counts per action and the newest
    ``limit`` of them."""
    counts = {"refused": 0, "warned": 0}
    for c in ledger.refusals(start, end, where, limit=None):
        counts[str(c["action"])] = counts.get(str(c["action"]), 0) + int(c["count"])
    rows = [refusal_json(r) for r in ledger.refusals(start, end, where, limit=limit)]
    return {**counts, "rows": rows}
