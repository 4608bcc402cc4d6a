"""The PostgreSQL ledger: one ``calls`` table shared by every process and host that writes to it.

``llmtally.configure(ledger="postgresql://user:password@host:5432/dbname")`` (``postgres://`` too;
any libpq URL parameter works, e.g. ``?sslmode=require``). Needs psycopg 3
(``pip install 'llmtally[postgres]'``), imported only when such a ledger is opened.

Opening checks the database before writing anything: a database with a ``calls`` table but no
``llmtally_schema`` is someone else's, so it raises ``LedgerError`` and is left untouched. Ledgers
are created or migrated forward in one transaction under an advisory lock, so several processes
opening a new ledger at once migrate it once. Passwords never appear in ``url``, ``repr`` or any
error message: they are replaced by ``***``.

Writes go through one connection, used by one thread at a time; a connection the server dropped
(restart, failover, idle timeout) is replaced on the next write, and a write that failed on it
is retried once on the fresh connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._read import (
    QUANTILES,
    Where,
    browse_sql,
    check_group,
    grouped,
    refusals_sql,
    sums_of_calls,
    tag_names,
    where_sql,
)
from ._records import (
    NAMES,
    REFUSAL_NAMES,
    REFUSALS,
    SCHEMA_VERSION,
    LedgerError,
    added_at,
    columns_at,
    redact_url,
    refusals_table,
    url_secrets,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresLedger"]

log = logging.getLogger("llmtally")

#: Words of a connection error that waiting will not cure: credentials, database or role, TLS.
_NOT_TRANSIENT = (
    "authentication",
    "password",
    "pg_hba.conf",
    "does not exist",
    "permission denied",
    "ssl",
    "invalid",  # a malformed option libpq only checks when it connects
)

# Taken (per transaction) while creating or migrating the schema: "llmtally" as a 64-bit integer.
_LOCK_KEY = int.from_bytes(b"llmtally", "big")
_NAMES = ", ".join(NAMES)
_INSERT = f"INSERT INTO calls ({_NAMES}) VALUES ({', '.join(['%s'] * len(NAMES))})"
_COPY = f"COPY calls ({_NAMES}) FROM STDIN"
_INSERT_REFUSAL = (
    f"INSERT INTO refusals ({', '.join(REFUSAL_NAMES)}) VALUES ({', '.join(['%s'] * len(REFUSAL_NAMES))}) "
    "ON CONFLICT (id) DO NOTHING"
)
# version -> statements that bring a ledger from the version before it to this one.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE calls (" + ", ".join(f"{name} {kind}" for name, kind in columns_at(1)) + ")",
        "CREATE INDEX calls_started_at ON calls (started_at)",
        "CREATE INDEX calls_model ON calls (model)",
    ],
    **{
        version: [f"ALTER TABLE calls ADD COLUMN {name} {kind}" for name, kind in (*added[0], *added[1])]
        for version in range(2, SCHEMA_VERSION + 1)
        for added in [added_at(version)]
    },
}
_MIGRATIONS[REFUSALS] += refusals_table()


def _group_sql(key: str) -> tuple[str, list[Any]]:
    """A group's expression in PostgreSQL and its parameters (tag names are bound, never inlined).

    The same groups, with the same values, as the SQLite ledger's.
    """
    tag = check_group(key)
    if tag is not None:
        # As SQLite's json_extract reads them: JSON true/false are 1/0 there, not true/false.
        return (
            "COALESCE(CASE jsonb_typeof(tags::jsonb -> %s) "
            "WHEN 'boolean' THEN ((tags::jsonb -> %s)::boolean::int)::text "
            "ELSE tags::jsonb ->> %s END, '')",
            [tag, tag, tag],
        )
    return {
        "model": "COALESCE(model, requested_model, 'unknown')",
        "provider": "COALESCE(provider, 'unknown')",
        "endpoint": "endpoint",
        "day": "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        "hour": "to_char(to_timestamp(started_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:00')",
        "scope": "scope_path",
        "currency": "currency",
        "price_source": "COALESCE(price_source, '(no price)')",
    }[key], []


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise LedgerError(
            "PostgreSQL ledgers need psycopg 3: pip install 'llmtally[postgres]' (or 'psycopg[binary]')"
        ) from exc
    return psycopg


class PostgresLedger:
    """Appends call records to the ``calls`` table of a PostgreSQL database, and reads them back.

    Opened to read (``create=False``, what reports do) it never creates or migrates anything and
    reads in read-only transactions.
    """

    placeholder = "%s"
    #: Latency percentiles are exact (the SQLite ledger's come from a histogram).
    latency_exact = True
    fork_safe = True  # a child opens its own connection (after_fork)

    def __init__(self, url: str, *, create: bool = True, connect_timeout: float = 10) -> None:
        self.url = redact_url(url)
        self._conninfo = url
        self._secrets = url_secrets(url)
        self._pg = _psycopg()
        try:
            params = self._pg.conninfo.conninfo_to_dict(url)
        except self._pg.Error as exc:
            raise LedgerError(f"bad PostgreSQL ledger URL {self.url}: {self._scrub(exc)}") from None
        # Defaults the URL may override: a dead host must not hang the writer for minutes.
        self._options: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = max(1, round(connect_timeout))
        if "application_name" not in params:
            self._options["application_name"] = "llmtally" if create else "llmtally report"
        self.readonly = not create
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = os.getpid()
        self._migrated = not create
        try:
            self._conn = self._connect()
        except LedgerError as exc:
            if self.readonly or not exc.transient:
                raise  # a bad URL, refused credentials, no such database: said at once
            # A server down or restarting: records are spooled until it is back, then migrated to.
            log.warning("llmtally: %s; records are spooled until it can be reached", exc)
            return
        if create:
            self.migrate()

    def __repr__(self) -> str:
        return f"<PostgresLedger {self.url}>"

    def _scrub(self, exc: BaseException) -> str:
        """The driver's message without the password (libpq echoes bad URLs whole)."""
        text = str(exc).strip().replace(self._conninfo, self.url)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, doing: str, exc: BaseException) -> LedgerError:
        # A value out of range or a constraint: the rows were refused, the server is fine.
        refused = isinstance(exc, (self._pg.DataError, self._pg.IntegrityError))
        return LedgerError(f"{doing} the PostgreSQL ledger {self.url}: {self._scrub(exc)}", refused=refused)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = self._pg.connect(self._conninfo, **self._options)
        except self._pg.Error as exc:
            # from None: the driver's own exception may quote the password.
            error = self._error("cannot connect to", exc)
            state = getattr(exc, "sqlstate", None)
            # No answer at all, a connection exception (08...), a server starting or shutting down, or
            # too many connections: it passes. Refused credentials (28...) or no such database do not.
            # libpq reports errors met while connecting without a state: its text says which.
            text = str(exc).lower()
            refused = any(word in text for word in _NOT_TRANSIENT)
            error.transient = isinstance(exc, self._pg.OperationalError) and (
                (state is None and not refused)
                or (state or "").startswith("08")
                or state in ("57P01", "57P02", "57P03", "53300")
            )
            raise error from None
        if self.readonly:
            conn.read_only = True  # BEGIN READ ONLY: a report never writes
        self._pid = os.getpid()
        return conn

    def _version(self, conn: psycopg.Connection[Any]) -> int:
        # to_regclass resolves names as the INSERTs will (search_path), and never fails.
        row = conn.execute(
            "SELECT to_regclass('llmtally_schema')::text, to_regclass('calls')::text"
        ).fetchone()
        assert row is not None
        schema_table, calls_table = row
        if schema_table is None:
            if calls_table is not None:
                raise LedgerError(
                    f"the database of {self.url} has a table {calls_table} but is not an llmtally "
                    "ledger (no llmtally_schema table); refusing to write to it"
                )
            return 0
        version = conn.execute("SELECT MAX(version) FROM llmtally_schema").fetchone()
        return int(version[0] or 0) if version else 0

    def migrate(self) -> None:
        """Create the ledger, or bring an older one to this llmtally's schema, in one transaction."""
        with self._lock:
            conn, _ = self._connection()
            try:
                self._migrate(conn)
            except BaseException:
                self._drop()
                raise

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        self._migrate_now(conn)
        self._migrated = True

    def _migrate_now(self, conn: psycopg.Connection[Any]) -> None:
        try:
            with conn.transaction():
                # Several processes opening a new ledger at once: one creates it, the others wait
                # here and then see it. Released at the end of the transaction.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                version = self._version(conn)
                if version > SCHEMA_VERSION:
                    raise LedgerError(
                        f"{self.url} is an llmtally ledger of schema {version}, newer than this "
                        f"llmtally ({SCHEMA_VERSION}); upgrade llmtally"
                    )
                if version == 0:
                    conn.execute(
                        "CREATE TABLE llmtally_schema "
                        "(version INTEGER NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        conn.execute(statement)
                    conn.execute("INSERT INTO llmtally_schema VALUES (%s, %s)", (target, time.time()))
        except self._pg.Error as exc:
            raise self._error("cannot set up", exc) from None

    def _connection(self) -> tuple[psycopg.Connection[Any], bool]:
        """The connection to write on, and whether it is new (so a failure on it is not stale)."""
        if self._pid != os.getpid():
            self._disown()
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        self._conn = None
        if conn is not None:
            conn.close()
        self._conn = self._connect()
        if not self._migrated:  # the server was down when the ledger was opened
            try:
                self._migrate(self._conn)
            except BaseException:
                self._drop()
                raise
        return self._conn, True

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        rows: Sequence[tuple[Any, ...]],
        ignore: bool,
        refusals: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        with conn.transaction():
            if refusals:
                with conn.cursor() as cur:
                    cur.executemany(_INSERT_REFUSAL, refusals)
            if not rows:
                return
            if ignore:
                # Rows that may be in the table already (a replayed spool): the ids decide.
                with conn.cursor() as cur:
                    cur.executemany(_INSERT + " ON CONFLICT (id) DO NOTHING", rows)
            else:
                with conn.cursor() as cur, cur.copy(_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (shared budgets); its rows, if it returns any."""
        with self._lock:
            conn, _ = self._connection()
            try:
                with conn.transaction():
                    cur = conn.execute(sql, params)
                    return list(cur.fetchall()) if cur.description else []
            except self._pg.Error as exc:
                if conn.broken:
                    self._drop()
                raise self._error("cannot use", exc) from None

    def sums(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """The report's rows: each group's values, then SUMS, over calls in ``[start, end)`` that
        ``where`` keeps."""
        exprs, params = [], []
        for g in groups:
            expr, args = _group_sql(g)
            exprs.append(expr)
            params += args
        with self._lock:
            conn, _ = self._connection()
            try:
                with conn.transaction():
                    found = conn.execute("SELECT to_regclass('calls')::text").fetchone()
                    if found is None or found[0] is None:
                        raise LedgerError(
                            f"no calls table in the PostgreSQL ledger {self.url}: not an llmtally ledger, "
                            "or no call recorded in it yet (record calls with `llmtally run` or "
                            "llmtally.configure)"
                        )
                    columns = {
                        r[0]
                        for r in conn.execute(
                            "SELECT column_name FROM information_schema.columns WHERE table_name = 'calls' "
                            "AND table_schema = ANY (current_schemas(false))"
                        ).fetchall()
                    }
                    sql, window = grouped(
                        exprs,
                        sums_of_calls(columns),
                        "calls",
                        "started_at",
                        start,
                        end,
                        "%s",
                        where_sql(where, _group_sql, "%s"),
                    )
                    rows: list[tuple[Any, ...]] = conn.execute(sql, [*params, *window]).fetchall()
                    return rows
            except self._pg.Error as exc:
                if conn.broken:
                    self._drop()
                raise self._error("cannot read", exc) from None

    def latency(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """Per group, the group's values then the p50 and p95 latency in ms, over calls in
        ``[start, end)`` that ``where`` keeps: exact (nearest rank, ``percentile_disc``), computed by
        the server."""
        exprs, params = [], []
        for g in groups:
            expr, args = _group_sql(g)
            exprs.append(expr)
            params += args
        quantiles = ", ".join(f"percentile_disc({q!r}) WITHIN GROUP (ORDER BY latency_ms)" for q in QUANTILES)
        sql, window = grouped(
            exprs, quantiles, "calls", "started_at", start, end, "%s", where_sql(where, _group_sql, "%s")
        )
        with self._lock:
            conn, _ = self._connection()
            try:
                with conn.transaction():
                    found = conn.execute("SELECT to_regclass('calls')::text").fetchone()
                    if found is None or found[0] is None:
                        return []
                    rows = conn.execute(sql, [*params, *window]).fetchall()
            except self._pg.Error as exc:
                if conn.broken:
                    self._drop()
                raise self._error("cannot read", exc) from None
        n = len(groups)
        return [
            (*row[:n], *(None if v is None else float(v) for v in row[n:]))
            for row in rows
            if row[n] is not None
        ]

    def _read(
        self, sql: str, params: Sequence[Any], table: str = "calls"
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of one query on ``table`` (none if there is no such table yet)."""
        with self._lock:
            conn, _ = self._connection()
            try:
                with conn.transaction():
                    found = conn.execute("SELECT to_regclass(%s)::text", (table,)).fetchone()
                    if found is None or found[0] is None:
                        return [], []
                    cur = conn.execute(sql, params)
                    names = [d.name for d in cur.description or ()]
                    return names, list(cur.fetchall())
            except self._pg.Error as exc:
                if conn.broken:
                    self._drop()
                raise self._error("cannot read", exc) from None

    def _call_columns(self) -> list[str]:
        _, rows = self._read(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'calls' "
            "AND table_schema = ANY (current_schemas(false)) ORDER BY ordinal_position",
            (),
        )
        return [r[0] for r in rows]

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
        """The calls in ``[start, end)`` that ``where`` keeps, newest first, whole (``_read.browse_sql``)."""
        columns = self._call_columns()
        if not columns:
            return []
        sql, params = browse_sql(columns, start, end, where, _group_sql, only, before, limit, "%s")
        names, rows = self._read(sql, params)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def refusals(
        self, start: float | None, end: float | None, where: Where = (), *, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """The refusals in ``[start, end)`` that ``where`` keeps, newest first (``Ledger.refusals``)."""
        sql, params = refusals_sql(REFUSAL_NAMES, start, end, where, _group_sql, limit, "%s")
        names, rows = self._read(sql, params, "refusals")
        if limit is None:
            return [{"action": action, "count": int(n)} for action, n in rows]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def record(self, call_id: str, started_at: float | None = None) -> dict[str, Any] | None:
        """One call's whole record by its id."""
        sql = "SELECT * FROM calls WHERE id = %s"
        params: list[Any] = [call_id]
        if started_at is not None:  # the index on started_at finds it
            sql += " AND started_at = %s"
            params.append(started_at)
        names, rows = self._read(sql, params)
        if not rows and started_at is not None:
            return self.record(call_id)
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def tag_keys(self, start: float | None, end: float | None) -> list[str]:
        """The tag names of the calls in ``[start, end)``, most used first."""
        sql, params = grouped(["tags"], "COUNT(*)", "calls", "started_at", start, end, "%s")
        return tag_names(self._read(sql, params)[1])

    def changed(self) -> tuple[Any, ...]:
        """A value that changes whenever calls are written (the live view polls it)."""
        return tuple(self._read("SELECT COUNT(*), MAX(started_at) FROM calls", ())[1][:1])

    def write(
        self,
        rows: Sequence[tuple[Any, ...]],
        *,
        ignore_duplicates: bool = False,
        refusals: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """Append rows (and ``refusals``' rows) in one transaction (all or none); ``LedgerError`` if
        they could not be.

        With ``ignore_duplicates``, rows whose id is already in the ledger are skipped rather than
        failing the whole batch. Refusals are always written so.
        """
        if not rows and not refusals:
            return
        with self._lock:
            conn, fresh = self._connection()
            try:
                self._insert(conn, rows, ignore_duplicates, refusals)
                return
            except self._pg.Error as exc:
                if fresh or not conn.broken:
                    if conn.broken:
                        self._drop()
                    raise self._error("cannot write to", exc) from None
            # The server dropped a connection that had been idle (restarted, failed over): try
            # once more on a new one. The commit may have happened, hence ignore duplicates.
            self._drop()
            conn, _ = self._connection()
            try:
                self._insert(conn, rows, True, refusals)
            except self._pg.Error as exc:
                if conn.broken:
                    self._drop()
                raise self._error("cannot write to", exc) from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _disown(self) -> None:
        """In a forked child: forget the parent's connection without ending the parent's session.

        Closing it normally would send the server a Terminate message on the socket the child
        shares with the parent; point the child's copy of the socket at /dev/null first.
        """
        conn, self._conn = self._conn, None
        self._pid = os.getpid()
        if conn is None or conn.closed:
            return
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(devnull, conn.fileno())
            finally:
                os.close(devnull)
            conn.close()
        except Exception:  # pragma: no cover - best effort; the parent's session is what matters
            pass

    def after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's writer may have held it) and connection."""
        self._lock = threading.Lock()
        self._disown()

    def close(self) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._disown()
            self._drop()
