"""Shared budgets, stored in the ledger database and enforced across processes and hosts.

A budget has a name, a maximum cost and an optional period (``day`` or ``month``, UTC). Before a
request is sent, its worst case (input counted offline plus its output allowance) is *reserved*
with one atomic UPDATE that succeeds only if spent + reserved + this reservation stays within the
maximum; when the call settles, the reservation is released and the real cost added. Every process
on the same database sees the same numbers, so together they cannot overshoot beyond what they
reserved, and a reservation is never smaller than the call's real cost when the request states its
``max_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .._core.money import from_pico, parse_amount, to_pico

if TYPE_CHECKING:
    from . import Ledger

__all__ = ["PERIODS", "BudgetState", "BudgetStore", "window_start"]

PERIODS = (None, "day", "month")

_CREATE = (
    "CREATE TABLE IF NOT EXISTS llmtally_budgets (name TEXT PRIMARY KEY, max_pico BIGINT NOT NULL, "
    "period TEXT, window_start DOUBLE PRECISION NOT NULL, spent_pico BIGINT NOT NULL, "
    "reserved_pico BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)
# Roll the window over if it has passed, then reserve only if the budget still has room; one
# statement, so concurrent reservations serialise on the row.
_RESERVE = (
    "UPDATE llmtally_budgets SET "
    "spent_pico = CASE WHEN window_start < {p} THEN 0 ELSE spent_pico END, "
    "window_start = CASE WHEN window_start < {p} THEN {p} ELSE window_start END, "
    "reserved_pico = reserved_pico + {p}, updated_at = {p} "
    "WHERE name = {p} AND (CASE WHEN window_start < {p} THEN 0 ELSE spent_pico END) + reserved_pico + {p} "
    "<= max_pico RETURNING spent_pico"
)
_SETTLE = (
    "UPDATE llmtally_budgets SET reserved_pico = reserved_pico - {p}, spent_pico = spent_pico + {p}, "
    "updated_at = {p} WHERE name = {p}"
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


@dataclass(frozen=True)
class BudgetState:
    name: str
    max_cost: Decimal
    period: str | None
    spent: Decimal
    reserved: Decimal
    window_start: float


class BudgetStore:
    """Budgets in one ledger database (any ``Ledger``: SQLite or PostgreSQL)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._run(_CREATE, ())

    def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.ledger.execute(sql.replace("{p}", self.ledger.placeholder), params)

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
        self._run(
            "UPDATE llmtally_budgets SET spent_pico = 0, updated_at = {p} WHERE name = {p}",
            (time.time(), name),
        )

    def get(self, name: str) -> BudgetState | None:
        rows = self._run(
            "SELECT name, max_pico, period, spent_pico, reserved_pico, window_start FROM llmtally_budgets "
            "WHERE name = {p}",
            (name,),
        )
        return self._state(rows[0]) if rows else None

    def list(self) -> list[BudgetState]:
        rows = self._run(
            "SELECT name, max_pico, period, spent_pico, reserved_pico, window_start FROM llmtally_budgets "
            "ORDER BY name",
            (),
        )
        return [self._state(r) for r in rows]

    def _state(self, r: tuple[Any, ...]) -> BudgetState:
        spent = 0 if r[5] < window_start(r[2]) else r[3]
        return BudgetState(r[0], from_pico(r[1]), r[2], from_pico(spent), from_pico(r[4]), r[5])

    def reserve(self, name: str, amount: Decimal, period: str | None) -> bool:
        """Reserve ``amount``; False (nothing reserved) if it does not fit in the budget."""
        pico = to_pico(amount)
        now = time.time()
        ws = window_start(period, now)
        rows = self._run(_RESERVE, (ws, ws, ws, pico, now, name, ws, pico))
        return bool(rows)

    def settle(self, name: str, reserved: Decimal, actual: Decimal) -> None:
        self._run(_SETTLE, (to_pico(reserved), to_pico(actual), time.time(), name))
