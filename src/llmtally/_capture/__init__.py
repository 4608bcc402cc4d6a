"""Capture at the HTTP clients: adapters, the exchange, settlement, thread propagation.

One path for every call: an adapter (one small module per HTTP client, ``httpx.py``) turns its
client's request, response and byte stream into an ``exchange.Exchange``; the exchange keeps the
call-path state and queues itself when the call is over; ``settle.py`` parses, prices and delivers
it off the call path. ``ADAPTERS`` lists the adapters the runtime installs; adding an HTTP client
is one adapter module and one entry there (see docs/architecture.md).
"""

from __future__ import annotations

from .httpx import HttpxAdapter
from .imports import PatchOnImport
from .threads import ThreadsInstrumentor

__all__ = ["ADAPTERS", "PatchOnImport", "ThreadsInstrumentor"]

#: The HTTP client adapters. Each has ``modules`` (the names it patches once imported),
#: ``patch(module)`` and ``unpatch()``; the runtime owns one instance of each.
ADAPTERS: tuple[type[HttpxAdapter], ...] = (HttpxAdapter,)
