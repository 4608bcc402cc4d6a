"""The record of one call as the ledger stores it, the same for every backend."""

from __future__ import annotations

import json
import os
import socket
import uuid
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._usage import Call

__all__ = ["COLUMNS", "SCHEMA_VERSION", "LedgerError", "to_row"]

#: Bumped with every change to the columns; each backend migrates older ledgers forward.
SCHEMA_VERSION = 1

#: (name, SQL type). ``cost`` is the exact Decimal as text; ``cost_pico`` the same in integer
#: picodollars (10**-12 USD, exact for catalogue prices) for fast sums.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT PRIMARY KEY"),
    ("started_at", "DOUBLE PRECISION NOT NULL"),
    ("ended_at", "DOUBLE PRECISION NOT NULL"),
    ("latency_ms", "DOUBLE PRECISION NOT NULL"),
    ("provider", "TEXT"),
    ("requested_model", "TEXT"),
    ("model", "TEXT"),
    ("endpoint", "TEXT NOT NULL"),
    ("request_id", "TEXT"),
    ("status", "INTEGER"),
    ("ok", "INTEGER NOT NULL"),
    ("error", "TEXT"),
    ("stream", "INTEGER NOT NULL"),
    ("prompt_tokens", "INTEGER"),
    ("completion_tokens", "INTEGER"),
    ("cached_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"),
    ("cost", "TEXT"),
    ("cost_pico", "BIGINT"),
    ("currency", "TEXT NOT NULL"),
    ("estimated", "INTEGER NOT NULL"),
    ("price_source", "TEXT"),
    ("scope_path", "TEXT NOT NULL"),  # JSON array of scope names, outermost first
    ("tags", "TEXT"),
    ("host", "TEXT NOT NULL"),
    ("pid", "INTEGER NOT NULL"),
)

_PICO = Decimal("1e-12")
_HOST = socket.gethostname()


class LedgerError(Exception):
    """The ledger cannot be used as configured: a bad URL, a file that is not an llmtally ledger, ..."""


def to_row(call: Call) -> tuple[Any, ...]:
    """A Call as a tuple in COLUMNS order. No text of prompts or answers exists to be stored."""
    u = call.usage
    cost = call.cost
    return (
        uuid.uuid4().hex,
        call.started_at,
        call.started_at + call.latency,
        round(call.latency * 1000, 3),
        call.provider,
        call.requested_model,
        call.model,
        call.endpoint,
        call.request_id,
        call.status,
        int(call.ok),
        call.error,
        int(call.stream),
        u.prompt_tokens if u else None,
        u.completion_tokens if u else None,
        u.cached_tokens if u else None,
        u.cache_write_tokens if u else None,
        u.reasoning_tokens if u else None,
        None if cost is None else str(cost),
        None if cost is None else int((cost / _PICO).quantize(Decimal(1), ROUND_HALF_EVEN)),
        call.currency,
        int(call.estimated),
        call.price_source,
        json.dumps(list(call.scope_path)),
        json.dumps(dict(call.tags), sort_keys=True, default=str) if call.tags else None,
        _HOST,
        os.getpid(),
    )
