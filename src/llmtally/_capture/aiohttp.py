"""The aiohttp adapter: a hook on ``ClientSession._request``, and a tap on the response's byte stream.

``session.post(...)`` (and ``get``, ``request``, ...) all run ``ClientSession._request``, which
returns once the response's headers are in; the body arrives later, into the response's
``StreamReader`` (``response.content``), whatever the caller then reads it with (``json()``,
``read()``, ``iter_chunked()``, ``async for line in response.content``). So the tap sits where the
bytes arrive: the reader's class is swapped for a subclass (``StreamReader`` has slots, no instance
dictionary; the subclass adds none, so the layout is the same) whose ``feed_data`` also feeds the
exchange, already decompressed by aiohttp, and whose ``feed_eof`` ends it. Bytes that arrived with
the headers, before the hook saw the response, are fed first from the reader's buffer.
A response released before its end is a call closed early, not a failure: ``release``/``close`` end
the exchange before aiohttp marks the reader as broken.

google-genai's async client, LiteLLM's aiohttp transport and plain aiohttp code take this path; an
httpx transport over aiohttp is counted once, by the httpx hook (the ``outer`` seam flag).
"""

from __future__ import annotations

import json
import logging
import weakref
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .._core.pipeline import PIPELINE
from .._core.scope import _scopes
from .exchange import Exchange, begin, collected, outer, request_bytes

__all__ = ["AiohttpAdapter"]

log = logging.getLogger("llmtally")

#: id(stream reader) -> the exchange its bytes belong to, while they are arriving.
_tapped: dict[int, Exchange] = {}


def _begin(
    session: Any, method: str, str_or_url: Any, kwargs: dict[str, Any], scopes: Any
) -> Exchange | None:
    try:
        build = getattr(session, "_build_url", None)  # a session's base_url joined, as aiohttp does
        url = urlsplit(str(build(str_or_url) if build is not None else str_or_url))
        body = request_bytes(kwargs.get("data"))
        if kwargs.get("json") is not None:
            body = json.dumps(kwargs["json"]).encode()
        return begin(method.upper(), url.path, url.hostname or "", body, scopes)
    except Exception:
        log.exception("llmtally: could not inspect a request; it is sent unmetered")
        return None


def _respond(
    ex: Exchange, response: Any, tap: type, decompress: bool | None, session: Any, decodes: frozenset[str]
) -> None:
    try:
        headers = response.headers
        if ex.parser.headers:  # Bedrock's token counts
            ex.note_headers(headers.get)
        encoding = headers.get("content-encoding", "")
        if encoding:
            # aiohttp decompresses before the reader, unless told not to or the coding is not one
            # it decodes (a stacked list): then the exchange inflates.
            if decompress is None:
                decompress = getattr(session, "_auto_decompress", True)
            if decompress and (encoding in decodes or encoding.lower() in decodes):
                encoding = ""
        if not ex.streaming(response.status, headers.get("content-type", ""), encoding):
            return
        reader = response.content
        _tapped[id(reader)] = ex
        reader.__class__ = tap
        # A response dropped unread, never released: counted when it is collected, and its entry
        # here (which keeps the exchange) goes with it.
        weakref.finalize(response, _dropped, id(reader), ex)
        buffered = list(getattr(reader, "_buffer", ()))  # arrived with the headers
        offset = getattr(reader, "_buffer_offset", 0)
        if buffered:
            ex.feed(b"".join(buffered)[offset:])
        if reader.is_eof():
            _tapped.pop(id(reader), None)
            ex.finish()
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


def _make_tap(base: type) -> type:
    class TappedStreamReader(base):  # type: ignore[misc]
        __slots__ = ()

        def feed_data(self, data: bytes, *args: Any, **kwargs: Any) -> Any:
            ex = _tapped.get(id(self))
            if ex is not None and data:
                ex.feed(data)
            return super().feed_data(data, *args, **kwargs)

        def feed_eof(self) -> None:
            ex = _tapped.pop(id(self), None)
            if ex is not None:
                ex.finish()
            super().feed_eof()

        def set_exception(self, exc: BaseException, *args: Any, **kwargs: Any) -> None:
            ex = _tapped.pop(id(self), None)
            if ex is not None:
                ex.interrupted(exc)
            super().set_exception(exc, *args, **kwargs)

    return TappedStreamReader


def _dropped(reader_id: int, ex: Exchange) -> None:
    """The response was collected unread: its entry goes, and its call ends (queued only)."""
    try:
        if _tapped.get(reader_id) is ex:
            del _tapped[reader_id]
            collected(ex)
    except Exception:
        log.exception("llmtally: could not end the metering of a dropped response")


def _end_early(response: Any) -> None:
    """The caller released or closed the response before its body ended: a call closed early."""
    content = getattr(response, "content", None)
    if content is not None and _tapped:
        ex = _tapped.pop(id(content), None)
        if ex is not None:
            ex.finish()


def _decodes(module: Any) -> frozenset[str]:
    """The codings aiohttp decompresses on its own: one coding, never a stacked list, and zstd only
    from 3.12 (without its library, it refuses such a response)."""
    codings = {"gzip", "deflate", "br"}
    if hasattr(getattr(module, "compression_utils", None), "HAS_ZSTD"):
        codings.add("zstd")
    return frozenset(codings)


def _make_request(orig: Any, tap: type, decodes: frozenset[str]) -> Any:
    async def _request(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return await orig(self, method, str_or_url, **kwargs)
        ex = _begin(self, method, str_or_url, kwargs, scopes)
        if ex is None:
            return await orig(self, method, str_or_url, **kwargs)
        ex.check_limits()  # may raise BudgetExceeded: the request is not sent
        seam = outer.set(True)
        try:
            response = await orig(self, method, str_or_url, **kwargs)
        except BaseException as exc:
            ex.failed(exc)
            raise
        finally:
            outer.reset(seam)
        _respond(ex, response, tap, kwargs.get("auto_decompress"), self, decodes)
        return response

    _request.__llmtally_original__ = orig  # type: ignore[attr-defined]
    _request.__wrapped__ = orig  # type: ignore[attr-defined]
    return _request


def _make_ending(orig: Any) -> Any:
    def end(self: Any) -> Any:
        try:
            _end_early(self)
        except Exception:
            log.exception("llmtally: could not end a metered response")
        return orig(self)

    end.__llmtally_original__ = orig  # type: ignore[attr-defined]
    end.__wrapped__ = orig  # type: ignore[attr-defined]
    return end


class AiohttpAdapter:
    """Patches ``aiohttp.ClientSession._request`` and ``ClientResponse.release`` / ``close``."""

    modules: ClassVar[tuple[str, ...]] = ("aiohttp",)

    def __init__(self) -> None:
        self._originals: tuple[ModuleType, Any, Any, Any] | None = None

    def patch(self, module: ModuleType) -> None:
        session, response = module.ClientSession, module.ClientResponse
        if self._originals is not None or hasattr(session._request, "__llmtally_original__"):
            return
        request, release, close = session._request, response.release, response.close
        session._request = _make_request(request, _make_tap(module.StreamReader), _decodes(module))
        response.release = _make_ending(release)
        response.close = _make_ending(close)
        self._originals = (module, request, release, close)

    def unpatch(self) -> None:
        if self._originals is not None:
            module, request, release, close = self._originals
            module.ClientSession._request = request
            module.ClientResponse.release = release
            module.ClientResponse.close = close
            self._originals = None
