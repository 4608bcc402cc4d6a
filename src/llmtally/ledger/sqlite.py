"""The SQLite ledger: one file, WAL mode, several processes writing at once.

Opening checks the file before writing anything: a file that is not SQLite, or a SQLite database
that is not an llmtally ledger (it has tables but no ``llmtally_schema``), raises ``LedgerError``
and is left untouched. Older ledgers are migrated forward in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._records import COLUMNS, SCHEMA_VERSION, LedgerError

__all__ = ["SQLiteLedger"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Seconds a write waits for another process's lock before it fails (and the batch is spooled).
BUSY_TIMEOUT = 30.0
# version -> statements that bring a ledger from the version before it to this one.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE calls (" + ", ".join(f"{name} {kind}" for name, kind in COLUMNS) + ")",
        "CREATE INDEX calls_started_at ON calls (started_at)",
        "CREATE INDEX calls_model ON calls (model)",
    ],
}


class SQLiteLedger:
    """Appends call records to a SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.url = f"sqlite:///{self.path}"
        self._check_file()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._local = threading.local()
        self._migrate()

    def __repr__(self) -> str:
        return f"<SQLiteLedger {self.path}>"

    def _check_file(self) -> None:
        if not os.path.exists(self.path):
            return
        if os.path.isdir(self.path):
            raise LedgerError(f"the ledger path {self.path} is a directory")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head and head != _SQLITE_MAGIC:
            raise LedgerError(
                f"{self.path} is not a SQLite database; refusing to use it as the llmtally ledger"
            )
        if not head:
            return
        # Look before touching: even switching to WAL would rewrite a foreign database's header.
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the SQLite ledger {self.path}: {exc}") from exc
        try:
            self._version(conn)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        finally:
            conn.close()

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True
                )
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open the SQLite ledger {self.path}: {exc}") from exc
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            self._local.conn = conn
        return conn

    def _version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "llmtally_schema" not in tables:
            if tables:
                raise LedgerError(
                    f"{self.path} is a SQLite database but not an llmtally ledger "
                    f"(it has tables {sorted(tables)}); refusing to write to it"
                )
            return 0
        row = conn.execute("SELECT MAX(version) FROM llmtally_schema").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        try:
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path} is an llmtally ledger of schema {version}, newer than this llmtally "
                    f"({SCHEMA_VERSION}); upgrade llmtally"
                )
            if version == 0:
                conn.execute(
                    "CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute("INSERT INTO llmtally_schema VALUES (?, ?)", (target, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def write(self, rows: Sequence[tuple[Any, ...]], *, ignore_duplicates: bool = False) -> None:
        """Append rows in one transaction (all or none).

        With ``ignore_duplicates``, rows whose id is already in the ledger are skipped rather than
        failing the whole batch (a replayed spool may hold rows that were written before).
        """
        conn = self.connect()
        placeholders = ", ".join("?" * len(COLUMNS))
        verb = "INSERT OR IGNORE" if ignore_duplicates else "INSERT"
        conn.execute("BEGIN")
        try:
            conn.executemany(f"{verb} INTO calls VALUES ({placeholders})", rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may already have ended it
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
