"""The record of one call as the ledger stores it, the same for every backend."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
from decimal import ROUND_HALF_EVEN
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._usage import Call

__all__ = ["COLUMNS", "SCHEMA_VERSION", "LedgerError", "redact_url", "to_row", "url_secrets"]

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

_HOST = socket.gethostname()


class LedgerError(Exception):
    """The ledger cannot be used as configured: a bad URL, a file that is not an llmtally ledger, ..."""


# user:password@ in the authority, and password=... (or sslpassword=...) among the query parameters.
_USERINFO_PASSWORD = re.compile(r"^([^:/?#]+://[^:@/?#]*):[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: what messages, logs and spool names may show.

    ``redact_url("postgresql://app:s3cret@db/prod")`` is ``"postgresql://app:***@db/prod"``.
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url, count=1))


def url_secrets(url: str) -> list[str]:
    """The passwords a URL holds, as written and percent-decoded, to scrub from driver messages."""
    from urllib.parse import unquote

    found: list[str] = []
    m = _USERINFO_PASSWORD.match(url)
    if m:
        found.append(url[m.end(1) + 1 : m.end() - 1])
    found += [url[q.end(1) : q.end()] for q in _QUERY_PASSWORD.finditer(url)]
    found += [unquote(s) for s in found]
    # Longest first, so that a secret containing another is scrubbed whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


class _Ids:
    """Record ids: 64 random bits per process and a counter. Unique across processes and hosts
    (a fork draws new bits) and ~15x cheaper than uuid4, which matters at 100k records/s."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):012x}"


_ids = _Ids()
_scope_json: dict[tuple[str, ...], str] = {}


def _scope_text(path: tuple[str, ...]) -> str:
    text = _scope_json.get(path)
    if text is None:
        text = json.dumps(list(path))
        if len(_scope_json) < 10_000:
            _scope_json[path] = text
    return text


def to_row(call: Call) -> tuple[Any, ...]:
    """A Call as a tuple in COLUMNS order. No text of prompts or answers exists to be stored."""
    u = call.usage
    cost = call.cost
    if u is None:
        tokens: tuple[Any, ...] = (None, None, None, None, None)
    else:
        tokens = (
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.cache_write_tokens,
            u.reasoning_tokens,
        )
    return (
        _ids.next(),
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
        *tokens,
        None if cost is None else str(cost),
        None if cost is None else int(cost.scaleb(12).to_integral_value(ROUND_HALF_EVEN)),
        call.currency,
        int(call.estimated),
        call.price_source,
        _scope_text(call.scope_path),
        json.dumps(dict(call.tags), sort_keys=True, default=str) if call.tags else None,
        _HOST,
        os.getpid(),
    )
