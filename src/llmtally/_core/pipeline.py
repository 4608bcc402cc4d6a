"""The pending-call pipeline: calls queued on the call path, settled later, delivered to scopes and sinks.

On the call path an HTTP adapter only appends what it saw to ``pending`` (an object with a
``settle()`` method, see ``_capture.exchange``); parsing, pricing and adding up happen in
``flush()``, which runs when a Tally is read, when ``FLUSH_AT`` calls are queued, or at once when a
sink needs its calls now (``eager``). A metered call's latency carries almost nothing, and a batch
of calls is settled together, with warm caches.

``settle()`` ends in ``deliver()``: the call is appended to every scope it was made in and handed
to every sink (the ledger writer, the OpenTelemetry exporter). The sinks, the eager flag and the
span getter are written by ``_runtime`` alone; everything else only reads them.

Memory stays bounded for a scope that is never read (``llmtally run``'s): the queue, by
``FLUSH_AT``; a scope, because one whose list of calls passes its bound adds them up and keeps only
its most recent records (``Tally._trim``).

This module is loaded by ``import llmtally``: builtins only at the top.
"""

from __future__ import annotations

import os as _os
from _thread import RLock
from os import getpid

TYPE_CHECKING = False  # typing imports re (milliseconds); mypy reads it the same way.
if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable, Sequence
    from typing import Any, Protocol

    from .refusal import Refusal
    from .tally import Tally
    from .usage import Call

    class Pending(Protocol):
        """What the call path queues: settled exactly once, by ``flush()``; never raises."""

        def settle(self) -> None: ...

    Sink = Callable[[Call], None]
else:
    from _collections import deque  # collections' own C type, without importing collections

__all__ = ["FLUSH_AT", "PIPELINE", "Pipeline"]

#: This process's id, kept current across forks (``os`` is loaded before any program runs).
_pid = [getpid()]
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, getpid()))

#: Settle in the call path once this many calls wait: bounds the memory the queue holds.
FLUSH_AT = 64


class Pipeline:
    """The queue of calls not yet settled, and where settled calls go."""

    def __init__(self) -> None:
        #: Appended on the call path (deque.append is atomic), drained by ``flush()``.
        self.pending: deque[Pending] = deque()
        #: Receivers of every settled call, scope or no scope. A tuple, replaced whole by the
        #: runtime, so the call path reads it without a lock.
        self.sinks: tuple[Sink, ...] = ()
        #: Receivers of every refusal record (``_core.refusal``): the ledger writer's. Same rule.
        self.refusal_sinks: tuple[Callable[[Refusal], None], ...] = ()
        #: Settle each call as it ends instead of on the next read (a sink wants it now).
        self.eager = False
        #: ``opentelemetry.trace.get_current_span`` while OpenTelemetry export is on: the span
        #: current when a request is sent is kept as the parent of the call's own span.
        self.span_getter: Callable[[], Any] | None = None
        # Re-entrant: a sink may read a Tally while flush() runs it.
        self._lock = RLock()

    def flush(self) -> None:
        """Settle every queued call."""
        pending = self.pending
        if not pending:
            return
        with self._lock:
            while pending:
                try:
                    item = pending.popleft()
                except IndexError:
                    return
                item.settle()

    def after_fork(self) -> None:
        """In a forked child: the parent's queued calls are the parent's to settle; the lock may
        have been held by a thread that does not exist here."""
        self.pending.clear()
        self._lock = RLock()

    def deliver(self, call: Call, scopes: Sequence[Tally]) -> None:
        """A settled call: into every scope it was made in, then to every sink (each guarded). A
        scope owned by another process (this one is its worker: ``relay``) is sent the call too."""
        for tally in scopes:
            relay = tally._relay
            if relay is not None and relay.owner != _pid[0]:
                try:
                    relay.push(call)
                except Exception:
                    import logging

                    logging.getLogger("llmtally").exception(
                        "llmtally: could not relay a call to the scope %r of process %d",
                        tally.name,
                        relay.owner,
                    )
            calls = tally._calls
            calls.append(call)  # atomic; the totals catch up when the tally is read
            if len(calls) > tally._trim_at:  # a scope never read still holds a bounded list
                tally._trim()
        for sink in self.sinks:
            try:
                sink(call)
            except Exception:
                import logging

                logging.getLogger("llmtally").exception("llmtally: sink %r failed", sink)

    def refused(self, record: Refusal) -> None:
        """A request a limit stopped (or let through in warn mode): to every refusal sink (guarded)."""
        for sink in self.refusal_sinks:
            try:
                sink(record)
            except Exception:
                import logging

                logging.getLogger("llmtally").exception("llmtally: refusal sink %r failed", sink)


#: The process's pipeline.
PIPELINE = Pipeline()
