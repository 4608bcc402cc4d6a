"""Shared budgets, stored in the ledger database and enforced across processes and hosts.

A budget has a name, a maximum cost and an optional period (``day`` or ``month``, UTC). Before a
request is sent, its worst case (input counted offline plus its output allowance) is *reserved*
with one atomic statement that succeeds only if spent + reserved + this reservation stays within
the maximum; when the call settles, the reservation is released and the real cost added. Every
process on the same database sees the same numbers, so together they cannot overshoot beyond what
they reserved, and a reservation is never smaller than the call's real cost when the request states
its ``max_tokens``.

**Reservations are leases.** Each one is a row of ``llmtally_reservations`` (which budget, how
much, the host and pid that hold it, when it expires), made in the same statement that adds it to
the budget's ``reserved_pico``. A process renews its leases while it holds any (a background
thread, every quarter of the lease time), so a call may take as long as it likes; a process that
dies stops renewing. When a reservation does not fit, the leases of processes that are gone are
*reclaimed* and the reservation tried once more: leases past their expiry, and at once those of
this host whose process no longer exists. Reclaiming deletes the lease and takes its amount out of
``reserved_pico`` in one statement, so a lease is released exactly once, however many processes
reclaim (or settle, or reset) at the same moment. ``reset`` clears a budget's spend and all of its
reservations. A call that outlives its lease (its process stopped for longer than the lease time)
is still charged when it settles; only its reservation was released early.

Every change of a lease and of the budget's ``reserved_pico`` is one statement: on PostgreSQL a
statement with data-modifying ``WITH`` clauses; on SQLite, which has none, triggers on the lease
table add and take out the leases' amounts.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._core.money import from_pico, parse_amount, to_pico
from ._records import LedgerError

if TYPE_CHECKING:
    from . import Ledger

__all__ = ["LEASE_SECONDS", "PERIODS", "BudgetState", "BudgetStore", "read_budgets", "window_start"]

log = logging.getLogger("llmtally")

PERIODS = (None, "day", "month")

#: How long a reservation lasts unless its process renews it (it does while alive).
LEASE_SECONDS = 600.0

_CREATE = (
    "CREATE TABLE IF NOT EXISTS llmtally_budgets (name TEXT PRIMARY KEY, max_pico BIGINT NOT NULL, "
    "period TEXT, window_start DOUBLE PRECISION NOT NULL, spent_pico BIGINT NOT NULL, "
    "reserved_pico BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)
# owner: a random token per process, so a lease is renewed only by the process that made it, not by
# a later one that was given the same pid.
_CREATE_LEASES = (
    "CREATE TABLE IF NOT EXISTS llmtally_reservations (id TEXT PRIMARY KEY, budget TEXT NOT NULL, "
    "amount_pico BIGINT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL, owner TEXT NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL)"
)
_INDEX_LEASES = "CREATE INDEX IF NOT EXISTS llmtally_reservations_budget ON llmtally_reservations (budget)"
# pid 0: a lease that stands for what a database held before leases existed, already counted.
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS llmtally_reservation_made AFTER INSERT ON llmtally_reservations "
    "WHEN NEW.pid <> 0 BEGIN UPDATE llmtally_budgets SET reserved_pico = reserved_pico + NEW.amount_pico "
    "WHERE name = NEW.budget; END",
    "CREATE TRIGGER IF NOT EXISTS llmtally_reservation_gone AFTER DELETE ON llmtally_reservations "
    "BEGIN UPDATE llmtally_budgets SET reserved_pico = reserved_pico - OLD.amount_pico "
    "WHERE name = OLD.budget; END",
)
_LEASED = "SELECT COALESCE(SUM(r.amount_pico), 0) FROM llmtally_reservations r WHERE r.budget = {b}"
_LEASED_HERE = _LEASED.format(b="llmtally_budgets.name")  # the leases of the budget row at hand
# A database from before leases may hold reservations nobody will release (their process died):
# one lease per budget stands for them, and expires like any other.
_ADOPT = (
    "INSERT INTO llmtally_reservations (id, budget, amount_pico, host, pid, owner, expires_at) "
    "SELECT 'legacy:' || name, name, reserved_pico - (" + _LEASED_HERE + "), '', 0, '', {p} "
    "FROM llmtally_budgets WHERE reserved_pico > (" + _LEASED_HERE + ") "
    "ON CONFLICT (id) DO NOTHING"
)
_EFFECTIVE_SPENT = "(CASE WHEN window_start < {p} THEN 0 ELSE spent_pico END)"
_LEASE_COLUMNS = "(id, budget, amount_pico, host, pid, owner, expires_at)"
# Roll the window over if it has passed, then reserve only if the budget still has room, and record
# the lease; one statement, so concurrent reservations serialise on the budget's row.
_RESERVE_PG = (
    "WITH b AS (UPDATE llmtally_budgets SET "
    "spent_pico = CASE WHEN window_start < {p} THEN 0 ELSE spent_pico END, "
    "window_start = CASE WHEN window_start < {p} THEN {p} ELSE window_start END, "
    "reserved_pico = reserved_pico + {p}, updated_at = {p} "
    "WHERE name = {p} AND " + _EFFECTIVE_SPENT + " + reserved_pico + {p} <= max_pico RETURNING name) "
    "INSERT INTO llmtally_reservations " + _LEASE_COLUMNS + " SELECT {p}, name, {p}, {p}, {p}, {p}, {p} "
    "FROM b RETURNING id"
)
# SQLite runs one writing statement at a time, so the check and the insert (whose trigger adds the
# amount) cannot interleave with another reservation. The window rolls over when a call settles.
_RESERVE_SQLITE = (
    "INSERT INTO llmtally_reservations " + _LEASE_COLUMNS + " SELECT {p}, name, {p}, {p}, {p}, {p}, {p} "
    "FROM llmtally_budgets WHERE name = {p} AND " + _EFFECTIVE_SPENT + " + reserved_pico + {p} <= max_pico "
    "RETURNING id"
)
_CHARGE = (
    "spent_pico = " + _EFFECTIVE_SPENT + " + {p}, "
    "window_start = CASE WHEN window_start < {p} THEN {p} ELSE window_start END, updated_at = {p}"
)
_SETTLE_PG = (
    "WITH gone AS (DELETE FROM llmtally_reservations WHERE id = {p} RETURNING amount_pico) "
    "UPDATE llmtally_budgets SET " + _CHARGE + ", "
    "reserved_pico = reserved_pico - COALESCE((SELECT SUM(amount_pico) FROM gone), 0) WHERE name = {p}"
)
_SETTLE = "UPDATE llmtally_budgets SET " + _CHARGE + " WHERE name = {p}"
# Only what this statement deleted is subtracted: a lease another process deleted first is not in
# ``gone`` (PostgreSQL skips a row deleted while it waited for it).
_RECLAIM_PG = (
    "WITH gone AS (DELETE FROM llmtally_reservations WHERE {where} RETURNING budget, amount_pico), "
    "freed AS (SELECT budget, SUM(amount_pico) AS pico FROM gone GROUP BY budget) "
    "UPDATE llmtally_budgets SET reserved_pico = llmtally_budgets.reserved_pico - freed.pico FROM freed "
    "WHERE llmtally_budgets.name = freed.budget RETURNING freed.pico"
)
_RECLAIM_SQLITE = "DELETE FROM llmtally_reservations WHERE {where} RETURNING amount_pico"
# Also drops what ``reserved_pico`` held beyond its leases (reservations made before leases
# existed): measured in the statement's snapshot, while the leases' own amounts are subtracted as
# deleted, so a reservation made concurrently is kept.
_RESET_PG = (
    "WITH gone AS (DELETE FROM llmtally_reservations WHERE budget = {p} RETURNING amount_pico) "
    "UPDATE llmtally_budgets SET spent_pico = 0, updated_at = {p}, "
    "reserved_pico = reserved_pico - COALESCE((SELECT SUM(amount_pico) FROM gone), 0) - GREATEST(0, "
    "(SELECT b.reserved_pico - (" + _LEASED.format(b="b.name") + ") "
    "FROM llmtally_budgets b WHERE b.name = {p})) "
    "WHERE name = {p}"
)
_RESET_SQLITE = (
    "UPDATE llmtally_budgets SET spent_pico = 0, updated_at = {p}, "
    "reserved_pico = MIN(reserved_pico, (" + _LEASED_HERE + ")) WHERE name = {p}"
)
_SELECT = (
    "SELECT name, max_pico, period, spent_pico, (" + _LEASED_HERE + " AND r.expires_at >= {p}), "
    "window_start FROM llmtally_budgets"
)


def window_start(period: str | None, now: float | None = None) -> float:
    """The start of the current budget window: UTC midnight, the 1st of the month, or 0 (never)."""
    if period is None:
        return 0.0
    dt = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    if period == "day":
        return dt.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    if period == "month":
        return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
    raise ValueError(f"a budget period is 'day', 'month' or None, not {period!r}")


def _host_id() -> str:
    """This host's name, plus its boot id and pid namespace where the system shows them: a lease's
    pid is checked for liveness only by a process that sees the same pids (not by a container with
    the same hostname, nor after a reboot)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            parts.append(f.read().strip()[:8])
    except OSError:
        pass
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return " ".join(parts)


#: Who holds a lease: a pid is only meaningful on this host.
HOST = _host_id()


class _Identity:
    """This process's pid and lease token; a forked child gets its own."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.pid = os.getpid()
        self.owner = secrets.token_hex(8)

    def get(self) -> tuple[int, str]:
        if self.pid != os.getpid():  # a fork the at-fork hook did not see
            self.reset()
        return self.pid, self.owner


_ME = _Identity()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ME.reset)


def _alive(pid: int) -> bool:
    if pid <= 0 or sys.platform == "win32":
        return True  # os.kill(pid, 0) would signal a group, or end the process on Windows: expiry only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # not ours to signal, but there
    return True


@dataclass(frozen=True)
class BudgetState:
    name: str
    max_cost: Decimal
    period: str | None
    spent: Decimal
    #: What the budget's live leases hold (calls in flight).
    reserved: Decimal
    window_start: float


def _state(r: tuple[Any, ...]) -> BudgetState:
    """A budget as a row of ``_SELECT`` holds it (a window that has passed has spent nothing)."""
    spent = 0 if r[5] < window_start(r[2]) else r[3]
    return BudgetState(r[0], from_pico(r[1]), r[2], from_pico(spent), from_pico(int(r[4] or 0)), r[5])


def read_budgets(ledger: Ledger) -> list[BudgetState]:
    """Every budget of a ledger database, as ``BudgetStore.list`` shows them but read only: nothing
    created, nothing reclaimed (a ledger opened to read, by the dashboard). None if it has none."""
    if ledger.placeholder == "?":
        find = (
            "SELECT (SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'llmtally_budgets'), "
            "(SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'llmtally_reservations')"
        )
    else:
        find = "SELECT to_regclass('llmtally_budgets')::text, to_regclass('llmtally_reservations')::text"
    found = ledger.execute(find, ())
    budgets, leases = (bool(v) for v in found[0]) if found else (False, False)
    if not budgets:
        return []
    # Without the leases table (a database from before leases), nothing is known to be in flight.
    select = (
        _SELECT if leases else _SELECT.replace("(" + _LEASED_HERE + " AND r.expires_at >= {p})", "{p} * 0")
    )
    rows = ledger.execute((select + " ORDER BY name").replace("{p}", ledger.placeholder), (time.time(),))
    return [_state(r) for r in rows]


class BudgetStore:
    """Budgets in one ledger database (any ``Ledger``: SQLite or PostgreSQL)."""

    #: A lease not renewed for this long is released; renewed every quarter of it while held.
    lease_seconds = LEASE_SECONDS

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._postgres = ledger.placeholder != "?"
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._held = 0  # this process's leases not yet settled
        self._renewing = False
        self._run(_CREATE, ())
        self._create_leases()
        # Leases are otherwise reclaimed only when a budget runs short: without this, those of
        # processes that died under a budget that never fills would pile up.
        self.reclaim()

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.ledger.execute(sql.replace("{p}", self.ledger.placeholder), params)

    def _create_leases(self) -> None:
        find = (
            "SELECT to_regclass('llmtally_reservations')::text"
            if self._postgres
            else "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'llmtally_reservations'"
        )
        existed = False
        for attempt in range(2):
            try:
                rows = self._run(find, ())
                existed = bool(rows) and rows[0][0] is not None
                for sql in (_CREATE_LEASES, _INDEX_LEASES, *(() if self._postgres else _SQLITE_TRIGGERS)):
                    self._run(sql, ())
                break
            except LedgerError:
                # PostgreSQL's IF NOT EXISTS can fail when another process creates the same table at
                # that moment; the second time it is there.
                if attempt:
                    raise
        if not existed:
            self._run(_ADOPT, (time.time() + self.lease_seconds,))

    def set(self, name: str, max_cost: Any, period: str | None = None) -> None:
        if period not in PERIODS:
            raise ValueError(f"a budget period is 'day', 'month' or None, not {period!r}")
        now = time.time()
        ws = window_start(period, now)
        self._run(
            "INSERT INTO llmtally_budgets VALUES ({p}, {p}, {p}, {p}, 0, 0, {p}) "
            "ON CONFLICT (name) DO UPDATE SET max_pico = excluded.max_pico, period = excluded.period, "
            "updated_at = excluded.updated_at",
            (name, to_pico(parse_amount(max_cost, "max_cost")), period, ws, now),
        )

    def reset(self, name: str) -> None:
        """Forget the budget's spend and every reservation on it (their calls are still charged)."""
        now = time.time()
        if self._postgres:
            self._run(_RESET_PG, (name, now, name, name))
        else:
            self._run("DELETE FROM llmtally_reservations WHERE budget = {p}", (name,))
            self._run(_RESET_SQLITE, (now, name))

    def get(self, name: str) -> BudgetState | None:
        rows = self._run(_SELECT + " WHERE name = {p}", (time.time(), name))
        return _state(rows[0]) if rows else None

    def list(self) -> list[BudgetState]:
        self.reclaim()
        return [_state(r) for r in self._run(_SELECT + " ORDER BY name", (time.time(),))]

    def reserve(self, name: str, amount: Decimal, period: str | None) -> str | None:
        """Reserve ``amount``: the lease's id, or None (nothing reserved) if it does not fit."""
        pico = to_pico(amount)
        lease = self._reserve(name, pico, period)
        if lease is None:
            # Once more even if this reclaimed nothing: another process may have just reclaimed what
            # stood in the way.
            self.reclaim(name)
            lease = self._reserve(name, pico, period)
        if lease is not None:
            self._hold()
        return lease

    def _reserve(self, name: str, pico: int, period: str | None) -> str | None:
        now = time.time()
        ws = window_start(period, now)
        pid, owner = _ME.get()
        lease = secrets.token_hex(12)
        held = (lease, pico, HOST, pid, owner, now + self.lease_seconds)
        if self._postgres:
            rows = self._run(_RESERVE_PG, (ws, ws, ws, pico, now, name, ws, pico, *held))
        else:
            rows = self._run(_RESERVE_SQLITE, (*held, name, ws, pico))
        return lease if rows else None

    def settle(self, name: str, actual: Decimal, *, lease: str | None, period: str | None) -> None:
        """Charge a call's real cost, and release its lease (if it still has one: a lease that was
        reclaimed or reset is released already)."""
        now = time.time()
        ws = window_start(period, now)
        charge = (ws, to_pico(actual), ws, ws, now)
        try:
            if lease is None:
                self._run(_SETTLE, (*charge, name))
            elif self._postgres:
                self._run(_SETTLE_PG, (lease, *charge, name))
            else:
                # Charged first: a process that dies in between holds the lease till it expires,
                # counting the call twice for a while rather than not at all.
                self._run(_SETTLE, (*charge, name))
                self._run("DELETE FROM llmtally_reservations WHERE id = {p}", (lease,))
        finally:
            if lease is not None:
                with self._mine():
                    self._held = max(0, self._held - 1)

    def reclaim(self, name: str | None = None) -> bool:
        """Release the leases whose process is gone (all budgets' if no name); whether any was."""
        pid, owner = _ME.get()
        on = "budget = {p} AND " if name is not None else ""
        first: tuple[Any, ...] = (name,) if name is not None else ()
        others = self._run(
            "SELECT DISTINCT pid FROM llmtally_reservations WHERE " + on + "host = {p} AND pid <> {p}",
            (*first, HOST, pid),
        )
        dead = [int(r[0]) for r in others if not _alive(int(r[0]))]
        # A lease with this process's pid but not its token: an earlier process that had the pid.
        where = on + "(expires_at < {p} OR (host = {p} AND pid = {p} AND owner <> {p})"
        params: tuple[Any, ...] = (*first, time.time(), HOST, pid, owner)
        if dead:
            where += " OR (host = {p} AND pid IN (" + ", ".join(["{p}"] * len(dead)) + "))"
            params += (HOST, *dead)
        sql = (_RECLAIM_PG if self._postgres else _RECLAIM_SQLITE).replace("{where}", where + ")")
        return bool(self._run(sql, params))

    # -- renewal -------------------------------------------------------------------------------
    def _mine(self) -> threading.Lock:
        if self._pid != os.getpid():
            # A forked child holds none of the parent's leases, and the parent's lock may have been
            # taken by a thread that does not exist here.
            self._pid, self._lock, self._held, self._renewing = os.getpid(), threading.Lock(), 0, False
        return self._lock

    def _hold(self) -> None:
        with self._mine():
            self._held += 1
            if self._renewing:
                return
            self._renewing = True
        try:
            threading.Thread(target=self._renew, name="llmtally-budget-leases", daemon=True).start()
        except RuntimeError:  # no thread now (interpreter exiting): the lease is made, it just expires
            with self._mine():
                self._renewing = False
            log.warning("llmtally: cannot renew budget reservations; they last %.0f s", self.lease_seconds)

    def _renew(self) -> None:
        """While this process holds leases, push their expiry forward."""
        pid = os.getpid()
        while True:
            time.sleep(self.lease_seconds / 4)
            with self._mine():
                if self._held == 0 or pid != os.getpid():
                    self._renewing = False
                    return
            try:
                self._run(
                    "UPDATE llmtally_reservations SET expires_at = {p} WHERE owner = {p}",
                    (time.time() + self.lease_seconds, _ME.get()[1]),
                )
            except Exception:  # the database is down: try again next time, the leases last till then
                log.debug("llmtally: could not renew the budget reservations", exc_info=True)
