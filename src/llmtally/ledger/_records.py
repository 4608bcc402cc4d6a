"""The record of one call as every ledger backend stores it: its columns, its schema history, its row.

The token columns are derived from ``_core.usage.KINDS``, and so are the sums a report reads
(``SUMS``). The schema's history is kept here too: version 1's token columns are frozen in
``V1_KINDS``, and each later version adds the kinds listed for it in ``ADDED_KINDS`` (summed by the
rollup too) or the other columns in ``ADDED_COLUMNS`` (the calls only); each backend turns that into
its own ``CREATE`` / ``ALTER TABLE`` statements. Adding a billable unit to ``Usage`` is therefore one
entry in ``ADDED_KINDS`` here (an import-time check says so if it is missing).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._core.money import to_pico
from .._core.usage import TOKEN_NAMES

if TYPE_CHECKING:
    from .._core.refusal import Refusal
    from .._core.usage import Call

__all__ = [
    "ADDED_COLUMNS",
    "ADDED_KINDS",
    "ADDED_ROLLUP",
    "COLUMNS",
    "COST_HI",
    "LATENCY_BOUNDS",
    "LATENCY_COLUMNS",
    "REFUSALS",
    "REFUSAL_COLUMNS",
    "ROLLUP_BY_CURRENCY",
    "ROLLUP_COST_SPLIT",
    "ROLLUP_LATENCY",
    "ROLLUP_NARROW",
    "SCHEMA_VERSION",
    "SUMS",
    "LedgerError",
    "RefusalRow",
    "added_at",
    "check_row",
    "columns_at",
    "from_spool",
    "redact_url",
    "refusal_row",
    "refusals_table",
    "refused",
    "split_kinds",
    "to_row",
    "to_spool",
    "url_secrets",
]

#: The token columns of schema version 1, as they were: history, never edited.
V1_KINDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
#: Schema version -> the token kinds (``Usage`` fields) it added as columns.
ADDED_KINDS: dict[int, tuple[str, ...]] = {
    2: ("cache_write_1h_tokens",),
    4: (
        "input_audio_tokens",
        "cached_audio_tokens",
        "output_audio_tokens",
        "input_image_tokens",
        "web_searches",
    ),
    8: ("output_image_tokens", "citation_tokens"),
}
#: Schema version -> the other columns it added, (name, SQL type); not summed by the rollup.
ADDED_COLUMNS: dict[int, tuple[tuple[str, str], ...]] = {
    # What llmtally's prices make of a call whose provider reported its own cost (in ``cost``).
    3: (("computed_cost", "TEXT"),),
    # How the call was served where that changed its price: JSON, {"service_tier": "flex"}.
    5: (("price_context", "TEXT"),),
    # The cost in the price's own currency, when it is not the display currency (``cost``'s).
    6: (("native_cost", "TEXT"), ("native_currency", "TEXT")),
    # The `llmtally run` the call was made under (every process of its tree): its summary reads them.
    9: (("run_id", "TEXT"),),
}
#: The version whose hourly rollup (SQLite's) is keyed by currency as well: rebuilt from the calls,
#: so that a report never adds up costs in two currencies. No column of ``calls`` changed.
ROLLUP_BY_CURRENCY = 7
#: The latency histogram of SQLite's hourly rollup: a call of ``latency_ms`` counts in bucket
#: ``bisect_right(LATENCY_BOUNDS, latency_ms)``: 0 under 1 ms, then a quarter of an octave each
#: (2**((i-1)/4) to 2**(i/4) ms), the last 2**20 ms (17.5 min) and over.
LATENCY_BOUNDS: tuple[float, ...] = tuple(2 ** (k / 4) for k in range(81))
LATENCY_COLUMNS: tuple[str, ...] = tuple(f"latency_{i}" for i in range(len(LATENCY_BOUNDS) + 1))
#: Schema version -> the columns it added to SQLite's hourly rollup only (``calls`` unchanged):
#: INTEGER NOT NULL DEFAULT 0, counts kept by ``write()`` and filled from the calls when migrated.
ADDED_ROLLUP: dict[int, tuple[str, ...]] = {10: LATENCY_COLUMNS, 11: ("cost_pico_hi",)}
#: The version that added the rollup's latency histogram.
ROLLUP_LATENCY = 10
#: The version from which an hour's cost in SQLite's rollup is ``cost_pico`` (below ``COST_HI``)
#: plus ``cost_pico_hi`` times ``COST_HI``: one 64-bit column held $9.2M at most, and an hour of one
#: group past that became a float (then "integer overflow" in reports and checks).
ROLLUP_COST_SPLIT = 11
COST_HI = 10**18
#: The version that added SQLite's coarser hourly rollups (``sqlite.COARSER``): the same sums keyed
#: without the tags (whose values can be nearly unique per call, a user tag), and without the tags
#: and the scope, filled from the wide one and kept by ``write()`` beside it. ``calls`` unchanged.
ROLLUP_NARROW = 12
#: The version that added the ``refusals`` table (``REFUSAL_COLUMNS``): requests a limit stopped, or
#: let through past it in warn mode. ``calls`` unchanged.
REFUSALS = 13
#: Bumped with every change to the columns; each backend migrates older ledgers forward.
SCHEMA_VERSION = max(
    (*ADDED_KINDS, *ADDED_COLUMNS, *ADDED_ROLLUP, ROLLUP_BY_CURRENCY, ROLLUP_NARROW, REFUSALS)
)

_missing = set(TOKEN_NAMES) - set(V1_KINDS) - {k for kinds in ADDED_KINDS.values() for k in kinds}
if _missing:  # pragma: no cover - a developer added a kind without its migration
    raise RuntimeError(f"llmtally: token kinds {sorted(_missing)} have no ledger migration in ADDED_KINDS")

#: The token columns added after version 1, in the order the migrations added them (last in a row,
#: as ``ALTER TABLE ... ADD COLUMN`` puts them: a row read with ``SELECT *`` is in COLUMNS order).
LATER_KINDS: tuple[str, ...] = tuple(k for v in sorted(ADDED_KINDS) for k in ADDED_KINDS[v])
LATER_OTHERS: tuple[tuple[str, str], ...] = tuple(c for v in sorted(ADDED_COLUMNS) for c in ADDED_COLUMNS[v])


def _later_columns() -> tuple[tuple[str, str], ...]:
    """Every column added after version 1, in the order the migrations add them."""
    columns: list[tuple[str, str]] = []
    for version in sorted({*ADDED_KINDS, *ADDED_COLUMNS}):
        columns += [(kind, "INTEGER") for kind in ADDED_KINDS.get(version, ())]
        columns += ADDED_COLUMNS.get(version, ())
    return tuple(columns)


#: Every column added after version 1, in row order (``to_row`` follows it), and where it comes from:
#: a token kind of the call's usage, or the call itself.
LATER_COLUMNS: tuple[tuple[str, str], ...] = _later_columns()
_LATER_FROM_USAGE: tuple[tuple[str, bool], ...] = tuple((n, n in LATER_KINDS) for n, _ in LATER_COLUMNS)


#: (name, SQL type), in row order. ``cost`` is the exact Decimal as text; ``cost_pico`` the same in
#: integer picodollars (10**-12 USD, exact for catalogue prices) for fast sums.
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
    *((name, "INTEGER") for name in V1_KINDS),
    ("cost", "TEXT"),
    ("cost_pico", "BIGINT"),
    ("currency", "TEXT NOT NULL"),
    ("estimated", "INTEGER NOT NULL"),
    ("price_source", "TEXT"),
    ("scope_path", "TEXT NOT NULL"),  # JSON array of scope names, outermost first
    ("tags", "TEXT"),
    ("host", "TEXT NOT NULL"),
    ("pid", "INTEGER NOT NULL"),
    *LATER_COLUMNS,
)
NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)

#: The ``refusals`` table (schema ``REFUSALS``), in row order. ``allowed``, ``spent`` and ``worst``
#: are exact text (money as a Decimal's text in ``currency``; counts as digits).
REFUSAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT PRIMARY KEY"),
    ("at", "DOUBLE PRECISION NOT NULL"),
    ("action", "TEXT NOT NULL"),  # refused (raise mode) or warned (warn mode: the request was sent)
    ("refused_by", "TEXT"),  # the scope or shared budget whose limit it was
    ("by_kind", "TEXT NOT NULL"),  # scope or budget
    ("limit_kind", "TEXT NOT NULL"),  # cost, tokens, requests or unchecked
    ("allowed", "TEXT NOT NULL"),
    ("spent", "TEXT NOT NULL"),
    ("worst", "TEXT"),
    ("currency", "TEXT"),
    ("provider", "TEXT"),
    ("endpoint", "TEXT"),
    ("requested_model", "TEXT"),
    ("scope_path", "TEXT NOT NULL"),  # as in calls: a JSON array of scope names, outermost first
    ("tags", "TEXT"),
    ("host", "TEXT NOT NULL"),
    ("pid", "INTEGER NOT NULL"),
    ("run_id", "TEXT"),
)
REFUSAL_NAMES: tuple[str, ...] = tuple(name for name, _ in REFUSAL_COLUMNS)
#: How a refusal's line in the spool says what it is (a call's line has no ``kind``: older spools).
SPOOL_KIND = "refusal"


class RefusalRow(tuple):  # type: ignore[type-arg]
    """A refusal's row (``REFUSAL_COLUMNS`` order): a tuple of its own type, so that one queue, one
    spool and one batch carry calls and refusals, and ``Ledger.write`` tells them apart."""

    __slots__ = ()


#: What a report sums per group, in this order: the request counts, every token kind, the cost.
SUMS: tuple[str, ...] = (
    "requests",
    "failed_requests",
    *TOKEN_NAMES,
    "cost_pico",
    "unpriced_requests",
    "estimated_requests",
)


def sums_at(version: int) -> tuple[str, ...]:
    """The SUMS of schema ``version``: those of the kinds it had."""
    later = {k for v, kinds in ADDED_KINDS.items() if v > version for k in kinds}
    return tuple(s for s in SUMS if s not in later)


def columns_at(version: int) -> tuple[tuple[str, str], ...]:
    """The columns of schema ``version`` (1 and later), for a migration that creates the table."""
    later = {k for v, kinds in ADDED_KINDS.items() if v > version for k in kinds}
    later |= {name for v, columns in ADDED_COLUMNS.items() if v > version for name, _ in columns}
    return tuple(c for c in COLUMNS if c[0] not in later)


def refusals_table(id_type: str = "TEXT PRIMARY KEY") -> list[str]:
    """The statements that create the ``refusals`` table and its index (the same in both dialects)."""
    columns = ", ".join(f"{name} {id_type if name == 'id' else kind}" for name, kind in REFUSAL_COLUMNS)
    # IF NOT EXISTS: a ledger put back to an older schema by hand (or by a test) may still hold it.
    return [
        f"CREATE TABLE IF NOT EXISTS refusals ({columns})",
        "CREATE INDEX IF NOT EXISTS refusals_at ON refusals (at)",
    ]


def added_at(version: int) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """(token kind columns, other columns) that schema ``version`` added to ``calls``."""
    return (
        tuple((kind, "INTEGER") for kind in ADDED_KINDS.get(version, ())),
        ADDED_COLUMNS.get(version, ()),
    )


_HOST = socket.gethostname()


class LedgerError(Exception):
    """The ledger cannot be used as configured: a bad URL, a file that is not an llmtally ledger, ...

    ``refused`` is true when the database refused the rows for what they hold (a value out of
    range, a constraint), not for being unreachable: retrying them cannot help, isolating them can.
    ``transient`` is true when the database could not be reached (a server down or restarting): the
    records wait in the spool until it is back.
    """

    def __init__(self, *args: object, refused: bool = False, transient: bool = False) -> None:
        super().__init__(*args)
        self.refused = refused
        self.transient = transient


def refused(exc: BaseException) -> bool:
    """Whether a failed write was refused for what its rows hold (see ``LedgerError.refused``)."""
    if isinstance(exc, LedgerError):
        return exc.refused
    if isinstance(exc, (OverflowError, TypeError, ValueError)):
        return True  # a value the driver cannot even send
    if type(exc).__module__ == "sqlite3":
        name = type(exc).__name__
        return name in ("IntegrityError", "DataError", "InterfaceError") or (
            name == "ProgrammingError" and "binding" in str(exc)
        )
    return False


_INT64 = 2**63
#: Text columns that reports read as JSON (a hand-edited spool could hold anything).
_JSON_COLUMNS = ("scope_path", "tags", "price_context")


def _column_check(name: str, kind: str) -> Any:
    """A check of one column's value: the reason it cannot be stored, or None."""
    required = "NOT NULL" in kind or "PRIMARY KEY" in kind
    counts = name in TOKEN_NAMES

    def check(value: Any) -> str | None:
        if value is None:
            return f"{name} is missing" if required else None
        if kind.startswith("TEXT"):
            if type(value) is not str:
                return f"{name} is not text: {value!r:.80}"
            if "\x00" in value:
                return f"{name} holds a NUL character"
            if name in _JSON_COLUMNS:
                try:
                    json.loads(value)
                except (ValueError, RecursionError):
                    return f"{name} is not JSON: {value!r:.80}"
            return None
        if kind.startswith("DOUBLE"):
            if type(value) not in (int, float) or not math.isfinite(value):
                return f"{name} is not a finite number: {value!r:.80}"
            return None
        if type(value) is not int or not -_INT64 <= value < _INT64 or (counts and value < 0):
            return f"{name} is not {'a count' if counts else 'an integer'} the ledger can hold: {value!r:.80}"
        return None

    return check


_CHECKS = tuple(_column_check(name, kind) for name, kind in COLUMNS)
_REFUSAL_CHECKS = tuple(_column_check(name, kind) for name, kind in REFUSAL_COLUMNS)


def check_row(row: Any) -> str | None:
    """Why a record cannot be stored (a wrong type, a value out of range), or None if it can."""
    checks = _REFUSAL_CHECKS if type(row) is RefusalRow else _CHECKS
    if type(row) not in (tuple, RefusalRow) or len(row) != len(checks):
        return f"not a record of {len(checks)} columns"
    for check, value in zip(checks, row, strict=True):
        reason = check(value)
        if reason is not None:
            return str(reason)
    return None


# The password of a URL's user info: from the first ":" after the user name to the last "@" of the
# URL. Hiding too much (an "@" later in a query) is safe; libpq accepts unencoded "#", "/" and "?"
# in a password, so the usual URL grammar would hide too little.
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:@/]*):(.*)@", re.DOTALL)
# libpq's connection parameters: what may follow a password in a URL's query.
_LIBPQ_KEYS = (
    "host|hostaddr|port|dbname|user|password|passfile|require_auth|channel_binding|connect_timeout|"
    "client_encoding|options|application_name|fallback_application_name|keepalives|keepalives_idle|"
    "keepalives_interval|keepalives_count|tcp_user_timeout|replication|gssencmode|sslmode|sslnegotiation|"
    "requiressl|sslcompression|sslcert|sslkey|sslpassword|sslcertmode|sslrootcert|sslcrl|sslcrldir|"
    "sslsni|requirepeer|ssl_min_protocol_version|ssl_max_protocol_version|krbsrvname|gsslib|gssdelegation|"
    "service|target_session_attrs|load_balance_hosts"
)
# password=... (or sslpassword=...) among a URL's query parameters, up to the next parameter libpq
# knows: an unencoded "&" inside the password ("?password=a&b") must not leave its tail in clear.
_QUERY_PASSWORD = re.compile(rf"([?&](?:ssl)?password=)(?:[^&]|&(?!(?:{_LIBPQ_KEYS})=))*", re.IGNORECASE)
# password=... in a libpq key/value string (host=db password='it''s secret' dbname=x): a quoted
# value with backslash escapes, or a bare one up to the next space.
_CONNINFO_PASSWORD = re.compile(r"((?:^|\s)(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL (or libpq key/value string) with any password replaced by ``***``: what messages,
    logs and spool names may show.

    ``redact_url("postgresql://app:s3cret@db/prod")`` is ``"postgresql://app:***@db/prod"``.
    """
    if "://" not in url.split("=", 1)[0]:  # key/value form: host=db password=...
        return _CONNINFO_PASSWORD.sub(r"\1***", url)
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url, count=1))


def url_secrets(url: str) -> list[str]:
    """The passwords a URL or key/value string holds, as written and decoded, to scrub from driver
    messages."""
    from urllib.parse import unquote

    found: list[str] = []
    if "://" not in url.split("=", 1)[0]:
        for m in _CONNINFO_PASSWORD.finditer(url):
            value = m.group(2)
            found.append(value)
            if value.startswith("'"):
                found.append(re.sub(r"\\(.)", r"\1", value.strip("'")))
    else:
        userinfo = _USERINFO_PASSWORD.match(url)
        if userinfo:
            found.append(userinfo.group(2))
        found += [url[q.end(1) : q.end()] for q in _QUERY_PASSWORD.finditer(url)]
    found += [unquote(s) for s in found]
    # libpq cuts an unencoded password at its "#", "/", "?" or "@" and quotes the rest in its
    # message: scrub the pieces too.
    found += [
        piece
        for s in list(found)
        for cut in (r"[#/?]", r"[#/?@:&=\s'\"]")
        for piece in re.split(cut, s)
        if len(piece) >= 3
    ]
    # Longest first, so that a secret containing another is scrubbed whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


class _Ids:
    """Record ids: 64 random bits per process and a counter. Unique across processes and hosts
    (a fork draws new bits) and ~15x cheaper than uuid4, which matters at 100k records/s."""

    def __init__(self) -> None:
        self.reset()
        if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork to survive
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
    tokens = _NO_V1 if u is None else tuple([getattr(u, name) for name in V1_KINDS])
    later = [
        (None if u is None else getattr(u, name)) if of_usage else _other(call, name)
        for name, of_usage in _LATER_FROM_USAGE
    ]
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
        None if cost is None else to_pico(cost),
        call.currency,
        int(call.estimated),
        call.price_source,
        _scope_text(call.scope_path),
        json.dumps(dict(call.tags), sort_keys=True, default=str) if call.tags else None,
        _HOST,
        os.getpid(),
        *later,
    )


def _other(call: Call, name: str) -> Any:
    """A later column that is not a token kind (``ADDED_COLUMNS``)."""
    if name == "computed_cost":
        return None if call.computed_cost is None else str(call.computed_cost)
    if name == "price_context":
        return None if not call.context else json.dumps(dict(call.context), sort_keys=True)
    if name == "native_cost":
        return None if call.native_cost is None else str(call.native_cost)
    if name == "native_currency":
        return call.native_currency
    if name == "run_id":
        return call.run_id
    raise KeyError(name)  # pragma: no cover - a column added without its value here


_NO_V1 = (None,) * len(V1_KINDS)


def refusal_row(rec: Refusal) -> RefusalRow:
    """A Refusal as its row. No text of prompts exists to be stored."""
    return RefusalRow(
        (
            _ids.next(),
            rec.at,
            rec.action,
            rec.refused_by,
            rec.by_kind,
            rec.limit,
            rec.allowed,
            rec.spent,
            rec.worst,
            rec.currency,
            rec.provider,
            rec.endpoint,
            rec.requested_model,
            _scope_text(rec.scope_path),
            json.dumps(dict(rec.tags), sort_keys=True, default=str) if rec.tags else None,
            _HOST,
            os.getpid(),
            rec.run_id,
        )
    )


def to_spool(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as a spool line's object: a call's columns, or a refusal's with ``kind``."""
    if type(row) is RefusalRow:
        return {"kind": SPOOL_KIND, **dict(zip(REFUSAL_NAMES, row, strict=False))}
    return dict(zip(NAMES, row, strict=False))


def from_spool(record: dict[str, Any]) -> tuple[Any, ...]:
    """A spool line's object as its row (``to_spool`` undone); a line without ``kind`` is a call's."""
    if record.get("kind") == SPOOL_KIND:
        return RefusalRow(record.get(name) for name in REFUSAL_NAMES)
    return tuple(record.get(name) for name in NAMES)


def split_kinds(rows: Sequence[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[RefusalRow]]:
    """(calls' rows, refusals' rows) of a mixed batch (a replayed spool, a split batch)."""
    calls: list[tuple[Any, ...]] = []
    refusals: list[RefusalRow] = []
    for row in rows:
        (refusals if type(row) is RefusalRow else calls).append(row)  # type: ignore[arg-type]
    return calls, refusals
