"""The record of a request a limit stopped (or, in warn mode, let through past it).

A refusal is raised before anything is sent, so no ``Call`` exists for it. ``_limits`` makes a
``Refusal`` and hands it to ``PIPELINE.refusal_sinks`` (the ledger writer's), which queues it with
the calls: the ledger's ``refusals`` table is how a scope's owner, and the dashboard, learn that a
limit was hit. It holds what a call's record holds about where it was made (scope path, merged
tags, provider, endpoint, requested model, process and run), which limit it was, and the figures;
never prompt text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .usage import RUN

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Refusal"]


def _run_id() -> str | None:
    return RUN.id


@dataclass(frozen=True)
class Refusal:
    """One request stopped by a limit (``action="refused"``) or sent past it (``"warned"``)."""

    #: The scope (or shared budget) whose limit it was.
    refused_by: str | None
    #: ``cost``, ``tokens``, ``requests`` or ``unchecked`` (``BudgetExceeded.limit``).
    limit: str
    #: The limit and what was spent (cost: exact decimal text in the display currency).
    allowed: str
    spent: str
    action: str = "refused"
    #: The request's worst case, when it was refused because it *could* go past the limit.
    worst: str | None = None
    #: ``budget`` when a shared budget's limit, ``scope`` when a scope's own.
    by_kind: str = "scope"
    #: The currency of ``allowed``/``spent``/``worst`` for a cost limit (the display currency).
    currency: str | None = None
    scope_path: tuple[str, ...] = ()
    tags: Mapping[str, object] = field(default_factory=dict)
    provider: str | None = None
    endpoint: str | None = None
    requested_model: str | None = None
    at: float = field(default_factory=time.time)
    run_id: str | None = field(default_factory=_run_id)
