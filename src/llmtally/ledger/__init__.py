"""The ledger: every settled call as one durable record.

``llmtally.configure(ledger=URL)`` (or the ``LLMTALLY_LEDGER`` environment variable) picks where:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; ``sqlite://`` alone is the
  default file in the user's data directory (platformdirs);
- ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``): a shared PostgreSQL
  database, through psycopg 3 (``pip install 'llmtally[postgres]'``);
- ``none``: record nothing.

Records never hold prompt or completion text, API keys or headers: only what ``Call`` holds.
Writes leave the call path through a queue and are written in batches by a background thread
(``_writer``). While the ledger cannot be written (server down, disk full, file locked), batches go
to a local spool file (``_spool``) and are replayed, exactly once, when it can be again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._records import COLUMNS, LedgerError, redact_url, to_row

if TYPE_CHECKING:
    from .postgres import PostgresLedger
    from .sqlite import SQLiteLedger

__all__ = ["COLUMNS", "LedgerError", "default_sqlite_path", "open_ledger", "redact_url", "to_row"]


def default_sqlite_path() -> str:
    import os

    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("llmtally", appauthor=False), "ledger.db")


def open_ledger(url: str) -> SQLiteLedger | PostgresLedger | None:
    """The ledger a URL names, opened and checked; ``None`` for ``none``. Bad URLs raise LedgerError."""
    text = url.strip()
    if text.lower() in ("none", "off", ""):
        return None
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    url = redact_url(url)  # from here on, only for messages
    if not sep:
        raise LedgerError(f"not a ledger URL: {url!r} (expected sqlite:///path, postgresql://... or none)")
    if scheme == "sqlite":
        from .sqlite import SQLiteLedger

        if rest in ("", "/"):
            path = default_sqlite_path()
        elif rest.startswith("/"):
            path = rest[1:]  # sqlite:///relative.db -> relative.db; sqlite:////abs.db -> /abs.db
        else:
            raise LedgerError(
                f"bad SQLite ledger URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        return SQLiteLedger(path)
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLedger

        return PostgresLedger(text)
    raise LedgerError(f"unknown ledger scheme {scheme!r} in {url!r} (expected sqlite, postgresql or none)")
