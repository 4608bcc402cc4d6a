"""The httpx / httpx2 adapter: one hook on ``Client.send`` and ``AsyncClient.send``, sync and async.

The current openai and anthropic SDKs (and so LangChain's ChatOpenAI and ChatAnthropic) send every
request through ``httpx2.Client.send`` / ``AsyncClient.send``; many other SDKs use ``httpx``. Both
have the same API, so one adapter serves both modules.

The hook never changes what the caller gets: the request goes out as it came, the response object
is the one the client built, and a streamed body reaches the caller chunk for chunk through a tap
(a subclass of the module's own byte-stream class, which ``Response`` checks with isinstance).
``Response.json`` is wrapped too, so a body the SDK decodes is not decoded a second time.

The adapter's hot path, for a request made with no scope open and no ledger: one ContextVar read
and one attribute read, then the original ``send``.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, ClassVar

from .._core.pipeline import PIPELINE
from .._core.scope import _scopes
from .exchange import Exchange, begin, end_when_collected, outer

__all__ = ["HttpxAdapter"]

log = logging.getLogger("llmtally")


def _begin(request: Any, scopes: Any) -> Exchange | None:
    try:
        url = request.url
        try:
            body = request.content
        except Exception:  # a streamed upload (httpx raises RequestNotRead): nothing to learn from it
            body = None
        return begin(request.method, url.path, url.host, body, scopes)
    except Exception:
        log.exception("llmtally: could not inspect a request; it is sent unmetered")
        return None


def _respond(ex: Exchange, response: Any, stream: bool, module: Any, awaiting: dict[int, Exchange]) -> None:
    try:
        headers = response.headers
        if ex.parser.headers:  # Bedrock's token counts
            ex.note_headers(headers.get)
        # A body already in memory, asked for as a stream or not: a transport that answered with
        # bytes (a mock, a test double, a cache) has had the response read at construction, and
        # the caller's reads never touch the stream. (``_content`` is where httpx keeps it.)
        content = response.content if not stream else getattr(response, "_content", None)
        if content is not None:
            if content[:1] == b"{":
                ex.body(response.status_code, content, "", (awaiting, id(response)))
            else:
                content_type = headers.get("content-type", "")
                ex.body(
                    response.status_code,
                    content,
                    content_type,
                    (awaiting, id(response)),
                    _undone,
                    (module, headers),
                )
            return
        encoding = headers.get("content-encoding", "")
        if ex.streaming(response.status_code, headers.get("content-type", ""), encoding):
            response.stream = _tap(response.stream, ex, module)
            end_when_collected(response, ex)
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


def _undone(of: tuple[Any, Any]) -> str:
    """The codings httpx left undone on a body it read: those it has no decoder for (br without
    brotli), which it skips."""
    module, headers = of
    encoding = headers.get("content-encoding")
    if not encoding:
        return ""
    decoders = getattr(getattr(module, "_decoders", None), "SUPPORTED_DECODERS", None)
    if decoders is None:
        return ""
    codings = (c.strip().lower() for c in encoding.split(","))
    return ", ".join(c for c in codings if c and c not in decoders)


def _make_sync_send(orig: Any, module: Any, awaiting: dict[int, Exchange]) -> Any:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return orig(self, request, *args, **kwargs)
        ex = _begin(request, scopes)
        if ex is None:
            return orig(self, request, *args, **kwargs)
        ex.check_limits()  # may raise BudgetExceeded: the request is not sent
        seam = outer.set(True)  # the clients below (an aiohttp transport, say) pass it through
        try:
            response = orig(self, request, *args, **kwargs)
        except BaseException as exc:
            ex.failed(exc)
            raise
        finally:
            outer.reset(seam)
        _respond(ex, response, kwargs.get("stream", False), module, awaiting)
        return response

    send.__llmtally_original__ = orig  # type: ignore[attr-defined]
    send.__wrapped__ = orig  # type: ignore[attr-defined]
    return send


def _make_async_send(orig: Any, module: Any, awaiting: dict[int, Exchange]) -> Any:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return await orig(self, request, *args, **kwargs)
        ex = _begin(request, scopes)
        if ex is None:
            # An aiohttp transport below must not look at it again (nor say twice it is unread).
            seam = outer.set(True)
            try:
                return await orig(self, request, *args, **kwargs)
            finally:
                outer.reset(seam)
        ex.check_limits()
        seam = outer.set(True)  # the clients below (an aiohttp transport, say) pass it through
        try:
            response = await orig(self, request, *args, **kwargs)
        except BaseException as exc:
            ex.failed(exc)
            raise
        finally:
            outer.reset(seam)
        _respond(ex, response, kwargs.get("stream", False), module, awaiting)
        return response

    send.__llmtally_original__ = orig  # type: ignore[attr-defined]
    send.__wrapped__ = orig  # type: ignore[attr-defined]
    return send


def _make_json(orig: Any, awaiting: dict[int, Exchange]) -> Any:
    def json(self: Any, **kwargs: Any) -> Any:
        obj = orig(self, **kwargs)
        if awaiting:
            ex = awaiting.pop(id(self), None)
            if ex is not None and not kwargs and type(obj) is dict:
                # The SDK has just decoded the body: settle from its dict instead of decoding it
                # again. It is only read, later, and the SDK builds its models without changing it.
                ex.json(obj)
        return obj

    json.__llmtally_original__ = orig  # type: ignore[attr-defined]
    json.__wrapped__ = orig  # type: ignore[attr-defined]
    return json


# -- stream taps: subclasses of each module's byte-stream bases ------------------------------------

_tap_classes: dict[Any, tuple[type, type]] = {}


def _tap_classes_for(module: Any) -> tuple[type, type]:
    classes = _tap_classes.get(module)
    if classes is not None:
        return classes

    class SyncTap(module.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, ex: Exchange) -> None:
            self._inner = inner
            self._ex = ex

        def __iter__(self) -> Any:
            ex = self._ex
            try:
                for chunk in self._inner:
                    ex.feed(chunk)
                    yield chunk
            except GeneratorExit:  # the reader stopped early: a call closed early, not a failure
                ex.finish()
                raise
            except BaseException as exc:  # a broken connection, a KeyboardInterrupt mid-stream
                ex.interrupted(exc)
                raise
            ex.finish()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._ex.finish()

        def __getattr__(self, name: str) -> Any:  # elapsed, and whatever else the client reads
            return getattr(self._inner, name)

    class AsyncTap(module.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, ex: Exchange) -> None:
            self._inner = inner
            self._ex = ex

        async def __aiter__(self) -> Any:
            ex = self._ex
            try:
                async for chunk in self._inner:
                    ex.feed(chunk)
                    yield chunk
            except GeneratorExit:  # the reader stopped early: a call closed early, not a failure
                ex.finish()
                raise
            except BaseException as exc:  # a broken connection, a cancelled task mid-stream
                ex.interrupted(exc)
                raise
            ex.finish()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._ex.finish()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    classes = _tap_classes[module] = (SyncTap, AsyncTap)
    return classes


def _tap(stream: Any, ex: Exchange, module: Any) -> Any:
    sync_tap, async_tap = _tap_classes_for(module)
    if isinstance(stream, module.SyncByteStream):
        return sync_tap(stream, ex)
    if isinstance(stream, module.AsyncByteStream):
        return async_tap(stream, ex)
    raise TypeError(f"unknown response stream type {type(stream).__name__}")


class HttpxAdapter:
    """Patches ``Client.send``, ``AsyncClient.send`` and ``Response.json`` of httpx and httpx2."""

    #: The modules this adapter patches, as soon as they are imported.
    modules: ClassVar[tuple[str, ...]] = ("httpx", "httpx2")

    def __init__(self) -> None:
        # module -> (sync send, async send, Response.json) as they were before patching
        self._originals: dict[Any, tuple[Any, Any, Any]] = {}
        #: id(response) -> the exchange of a metered JSON response the client has not decoded yet.
        #: An exchange is filed here only until it settles, and the caller holds the response
        #: meanwhile, so its id cannot be reused for another response in that time.
        self.awaiting_json: dict[int, Exchange] = {}

    def patch(self, module: ModuleType) -> None:
        if module in self._originals:
            return  # httpx2.alias_httpx() makes both names one module
        sync_send = module.Client.send
        if hasattr(sync_send, "__llmtally_original__"):
            return
        async_send = module.AsyncClient.send
        json_method = module.Response.json
        awaiting = self.awaiting_json
        module.Client.send = _make_sync_send(sync_send, module, awaiting)
        module.AsyncClient.send = _make_async_send(async_send, module, awaiting)
        module.Response.json = _make_json(json_method, awaiting)
        self._originals[module] = (sync_send, async_send, json_method)

    def unpatch(self) -> None:
        for module, (sync_send, async_send, json_method) in self._originals.items():
            module.Client.send = sync_send
            module.AsyncClient.send = async_send
            module.Response.json = json_method
        self._originals.clear()
