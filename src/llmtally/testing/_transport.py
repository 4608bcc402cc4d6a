"""In-memory transports: `FakeProvider` behind an ``httpx`` or ``httpx2`` ``MockTransport``.

No socket is opened, yet streams still arrive event by event, ``delay`` is honoured (with
``asyncio.sleep`` on async clients), and a cut stream raises the same ``RemoteProtocolError``
a dropped connection would. ``httpx``/``httpx2`` are imported here, on first use only.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._provider import FakeProvider
    from ._wire import Answer

__all__ = ["make_transport"]

_CUT_MESSAGE = "peer closed connection without sending complete message body (incomplete chunked read)"


def make_transport(provider: FakeProvider, module_name: str) -> Any:
    """A ``MockTransport`` of ``module_name`` (``"httpx"`` or ``"httpx2"``) that asks ``provider``."""
    return _transport_class(module_name)(provider)


@functools.cache
def _transport_class(module_name: str) -> type:
    http: Any = importlib.import_module(module_name)

    class EventStream(http.SyncByteStream, http.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, events: Iterable[bytes], truncated: bool) -> None:
            self._events = events
            self._truncated = truncated

        def __iter__(self) -> Iterator[bytes]:
            yield from self._events
            if self._truncated:
                raise http.RemoteProtocolError(_CUT_MESSAGE)

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for event in self._events:
                yield event
            if self._truncated:
                raise http.RemoteProtocolError(_CUT_MESSAGE)

    class FakeTransport(http.MockTransport):  # type: ignore[misc]
        """A ``MockTransport`` answering as a `FakeProvider`, sync and async."""

        def __init__(self, provider: FakeProvider) -> None:
            super().__init__(self._sync_handler)
            self.provider = provider

        def _answer(self, request: Any) -> Answer:
            return self.provider.answer(
                request.method, request.url.raw_path.decode(), request.headers, request.content
            )

        def _response(self, request: Any, answer: Answer) -> Any:
            if answer.events is None:
                return http.Response(
                    answer.status, headers=answer.headers, content=answer.body, request=request
                )
            stream = EventStream(answer.events, answer.truncated)
            return http.Response(answer.status, headers=answer.headers, stream=stream, request=request)

        def _sync_handler(self, request: Any) -> Any:
            answer = self._answer(request)
            if answer.delay:
                time.sleep(answer.delay)
            return self._response(request, answer)

        async def handle_async_request(self, request: Any) -> Any:
            await request.aread()
            answer = self._answer(request)
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return self._response(request, answer)

    FakeTransport.__qualname__ = FakeTransport.__name__ = "FakeTransport"
    return FakeTransport
