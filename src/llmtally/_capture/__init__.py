"""Capture at the HTTP clients: adapters, the exchange, settlement, thread propagation.

One path for every call: an adapter (one small module per HTTP client: ``httpx.py``,
``requests.py``, ``aiohttp.py``, ``urllib3.py``, ``http_client.py``) turns its client's request,
response and byte stream into an ``exchange.Exchange``; the exchange keeps the call-path state and
queues itself when the call is over; ``settle.py`` parses, prices and delivers it off the call
path. ``ADAPTERS`` lists the adapters the runtime installs; adding an HTTP client is one adapter
module and one entry there (see docs/architecture.md). Clients stack (requests and botocore on
urllib3, urllib3 on http.client): the outermost hook counts a call, the ones below pass it through.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar, Protocol

from .aiohttp import AiohttpAdapter
from .http_client import HttpClientAdapter
from .httpx import HttpxAdapter
from .imports import PatchOnImport
from .processes import ProcessesInstrumentor
from .requests import RequestsAdapter
from .threads import ThreadsInstrumentor
from .urllib3 import Urllib3Adapter

__all__ = ["ADAPTERS", "Adapter", "PatchOnImport", "ProcessesInstrumentor", "ThreadsInstrumentor"]


class Adapter(Protocol):
    """What the runtime needs of an HTTP client adapter (see docs/architecture.md)."""

    #: The modules it patches: now if they are imported, else as soon as they are.
    modules: ClassVar[tuple[str, ...]]

    def patch(self, module: ModuleType) -> None:
        """Hook the client classes of ``module``; a second call for the same module does nothing."""

    def unpatch(self) -> None:
        """Restore every class it patched, exactly as it was."""


#: The HTTP client adapters; the runtime owns one instance of each.
ADAPTERS: tuple[type[Adapter], ...] = (
    HttpxAdapter,
    RequestsAdapter,
    AiohttpAdapter,
    Urllib3Adapter,
    HttpClientAdapter,
)
