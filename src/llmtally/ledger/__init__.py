"""The ledger: every settled call as one durable record, in SQLite or PostgreSQL.

A URL names a ledger:

- ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``; ``sqlite://`` alone is the
  default file in the user's data directory (platformdirs);
- ``postgresql://user:password@host:5432/dbname`` (or ``postgres://``): a shared PostgreSQL
  database, through psycopg 3 (``pip install 'llmtally[postgres]'``);
- ``none``: record nothing.

Every backend implements ``Ledger``; the writer, shared budgets and reports use nothing else. Records
never hold prompt or completion text, API keys or headers: only what ``Call`` holds (``_records``).
Writes leave the call path through a queue and are written in batches by a background thread
(``_writer``). While the ledger cannot be written (server down, disk full, file locked), batches go
to a local spool file (``_spool``) and are replayed, exactly once, when it can be again.

Which ledger a process uses (explicit, configured, environment, default) is decided in one place,
``_runtime.ledger_url``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from ._read import Where
from ._records import COLUMNS, LedgerError, redact_url, to_row

__all__ = [
    "COLUMNS",
    "ENV_LEDGER",
    "Ledger",
    "LedgerError",
    "default_sqlite_path",
    "open_ledger",
    "redact_url",
    "to_row",
]

#: The environment variable that names the ledger when the program does not.
ENV_LEDGER = "LLMTALLY_LEDGER"


class Ledger(Protocol):
    """What a ledger backend provides (``sqlite.SQLiteLedger``, ``postgres.PostgresLedger``)."""

    #: The ledger's URL with any password replaced by ``***``: safe for messages and spool names.
    url: str
    #: The parameter marker of the backend's SQL (``?`` or ``%s``), for ``execute``.
    placeholder: str
    #: Whether a forked child may write to it itself; if not, its records go to the spool and the
    #: parent's writer moves them in.
    fork_safe: bool
    #: Whether ``latency`` is exact, or approximate (within ``_read.LATENCY_PRECISION``).
    latency_exact: bool

    def migrate(self) -> None:
        """Create the ledger or bring it to this llmtally's schema (idempotent; opening a ledger
        to write does it); ``LedgerError`` if it is not an llmtally ledger or is newer than this."""

    def write(
        self,
        rows: Sequence[tuple[Any, ...]],
        *,
        ignore_duplicates: bool = False,
        refusals: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """Append rows (``_records.COLUMNS`` order) and refusals' rows (``REFUSAL_COLUMNS``) in one
        transaction, all or none. Refusals' ids already in the ledger are skipped."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (shared budgets); its rows, if any."""

    def sums(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """Per group (``_read.GROUPS``), the group's values then ``_records.SUMS``, over the calls
        started in ``[start, end)`` that ``where`` keeps (``_read.parse_where``)."""

    def latency(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """Per group, the group's values then the p50 and p95 latency in ms (``_read.QUANTILES``),
        over the calls started in ``[start, end)`` that ``where`` keeps."""

    def browse(
        self,
        start: float | None,
        end: float | None,
        where: Where = (),
        *,
        only: str | None = None,
        before: tuple[float, str] | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The records (column -> value) of the calls in ``[start, end)`` that ``where`` keeps,
        newest first; ``only`` one of ``_read.ONLY``; ``before`` the (started_at, id) a page ends at."""

    def record(self, call_id: str, started_at: float | None = None) -> dict[str, Any] | None:
        """One call's record, or None."""

    def refusals(
        self, start: float | None, end: float | None, where: Where = (), *, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """The refusals (column -> value) in ``[start, end)`` that ``where`` keeps, newest first;
        with ``limit=None``, instead one {"action": ..., "count": n} per action. None in a ledger
        older than the ``refusals`` table (read without migrating it)."""

    def tag_keys(self, start: float | None, end: float | None) -> list[str]:
        """The tag names used by the calls of ``[start, end)`` (or a little more), most used first."""

    def changed(self) -> tuple[Any, ...]:
        """A cheap value that changes whenever calls are written."""

    def after_fork(self) -> None:
        """In a forked child: drop what the parent's connections and locks were."""

    def close(self) -> None: ...


def default_sqlite_path() -> str:
    import os

    from platformdirs import user_data_dir

    return os.path.join(user_data_dir("llmtally", appauthor=False), "ledger.db")


def open_ledger(url: str, *, create: bool = True) -> Ledger | None:
    """The ledger a URL names, opened and checked; ``None`` for ``none``. Bad URLs raise LedgerError.

    With ``create`` (writing) the ledger is created or migrated; without it (reading: reports) it
    must exist and is only read.
    """
    text = url.strip()
    if text.lower() in ("none", "off", ""):
        return None
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    shown = redact_url(url)  # from here on, only for messages
    if not sep:
        raise LedgerError(f"not a ledger URL: {shown!r} (expected sqlite:///path, postgresql://... or none)")
    ledger: Ledger
    if scheme == "sqlite":
        from .sqlite import SQLiteLedger

        if rest in ("", "/"):
            path = default_sqlite_path()
        elif rest.startswith("/"):
            path = rest[1:]  # sqlite:///relative.db -> relative.db; sqlite:////abs.db -> /abs.db
        else:
            raise LedgerError(
                f"bad SQLite ledger URL {shown!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        ledger = SQLiteLedger(path, create=create)
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresLedger

        ledger = PostgresLedger(text, create=create)
    else:
        import re

        # What precedes "://" is only shown when it is a scheme: in a libpq key/value string it is
        # anything, a password's first part included.
        named = f"scheme {scheme!r}" if re.fullmatch(r"[a-z][a-z0-9+.\-]{0,30}", scheme) else "scheme"
        raise LedgerError(f"unknown ledger {named} in {shown!r} (expected sqlite, postgresql or none)")
    return ledger
