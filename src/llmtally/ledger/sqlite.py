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

__all__ = ["ROLLUP_KEYS", "ROLLUP_SUMS", "SQLiteLedger", "rollup"]

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Seconds a write waits for another process's lock before it fails (and the batch is spooled).
BUSY_TIMEOUT = 30.0
# version -> statements that bring a ledger from the version before it to this one.
_CALLS_COLUMNS = ", ".join(f"{name} {'TEXT NOT NULL' if name == 'id' else kind}" for name, kind in COLUMNS)
# calls_hourly: the calls' sums per hour and group, kept up to date by write(), so that reports over
# millions of calls read thousands of rows (see _report). Columns after the keys follow ROLLUP_SUMS.
ROLLUP_KEYS = ("hour", "model", "provider", "endpoint", "scope_path", "tags")
ROLLUP_SUMS = (
    "requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_pico",
    "unpriced_requests",
    "estimated_requests",
)
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        # Clustered by time (WITHOUT ROWID, key (started_at, id)): time windows are range scans and
        # no secondary index slows the writes; (started_at, id) is as unique as id.
        f"CREATE TABLE calls ({_CALLS_COLUMNS}, PRIMARY KEY (started_at, id)) WITHOUT ROWID",
        "CREATE TABLE calls_hourly (hour INTEGER NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, "
        "endpoint TEXT NOT NULL, scope_path TEXT NOT NULL, tags TEXT NOT NULL, "
        + ", ".join(f"{name} INTEGER NOT NULL" for name in ROLLUP_SUMS)
        + ", PRIMARY KEY (hour, model, provider, endpoint, scope_path, tags)) WITHOUT ROWID",
    ],
}
_COL = {name: i for i, (name, _) in enumerate(COLUMNS)}


def rollup(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The hourly sums of rows, one tuple per (hour, group): ROLLUP_KEYS then ROLLUP_SUMS."""
    c = _COL
    sums: dict[tuple[Any, ...], list[int]] = {}
    for r in rows:
        key = (
            int(r[c["started_at"]] // 3600 * 3600),
            r[c["model"]] or r[c["requested_model"]] or "unknown",
            r[c["provider"]] or "unknown",
            r[c["endpoint"]],
            r[c["scope_path"]],
            r[c["tags"]] or "",
        )
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0] * len(ROLLUP_SUMS)
        has_usage = r[c["prompt_tokens"]] is not None
        acc[0] += 1
        acc[1] += 0 if r[c["ok"]] else 1
        if has_usage:
            acc[2] += r[c["prompt_tokens"]] or 0
            acc[3] += r[c["completion_tokens"]] or 0
            acc[4] += r[c["cached_tokens"]] or 0
            acc[5] += r[c["cache_write_tokens"]] or 0
            acc[6] += r[c["reasoning_tokens"]] or 0
        if r[c["cost_pico"]] is not None:
            acc[7] += r[c["cost_pico"]]
        elif has_usage:
            acc[8] += 1
        acc[9] += r[c["estimated"]] or 0
    return [(*k, *v) for k, v in sums.items()]


_UPSERT = (
    f"INSERT INTO calls_hourly VALUES ({', '.join('?' * (len(ROLLUP_KEYS) + len(ROLLUP_SUMS)))}) "
    f"ON CONFLICT ({', '.join(ROLLUP_KEYS)}) DO UPDATE SET "
    + ", ".join(f"{name} = {name} + excluded.{name}" for name in ROLLUP_SUMS)
)


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
        conn.execute("BEGIN")
        try:
            if ignore_duplicates:
                # Row by row, to add to the hourly sums only the rows that were new.
                fresh = []
                for row in rows:
                    if conn.execute(f"INSERT OR IGNORE INTO calls VALUES ({placeholders})", row).rowcount:
                        fresh.append(row)
            else:
                conn.executemany(f"INSERT INTO calls VALUES ({placeholders})", rows)
                fresh = list(rows)
            conn.executemany(_UPSERT, rollup(fresh))
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
