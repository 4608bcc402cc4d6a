"""The ledger: every settled call as one durable record.

``llmtally.configure(ledger=URL)`` (or the ``LLMTALLY_LEDGER`` environment variable) picks where:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; ``sqlite://`` alone is the
  default file in the user's data directory (platformdirs);
- ``none``: record nothing.

Records never hold prompt or completion text, API keys or headers: only what ``Call`` holds.
Writes leave the call path through a queue and are written in batches by a background thread
(``_writer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._records import COLUMNS, LedgerError, to_row

if TYPE_CHECKING:
    from .sqlite import SQLiteLedger

__all__ = ["COLUMNS", "LedgerError", "default_sqlite_path", "open_ledger", "to_row"]


def default_sqlite_path() -> str:
    import os

    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("llmtally", appauthor=False), "ledger.db")


def open_ledger(url: str) -> SQLiteLedger | None:
    """The ledger a URL names, opened and checked; ``None`` for ``none``. Bad URLs raise LedgerError."""
    text = url.strip()
    if text.lower() in ("none", "off", ""):
        return None
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
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
        raise LedgerError(f"PostgreSQL ledgers are not available in this version: {url!r}")
    raise LedgerError(f"unknown ledger scheme {scheme!r} in {url!r} (expected sqlite, postgresql or none)")
