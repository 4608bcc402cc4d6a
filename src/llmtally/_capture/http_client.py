"""The standard library's adapter: hooks on ``http.client.HTTPConnection.request`` and
``getresponse``, and a tap on the response.

``urllib.request.urlopen`` and code written on ``http.client`` directly send with
``HTTPConnection.request`` (HTTPS connections inherit it) and read ``getresponse()``'s
``HTTPResponse``. The request is noted (and the limits checked, before anything is sent) in
``request``; the response's class is swapped in ``getresponse`` for a subclass whose readers
(``read``, ``read1``, ``readinto``, ``readline``; iteration and ``readlines`` run through
``readline``) also feed what they return to the exchange, which ends when http.client closes the
body (its ``fp`` is gone) or the caller closes it. urllib3, and requests and botocore on it, run on
http.client too: their own hooks are the outer seam, and these pass their requests through.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .._core.pipeline import PIPELINE
from .._core.scope import _scopes
from .exchange import Exchange, begin, collected, request_bytes

__all__ = ["HttpClientAdapter"]

log = logging.getLogger("llmtally")

#: The attribute a connection keeps its pending exchange in, and a tapped response its tap.
_EX = "_llmtally_exchange"


class _Tap:
    __slots__ = ("depth", "ex")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.depth = 0  # readers call one another (readline -> peek/read): feed the outermost only


def _make_request(orig: Any) -> Any:
    def request(self: Any, method: str, url: str, body: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.__dict__.pop(_EX, None)
        scopes = _scopes.get()
        if scopes or PIPELINE.sinks:
            ex = None
            try:
                ex = begin(method.upper(), urlsplit(url).path, self.host or "", request_bytes(body), scopes)
            except Exception:
                log.exception("llmtally: could not inspect a request; it is sent unmetered")
            if ex is not None:
                ex.check_limits()  # may raise BudgetExceeded: the request is not sent
                self.__dict__[_EX] = ex
        try:
            return orig(self, method, url, body, *args, **kwargs)
        except BaseException as exc:
            _failed(self, exc)
            raise

    request.__llmtally_original__ = orig  # type: ignore[attr-defined]
    request.__wrapped__ = orig  # type: ignore[attr-defined]
    return request


def _failed(conn: Any, exc: BaseException) -> None:
    ex = conn.__dict__.pop(_EX, None)
    if ex is not None:
        ex.failed(exc)


def _make_getresponse(orig: Any, taps: dict[type, type]) -> Any:
    def getresponse(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _EX not in self.__dict__:
            return orig(self, *args, **kwargs)
        try:
            response = orig(self, *args, **kwargs)
        except BaseException as exc:
            _failed(self, exc)
            raise
        ex = self.__dict__.pop(_EX, None)
        if ex is not None:
            _respond(ex, response, taps)
        return response

    getresponse.__llmtally_original__ = orig  # type: ignore[attr-defined]
    getresponse.__wrapped__ = orig  # type: ignore[attr-defined]
    return getresponse


def _respond(ex: Exchange, response: Any, taps: dict[type, type]) -> None:
    try:
        get = response.getheader
        if ex.parser.headers:
            ex.note_headers(get)
        if not ex.streaming(response.status, get("content-type") or "", get("content-encoding") or ""):
            return
        if response.fp is None:  # no body (a HEAD, a 204): over already
            ex.finish()
            return
        cls = type(response)
        tap = taps.get(cls)
        if tap is None:
            tap = taps[cls] = _make_tap(cls)
        response.__dict__[_EX] = _Tap(ex)
        response.__class__ = tap
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


def _end(response: Any, exc: BaseException | None = None) -> None:
    """The body ended (or failed with ``exc``): the exchange's end, which never raises."""
    tap = response.__dict__.pop(_EX, None)
    if tap is not None:
        if exc is None:
            tap.ex.finish()
        else:
            tap.ex.interrupted(exc)


def _read(
    response: Any, reader: Any, args: tuple[Any, ...], kwargs: dict[str, Any], into: bool = False
) -> Any:
    tap = response.__dict__.get(_EX)
    if tap is None:
        return reader(response, *args, **kwargs)
    tap.depth += 1
    try:
        got = reader(response, *args, **kwargs)
    except BaseException as exc:
        tap.depth -= 1
        if not tap.depth:
            _end(response, exc)
        raise
    tap.depth -= 1
    if tap.depth:
        return got
    try:
        data = bytes(memoryview(args[0])[:got]) if into else got
        if data:
            tap.ex.feed(data)
        if response.fp is None:  # http.client has read the whole body and closed it
            _end(response)
    except Exception:
        log.exception("llmtally: could not meter part of a stream")
    return got


def _make_tap(base: Any) -> type:
    class TappedHTTPResponse(base):  # type: ignore[misc]
        def read(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.read, args, kwargs)

        def read1(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.read1, args, kwargs)

        def readline(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.readline, args, kwargs)

        def readinto(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.readinto, args, kwargs, into=True)

        def close(self) -> Any:
            try:
                return base.close(self)
            finally:
                tap = self.__dict__.get(_EX)
                if tap is not None and not tap.depth:
                    _end(self)

        def __del__(self) -> None:
            # Collected unread (IOBase's __del__ closes it): queued only, settled at a safe point.
            tap = self.__dict__.pop(_EX, None)
            if tap is not None:
                collected(tap.ex)
            base.__del__(self)

    TappedHTTPResponse.__name__ = TappedHTTPResponse.__qualname__ = base.__name__
    TappedHTTPResponse.__module__ = base.__module__
    return TappedHTTPResponse


class HttpClientAdapter:
    """Patches ``http.client.HTTPConnection.request`` and ``getresponse``."""

    modules: ClassVar[tuple[str, ...]] = ("http.client",)

    def __init__(self) -> None:
        self._original: tuple[Any, Any, Any] | None = None
        self._taps: dict[type, type] = {}

    def patch(self, module: ModuleType) -> None:
        conn = module.HTTPConnection
        if self._original is not None or hasattr(conn.request, "__llmtally_original__"):
            return
        self._original = (conn, conn.request, conn.getresponse)
        conn.request = _make_request(conn.request)
        conn.getresponse = _make_getresponse(conn.getresponse, self._taps)

    def unpatch(self) -> None:
        if self._original is not None:
            conn, request, getresponse = self._original
            conn.request = request
            conn.getresponse = getresponse
            self._original = None
