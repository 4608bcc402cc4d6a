"""The SQLite ledger: one file, WAL mode, several processes writing at once.

Opening checks the file before writing anything: a file that is not SQLite, or a SQLite database
that is not an llmtally ledger (it has tables but no ``llmtally_schema``), raises ``LedgerError``
and is left untouched. Older ledgers are migrated forward in one transaction. Opened to read
(``create=False``, what reports do), the file must exist and is opened read-only, never migrated.

``calls`` is clustered by time (``WITHOUT ROWID``, key ``(started_at, id)``), so time windows are
range scans and no secondary index slows the writes; ``calls_hourly`` holds the calls' sums per
hour and group, kept up to date by ``write()``, so that reports over millions of calls read
thousands of rows: whole hours from the rollup, the window's partial edges from the calls.

``calls_hourly`` is keyed by the whole scope path and tag set: a tag nearly unique per call (a user)
makes it as large as the calls. Two coarser rollups hold the same sums with fewer keys (``COARSER``),
written in the same transaction: ``calls_hourly_untagged`` without the tags, ``calls_hourly_narrow``
without the tags and the scope. A report reads the narrowest one that keeps its groups and filters
(``_rollup_for``): by model, a few rows an hour whatever the tags and scopes.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ._read import (
    CALLS_ONLY,
    QUANTILES,
    Where,
    browse_sql,
    check_group,
    grouped,
    latency_bucket_sql,
    merge,
    percentiles,
    refusals_sql,
    sum_of_calls,
    sums_of_calls,
    sums_of_rollup,
    tag_names,
    where_sql,
)
from ._records import (
    ADDED_KINDS,
    ADDED_ROLLUP,
    COST_HI,
    LATENCY_BOUNDS,
    LATENCY_COLUMNS,
    NAMES,
    REFUSAL_NAMES,
    REFUSALS,
    ROLLUP_BY_CURRENCY,
    ROLLUP_COST_SPLIT,
    ROLLUP_LATENCY,
    ROLLUP_NARROW,
    SCHEMA_VERSION,
    SUMS,
    LedgerError,
    added_at,
    columns_at,
    refusals_table,
    sums_at,
)

__all__ = ["COARSER", "ROLLUP_KEYS", "Coarser", "SQLiteLedger", "coarser", "rollup"]

log = logging.getLogger("llmtally")

_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Seconds a read or a budget update waits for another process's lock before it fails.
BUSY_TIMEOUT = 30.0
#: Seconds a batch of records waits for another process's lock before it is spooled instead: well
#: under the time a flush (and the flush at exit) waits, so that a locked ledger spools, never loses.
WRITE_TIMEOUT = 5.0
#: The rollup's key columns; its other columns are SUMS.
ROLLUP_KEYS = ("hour", "model", "provider", "endpoint", "scope_path", "tags", "currency")
#: Each key as the rollup computes it from a row of ``calls`` (what ``rollup()`` does in Python).
_ROLLUP_KEY_SQL = (
    "CAST(started_at / 3600 AS INTEGER) * 3600",
    "COALESCE(NULLIF(model, ''), NULLIF(requested_model, ''), 'unknown')",
    "COALESCE(NULLIF(provider, ''), 'unknown')",
    "endpoint",
    "scope_path",
    "COALESCE(tags, '')",
    "currency",
)


class Coarser(NamedTuple):
    """An hourly rollup with some of the wide one's keys: the same sums, fewer rows."""

    table: str
    keys: tuple[str, ...]
    #: The report groups (and filters) it keeps; a report by any other reads a wider table.
    groups: frozenset[str]

    @property
    def key_sql(self) -> tuple[str, ...]:
        """Each key as computed from a row of ``calls`` (what ``ledger check`` compares it with)."""
        return tuple(_ROLLUP_KEY_SQL[ROLLUP_KEYS.index(k)] for k in self.keys)


_TIMELESS = ("model", "provider", "endpoint", "currency", "day", "hour")
#: The coarser rollups (schema ``ROLLUP_NARROW``), narrowest first; each is summed from the next
#: one's rows when written (the last from the wide one's), so each key must be among the next's.
COARSER = (
    Coarser(
        "calls_hourly_narrow", ("hour", "model", "provider", "endpoint", "currency"), frozenset(_TIMELESS)
    ),
    Coarser(
        "calls_hourly_untagged",
        ("hour", "model", "provider", "endpoint", "scope_path", "currency"),
        frozenset((*_TIMELESS, "scope")),
    ),
)


def _migrations() -> dict[int, list[str]]:
    """Schema version -> the statements that bring a ledger from the version before it."""
    v1 = columns_at(1)
    v1_sums = [s for s in SUMS if s not in {k for kinds in ADDED_KINDS.values() for k in kinds}]
    calls = ", ".join(f"{name} {'TEXT NOT NULL' if name == 'id' else kind}" for name, kind in v1)
    steps = {
        1: [
            f"CREATE TABLE calls ({calls}, PRIMARY KEY (started_at, id)) WITHOUT ROWID",
            "CREATE TABLE calls_hourly (hour INTEGER NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL, "
            "endpoint TEXT NOT NULL, scope_path TEXT NOT NULL, tags TEXT NOT NULL, "
            + ", ".join(f"{name} INTEGER NOT NULL" for name in v1_sums)
            + ", PRIMARY KEY (hour, model, provider, endpoint, scope_path, tags)) WITHOUT ROWID",
        ]
    }
    for version in range(2, SCHEMA_VERSION + 1):
        kinds, others = added_at(version)
        steps[version] = [
            *(f"ALTER TABLE calls ADD COLUMN {name} {kind}" for name, kind in (*kinds, *others)),
            *(f"ALTER TABLE calls_hourly ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0" for name, _ in kinds),
            *(
                f"ALTER TABLE calls_hourly ADD COLUMN {name} INTEGER NOT NULL DEFAULT 0"
                for name in ADDED_ROLLUP.get(version, ())
            ),
        ]
    steps[ROLLUP_BY_CURRENCY] += _rollup_by_currency()
    steps[ROLLUP_LATENCY] += _latency_from_calls()
    steps[ROLLUP_COST_SPLIT] += [
        f"UPDATE calls_hourly SET cost_pico_hi = CAST(cost_pico AS INTEGER) / {COST_HI}, "
        f"cost_pico = CAST(cost_pico AS INTEGER) % {COST_HI} WHERE cost_pico >= {COST_HI}"
    ]
    steps[ROLLUP_NARROW] += [s for coarse in COARSER for s in _coarser_from_wide(coarse)]
    steps[REFUSALS] += refusals_table()
    return steps


def _keyed_table(
    what: str, counts: Sequence[str], options: str, keys: Sequence[str] = ROLLUP_KEYS, default: str = ""
) -> str:
    """CREATE ``what``: the rollup's ``keys``, then integer ``counts`` (with a ``default`` clause)."""
    return (
        f"CREATE {what} (hour INTEGER NOT NULL, "
        + ", ".join(f"{k} TEXT NOT NULL" for k in keys[1:])
        + ", "
        + ", ".join(f"{name} INTEGER NOT NULL{default}" for name in counts)
        + f", PRIMARY KEY ({', '.join(keys)})){options}"
    )


def _coarser_from_wide(coarse: Coarser) -> list[str]:
    """(Re)build a coarser rollup from the wide one, which holds every hour's totals (those of hours
    pruned of their calls too, which the calls no longer have), the cost carried into
    ``cost_pico_hi`` exactly: each wide row's ``cost_pico`` is below ``COST_HI``, summed in two
    halves of 10**9 so that no 64-bit sum overflows."""
    table = coarse.table
    keys = ", ".join(coarse.keys)
    g = 10**9
    plain = [name for name in (*SUMS, *LATENCY_COLUMNS) if name != "cost_pico"]
    return [
        f"DROP TABLE IF EXISTS {table}",
        # DEFAULT 0 as the wide one's added columns: an upsert names only a row's non-zero buckets.
        _keyed_table(
            f"TABLE {table}",
            (*SUMS, "cost_pico_hi", *LATENCY_COLUMNS),
            " WITHOUT ROWID",
            coarse.keys,
            " DEFAULT 0",
        ),
        f"INSERT INTO {table} ({keys}, {', '.join(plain)}, cost_pico, cost_pico_hi) "
        f"SELECT {keys}, {', '.join(plain)}, (a + b / {g}) % {g} * {g} + b % {g}, hi + (a + b / {g}) / {g} "
        f"FROM (SELECT {keys}, {', '.join(f'SUM({name}) AS {name}' for name in plain)}, "
        f"SUM(cost_pico / {g}) AS a, SUM(cost_pico % {g}) AS b, SUM(cost_pico_hi) AS hi "
        f"FROM calls_hourly GROUP BY {keys})",
    ]


def _latency_from_calls() -> list[str]:
    """Fill the rollup's new latency histogram from the calls (hours pruned of their calls keep
    their totals and count no latency)."""
    keys = ", ".join(ROLLUP_KEYS)
    counts = ", ".join(LATENCY_COLUMNS)
    return [
        _keyed_table("TEMP TABLE llmtally_latency", LATENCY_COLUMNS, ""),
        f"INSERT INTO temp.llmtally_latency ({keys}, {counts}) "
        f"SELECT {keys}, {', '.join(f'SUM(b = {i})' for i in range(len(LATENCY_COLUMNS)))} FROM ("
        f"SELECT {', '.join(f'{sql} AS {k}' for k, sql in zip(ROLLUP_KEYS, _ROLLUP_KEY_SQL, strict=True))}, "
        f"{latency_bucket_sql()} AS b FROM calls) GROUP BY {keys}",
        f"UPDATE calls_hourly SET ({counts}) = (SELECT {counts} FROM temp.llmtally_latency l WHERE "
        + " AND ".join(f"l.{k} = calls_hourly.{k}" for k in ROLLUP_KEYS)
        + f") WHERE ({keys}) IN (SELECT {keys} FROM temp.llmtally_latency)",
        "DROP TABLE temp.llmtally_latency",
    ]


def _rollup_by_currency() -> list[str]:
    """Rebuild the rollup with the currency among its keys, from the calls (which hold every call)."""
    sums = sums_at(ROLLUP_BY_CURRENCY)
    calls = {name for name, _ in columns_at(ROLLUP_BY_CURRENCY)}
    keys = ", ".join(ROLLUP_KEYS)
    return [
        _keyed_table("TABLE calls_hourly_new", sums, " WITHOUT ROWID"),
        f"INSERT INTO calls_hourly_new ({keys}, {', '.join(sums)}) "
        f"SELECT {', '.join(_ROLLUP_KEY_SQL)}, {', '.join(sum_of_calls(n, calls) for n in sums)} "
        f"FROM calls GROUP BY {', '.join(str(i + 1) for i in range(len(ROLLUP_KEYS)))}",
        "DROP TABLE calls_hourly",
        "ALTER TABLE calls_hourly_new RENAME TO calls_hourly",
    ]


_MIGRATIONS = _migrations()
_COL = {name: i for i, name in enumerate(NAMES)}
_INSERT = f"INSERT INTO calls ({', '.join(NAMES)}) VALUES ({', '.join('?' * len(NAMES))})"
# Only a duplicate id is skipped (a replayed spool): OR IGNORE would drop a row that breaks NOT NULL
# too, in silence, where the writer must see the failure and set the row apart.
_INSERT_REFUSAL = (
    f"INSERT INTO refusals ({', '.join(REFUSAL_NAMES)}) "
    f"VALUES ({', '.join('?' * len(REFUSAL_NAMES))}) ON CONFLICT (id) DO NOTHING"
)


@functools.lru_cache(maxsize=512)
def _upsert(
    buckets: tuple[int, ...], table: str = "calls_hourly", keys: tuple[str, ...] = ROLLUP_KEYS
) -> str:
    """The statement adding a rollup row's SUMS and the counts of its non-zero latency ``buckets``
    (the others stay as they are: most rows count a few buckets of the 82) to ``table``."""
    rolled = (*SUMS, "cost_pico_hi", *(LATENCY_COLUMNS[i] for i in buckets))
    # The cost carries into cost_pico_hi (both sides read the row as it was: SQLite's upsert).
    cost = "cost_pico + excluded.cost_pico"
    carry = {
        "cost_pico": f"({cost}) % {COST_HI}",
        "cost_pico_hi": f"cost_pico_hi + excluded.cost_pico_hi + ({cost}) / {COST_HI}",
    }
    return (
        f"INSERT INTO {table} ({', '.join((*keys, *rolled))}) "
        f"VALUES ({', '.join('?' * (len(keys) + len(rolled)))}) "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{name} = {carry.get(name, f'{name} + excluded.{name}')}" for name in rolled)
    )


def _add_rollup(
    conn: sqlite3.Connection,
    rolled: list[tuple[Any, ...]],
    table: str = "calls_hourly",
    keys: tuple[str, ...] = ROLLUP_KEYS,
) -> None:
    """Add ``rollup()``'s rows (or ``coarser()``'s, with its ``table`` and ``keys``) to an hourly
    rollup, one statement per set of latency buckets."""
    shapes: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}
    at = len(keys) + SUMS.index("cost_pico")
    for row in rolled:
        histogram = row[-1]
        buckets = tuple(sorted(histogram))
        hi, lo = divmod(row[at], COST_HI)
        shapes.setdefault(buckets, []).append(
            (*row[:at], lo, *row[at + 1 : -1], hi, *(histogram[i] for i in buckets))
        )
    for buckets, rows in shapes.items():
        conn.executemany(_upsert(buckets, table, keys), rows)


def coarser(rolled: list[tuple[Any, ...]], keys: Sequence[str], into: Sequence[str]) -> list[tuple[Any, ...]]:
    """Rows of a rollup keyed by ``keys`` (``rollup()``'s: keys, SUMS, the latency histogram as
    {bucket: count}) summed by the fewer keys ``into``, in the same shape. From rolled rows, not the
    calls: a batch has far fewer of them than calls, unless a tag is nearly unique per call."""
    n = len(keys)
    at = [keys.index(k) for k in into]
    sums: dict[tuple[Any, ...], tuple[list[int], dict[int, int]]] = {}
    for row in rolled:
        key = tuple(row[i] for i in at)
        found = sums.get(key)
        if found is None:
            sums[key] = (list(row[n:-1]), dict(row[-1]))
            continue
        acc, histogram = found
        acc[:] = [a + b for a, b in zip(acc, row[n:-1], strict=True)]
        for bucket, count in row[-1].items():
            histogram[bucket] = histogram.get(bucket, 0) + count
    return [(*k, *acc, histogram) for k, (acc, histogram) in sums.items()]


def _compile_rollup() -> Any:
    """The hourly sums of rows, one tuple per (hour, group): ROLLUP_KEYS, SUMS, then the latency
    histogram as {bucket: count} (its non-zero buckets).

    Straight-line code generated from SUMS (the writer runs it over every row it writes).
    """
    c = _COL
    adds = []
    for i, name in enumerate(SUMS):
        if name == "requests":
            adds.append(f"        acc[{i}] += 1")
        elif name == "failed_requests":
            adds.append(f"        acc[{i}] += 0 if r[{c['ok']}] else 1")
        elif name == "cost_pico":
            adds.append(f"        if r[{c['cost_pico']}] is not None: acc[{i}] += r[{c['cost_pico']}]")
        elif name == "unpriced_requests":
            adds.append(f"        if r[{c['cost']}] is None: acc[{i}] += 1")
        elif name == "estimated_requests":
            adds.append(f"        acc[{i}] += r[{c['estimated']}] or 0")
        else:
            adds.append(f"        acc[{i}] += r[{c[name]}] or 0")
    lines = [
        "def rollup(rows):",
        "    sums = {}",
        "    for r in rows:",
        f"        key = (int(r[{c['started_at']}] // 3600 * 3600), "
        f"r[{c['model']}] or r[{c['requested_model']}] or 'unknown', r[{c['provider']}] or 'unknown', "
        f"r[{c['endpoint']}], r[{c['scope_path']}], r[{c['tags']}] or '', r[{c['currency']}])",
        "        acc = sums.get(key)",
        "        if acc is None:",
        f"            acc = sums[key] = [0] * {len(SUMS)} + [{{}}]",
        *adds,
        f"        h = acc[{len(SUMS)}]; b = bisect_right(BOUNDS, r[{c['latency_ms']}])",
        "        h[b] = h.get(b, 0) + 1",
        "    return [(*k, *v) for k, v in sums.items()]",
    ]
    namespace: dict[str, Any] = {"bisect_right": bisect.bisect_right, "BOUNDS": LATENCY_BOUNDS}
    exec(compile("\n".join(lines), "<llmtally rollup>", "exec"), namespace)
    fn = namespace["rollup"]
    fn.__doc__ = _compile_rollup.__doc__
    return fn


rollup = _compile_rollup()


def _locked(exc: BaseException | None) -> bool:
    """Whether an error is another process holding the database (which passes), not a bad file."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _private_dirs(path: str) -> None:
    """Create the missing directories of ``path`` readable by their owner only (spend history is
    private); directories that exist are left as their owner made them."""
    missing = []
    path = path or "."
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)


def _group_sql(key: str) -> str:
    """A group's expression over ``calls``."""
    tag = check_group(key)
    if tag is not None:
        return f"COALESCE(json_extract(tags, '$.\"{tag}\"'), '')"
    return {
        "model": "COALESCE(model, requested_model, 'unknown')",
        "provider": "COALESCE(provider, 'unknown')",
        "endpoint": "endpoint",
        "day": "strftime('%Y-%m-%d', started_at, 'unixepoch')",
        "hour": "strftime('%Y-%m-%d %H:00', started_at, 'unixepoch')",
        "scope": "scope_path",
        "currency": "currency",
        "price_source": "COALESCE(price_source, '(no price)')",
    }[key]


def _hourly_sql(key: str) -> str:
    """A group's expression over ``calls_hourly`` (its keys are already COALESCEd as above)."""
    if key == "day":
        return "strftime('%Y-%m-%d', hour, 'unixepoch')"
    if key == "hour":
        return "strftime('%Y-%m-%d %H:00', hour, 'unixepoch')"
    if key.startswith("tag:"):
        return _group_sql(key).replace("json_extract(tags,", "json_extract(NULLIF(tags, ''),")
    if key in ("model", "provider", "endpoint", "currency"):
        return key
    return _group_sql(key)  # scope: scope_path; anything else raises


def _filter_calls(key: str) -> tuple[str, list[Any]]:
    """A group's expression over ``calls`` for a filter: a tag as text, as a report shows it (SQLite's
    json_extract gives numbers as numbers, which equal no text)."""
    expr = _group_sql(key)
    return (f"CAST({expr} AS TEXT)" if key.startswith("tag:") else expr), []


def _filter_hourly(key: str) -> tuple[str, list[Any]]:
    expr = _hourly_sql(key)
    return (f"CAST({expr} AS TEXT)" if key.startswith("tag:") else expr), []


class SQLiteLedger:
    """Appends call records to a SQLite file, and reads them back for reports."""

    placeholder = "?"
    #: Latency percentiles come from a histogram (``_read.LATENCY_PRECISION``).
    latency_exact = False
    # SQLite keeps mutexes of its own (its file and inode locks): a child forked while another
    # thread of the parent was inside SQLite inherits them held, and would wait for ever on its first
    # connection. A forked child's records go to the spool instead, which the parent moves in.
    fork_safe = False

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.url = f"sqlite:///{self.path}"
        self.readonly = not create
        self._local = threading.local()
        if self.readonly:
            if not os.path.exists(self.path):
                raise LedgerError(
                    f"no ledger at {self.path} (record calls with `llmtally run` or llmtally.configure)"
                )
            if os.path.isdir(self.path):
                raise LedgerError(f"the ledger path {self.path} is a directory")
            return
        self._identity: tuple[int, int] | None = None
        self._migrated = False
        self._open()

    def _open(self) -> None:
        """Check the file, create it (0600, in directories made 0700) and migrate it, unless another
        process holds it locked: then the first write does (the writer spools until it can)."""
        self._check_file()
        _private_dirs(os.path.dirname(self.path))
        if not os.path.exists(self.path):
            with contextlib.suppress(FileExistsError):  # another process was first: its file, its mode
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self.migrate()
        except LedgerError as exc:
            if not _locked(exc.__cause__):
                raise
            log.warning(
                "llmtally: the SQLite ledger %s is locked by another process; records are spooled "
                "until it can be written",
                self.path,
            )

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
                if self.readonly:
                    conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
                else:
                    conn = sqlite3.connect(
                        self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=True
                    )
                    try:
                        conn.execute("PRAGMA journal_mode=WAL")  # kept by the file once set
                    except sqlite3.OperationalError as exc:
                        if not _locked(exc):
                            raise
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open the SQLite ledger {self.path}: {exc}") from exc
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

    def migrate(self) -> None:
        """Create the ledger, or bring an older one to this llmtally's schema, in one transaction."""
        conn = self.connect()
        try:
            if self._version(conn) == SCHEMA_VERSION:  # current: no write lock needed to know it
                self._opened()
                return
        except sqlite3.DatabaseError:
            pass  # said below, with the lock
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
        self._opened()

    def _opened(self) -> None:
        self._migrated = True
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)

    def _check_still_there(self) -> None:
        """The file deleted or replaced under a running process: writing on would go to a file
        nobody can read. Start a new ledger at the path (said so), or fail (and spool)."""
        try:
            st = os.stat(self.path)
            if self._identity is None or (st.st_dev, st.st_ino) == self._identity:
                return
            what = "replaced"
        except FileNotFoundError:
            what = "deleted"
        log.warning(
            "llmtally: the SQLite ledger %s was %s while in use; records go to a new ledger there",
            self.path,
            what,
        )
        self.close()
        self._local = threading.local()  # every thread opens the new file
        self._identity, self._migrated = None, False
        if not os.path.exists(self.path):
            # The deleted ledger's write-ahead log must not be replayed into the new one.
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
        self._open()

    def write(
        self,
        rows: Sequence[tuple[Any, ...]],
        *,
        ignore_duplicates: bool = False,
        refusals: Sequence[tuple[Any, ...]] = (),
    ) -> None:
        """Append rows (and ``refusals``' rows) in one transaction (all or none).

        With ``ignore_duplicates``, rows whose id is already in the ledger are skipped rather than
        failing the whole batch (a replayed spool may hold rows that were written before).
        Refusals are always written so: nothing is summed from them.
        """
        self._check_still_there()
        if not self._migrated:
            self.migrate()
        conn = self.connect()
        if not getattr(self._local, "writing", False):
            # This thread writes batches: a lock held elsewhere for long means spool, not wait.
            conn.execute(f"PRAGMA busy_timeout={int(WRITE_TIMEOUT * 1000)}")
            self._local.writing = True
        conn.execute("BEGIN")
        try:
            if ignore_duplicates:
                # Row by row, to add to the hourly sums only the rows that were new. Not INSERT OR
                # IGNORE: that also drops, in silence, a row breaking NOT NULL; this skips only a
                # record already there, and a bad row fails the batch (set apart by the writer).
                insert = _INSERT + " ON CONFLICT (started_at, id) DO NOTHING"
                fresh = [row for row in rows if conn.execute(insert, row).rowcount]
            else:
                conn.executemany(_INSERT, rows)
                fresh = list(rows)
            rolled = rollup(fresh)
            keys: tuple[str, ...] = ROLLUP_KEYS
            _add_rollup(conn, rolled)
            for coarse in reversed(COARSER):  # each from the wider one's rows
                rolled, keys = coarser(rolled, keys, coarse.keys), coarse.keys
                _add_rollup(conn, rolled, coarse.table, keys)
            if refusals:
                conn.executemany(_INSERT_REFUSAL, refusals)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may already have ended it
                conn.execute("ROLLBACK")
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (shared budgets); its rows, if it returns any."""
        try:
            return list(self.connect().execute(sql, params).fetchall())
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot use the SQLite ledger {self.path}: {exc}") from exc

    def sums(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """The report's rows: each group's values, then SUMS, over calls in ``[start, end)`` that
        ``where`` keeps."""
        exprs = [_group_sql(g) for g in groups]
        conn = self.connect()
        try:
            calls = self._columns(conn, "calls")
            if not calls:
                raise LedgerError(f"{self.path} has no calls table: not an llmtally ledger")
            keys = [*groups, *(key for key, _ in where)]
            table, hourly = self._rollup_for(conn, keys)
            if (
                not hourly
                or ("currency" in keys and "currency" not in hourly)
                or any(g in CALLS_ONLY for g in keys)
            ):
                # No rollup, or one from before it had the currency (a ledger read without migrating).
                return self._calls(conn, exprs, calls, start, end, where)
            # Whole hours from the hourly sums; the partial hours at the window's edges from the calls.
            first = None if start is None else -(-start // 3600) * 3600
            last = None if end is None else end // 3600 * 3600
            if first is not None and last is not None and first >= last:
                return self._calls(conn, exprs, calls, start, end, where)
            sql, params = grouped(
                [_hourly_sql(g) for g in groups],
                sums_of_rollup(hourly, wide=True),
                table,
                "hour",
                first,
                last,
                filters=where_sql(where, _filter_hourly),
            )
            parts = list(conn.execute(sql, params).fetchall())
            if start is not None and first is not None and start < first:
                parts += self._calls(conn, exprs, calls, start, first, where)
            if end is not None and last is not None and last < end:
                parts += self._calls(conn, exprs, calls, last, end, where)
            return merge(parts, len(groups))
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc

    @staticmethod
    def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}

    def _rollup_for(self, conn: sqlite3.Connection, keys: Sequence[str]) -> tuple[str, set[str]]:
        """The narrowest hourly rollup that keeps every group and filter of ``keys``, and its columns
        (none: no rollup, read the calls). The coarser ones are missing from a ledger of schema 11
        or older read without migrating it: the wide one answers then."""
        for coarse in COARSER:
            if all(k in coarse.groups for k in keys):
                columns = self._columns(conn, coarse.table)
                if columns:
                    return coarse.table, columns
        return "calls_hourly", self._columns(conn, "calls_hourly")

    @staticmethod
    def _calls(
        conn: sqlite3.Connection,
        exprs: list[str],
        columns: set[str],
        start: float | None,
        end: float | None,
        where: Where = (),
    ) -> list[tuple[Any, ...]]:
        sql, params = grouped(
            exprs,
            sums_of_calls(columns, wide=True),
            "calls",
            "started_at",
            start,
            end,
            filters=where_sql(where, _filter_calls),
        )
        return list(conn.execute(sql, params).fetchall())

    def latency(
        self, groups: Sequence[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """Per group, the group's values then the p50 and p95 latency in ms (``None``: no call), over
        calls in ``[start, end)`` that ``where`` keeps: approximate, from the rollup's histogram
        (``LATENCY_PRECISION``) for whole hours and the same buckets counted over the calls at the
        window's edges."""
        n = len(groups)
        exprs = [_group_sql(g) for g in groups]
        keys = [*groups, *(key for key, _ in where)]
        conn = self.connect()
        try:
            table, hourly = self._rollup_for(conn, keys)
            parts: list[tuple[Any, ...]] = []
            if set(LATENCY_COLUMNS) <= hourly and not any(g in CALLS_ONLY for g in keys):
                first = None if start is None else -(-start // 3600) * 3600
                last = None if end is None else end // 3600 * 3600
                if first is None or last is None or first < last:
                    sums = ", ".join(f"SUM({name})" for name in LATENCY_COLUMNS)
                    sql, params = grouped(
                        [_hourly_sql(g) for g in groups],
                        sums,
                        table,
                        "hour",
                        first,
                        last,
                        filters=where_sql(where, _filter_hourly),
                    )
                    parts += conn.execute(sql, params).fetchall()
                    if start is not None and first is not None and start < first:
                        parts += self._buckets(conn, exprs, start, first, where)
                    if end is not None and last is not None and last < end:
                        parts += self._buckets(conn, exprs, last, end, where)
                else:
                    parts = self._buckets(conn, exprs, start, end, where)
            else:
                parts = self._buckets(conn, exprs, start, end, where)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc
        return [(*row[:n], *percentiles(row[n:], QUANTILES)) for row in merge(parts, n)]

    @staticmethod
    def _buckets(
        conn: sqlite3.Connection, exprs: list[str], start: float | None, end: float | None, where: Where = ()
    ) -> list[tuple[Any, ...]]:
        """The latency histogram of the calls in ``[start, end)`` per group, as the rollup keeps it."""
        sql, params = grouped(
            [*exprs, latency_bucket_sql()],
            "COUNT(*)",
            "calls",
            "started_at",
            start,
            end,
            filters=where_sql(where, _filter_calls),
        )
        n = len(exprs)
        width = len(LATENCY_COLUMNS)
        out = []
        for row in conn.execute(sql, params).fetchall():
            histogram = [0] * width
            histogram[row[n]] = row[n + 1]
            out.append((*row[:n], *histogram))
        return out

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
        conn = self.connect()
        try:
            columns = [r[1] for r in conn.execute("PRAGMA table_info(calls)")]
            sql, params = browse_sql(columns, start, end, where, _filter_calls, only, before, limit)
            return [dict(zip(columns, row, strict=True)) for row in conn.execute(sql, params)]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc

    def refusals(
        self, start: float | None, end: float | None, where: Where = (), *, limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """The refusals in ``[start, end)`` that ``where`` keeps, newest first (``Ledger.refusals``);
        none in a ledger older than its table."""
        conn = self.connect()
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "refusals" not in tables:
                return []
            sql, params = refusals_sql(REFUSAL_NAMES, start, end, where, _filter_calls, limit)
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc
        if limit is None:
            return [{"action": action, "count": int(n)} for action, n in rows]
        return [dict(zip(REFUSAL_NAMES, row, strict=True)) for row in rows]

    def record(self, call_id: str, started_at: float | None = None) -> dict[str, Any] | None:
        """One call's whole record by its id (found by its key when ``started_at`` is given)."""
        conn = self.connect()
        try:
            columns = [r[1] for r in conn.execute("PRAGMA table_info(calls)")]
            if started_at is not None:
                row = conn.execute(
                    "SELECT * FROM calls WHERE started_at = ? AND id = ?", (started_at, call_id)
                ).fetchone()
                if row is not None:
                    return dict(zip(columns, row, strict=True))
            row = conn.execute("SELECT * FROM calls WHERE id = ?", (call_id,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc
        return None if row is None else dict(zip(columns, row, strict=True))

    def tag_keys(self, start: float | None, end: float | None) -> list[str]:
        """The tag names of the calls in (the hours around) ``[start, end)``, most used first."""
        conn = self.connect()
        try:
            if "tags" in self._columns(conn, "calls_hourly"):
                sql = "SELECT tags, SUM(requests) FROM calls_hourly WHERE tags <> ''"
                params: list[Any] = []
                if start is not None:
                    sql += " AND hour >= ?"
                    params.append(start // 3600 * 3600)
                if end is not None:
                    sql += " AND hour < ?"
                    params.append(end)
                rows = conn.execute(sql + " GROUP BY tags", params).fetchall()
            else:
                sql, params = grouped(["tags"], "COUNT(*)", "calls", "started_at", start, end)
                rows = conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc
        return tag_names(rows)

    def changed(self) -> tuple[Any, ...]:
        """A value that changes whenever calls are written (the live view polls it): the rollup's
        count and the newest call's key, each one cheap."""
        conn = self.connect()
        try:
            newest = conn.execute(
                "SELECT started_at, id FROM calls ORDER BY started_at DESC, id DESC LIMIT 1"
            )
            table, _ = self._rollup_for(conn, ())
            total = conn.execute(f"SELECT TOTAL(requests) FROM {table}").fetchone()
            return (*(newest.fetchone() or ()), *(total or ()))
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a readable llmtally ledger: {exc}") from exc

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone (SQLite forbids using them
        across a fork; closing them here could disturb the parent's locks) and open new ones."""
        self._local = threading.local()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
