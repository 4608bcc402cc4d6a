"""The urllib3 adapter: a hook on ``HTTPConnectionPool.urlopen``, and a tap on the response it returns.

botocore (boto3's Bedrock runtime) and plain ``urllib3.request(...)`` / ``PoolManager`` code send
through ``HTTPConnectionPool.urlopen``; requests does too, but its own hook is the outer seam and
this one passes its requests through (the ``outer`` flag), as it does urlopen's own retries and
redirects, which call urlopen again.

A response read before urlopen returns (``preload_content=True``, urllib3's default) is a whole
body. Otherwise the caller reads it later (botocore: ``stream()``, and an event stream for
``ConverseStream``), so the response's class is swapped for a subclass whose readers (``read``,
``read1``, ``read_chunked``; ``stream``, ``data``, iteration and ``readinto`` all run through them)
also feed what they return to the exchange. The response is still the same object, an instance of
its class. What a reader returns is decoded or not as that read asked (botocore asks for raw
bytes); the exchange inflates raw gzip or deflate itself. The body has ended when the connection's
file is closed and urllib3 holds nothing back to decode; a response closed, released or drained
before that is a call closed early.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .._core.pipeline import PIPELINE
from .._core.scope import _scopes
from .codings import left_encoded
from .exchange import Exchange, begin, collected, outer, parser_for, request_bytes

__all__ = ["Urllib3Adapter"]

log = logging.getLogger("llmtally")

#: The attribute a tapped response keeps its exchange in.
_EX = "_llmtally_exchange"


def _begin(pool: Any, method: str, url: str, body: Any, scopes: Any) -> Exchange | None:
    try:
        return begin(method.upper(), urlsplit(url).path, pool.host or "", request_bytes(body), scopes)
    except Exception:
        log.exception("llmtally: could not inspect a request; it is sent unmetered")
        return None


def undone(response: Any, coding: str) -> str:
    """What urllib3's decoded reads of a ``coding``-encoded body leave encoded: nothing, unless it
    has no decoder for it (br without brotli), when they hand it over as it came."""
    return left_encoded(coding, getattr(response, "CONTENT_DECODERS", _DECODERS))


def _undone(response: Any) -> str:
    return undone(response, response.headers.get("content-encoding", ""))


#: What every urllib3 decodes, for a response class that does not say.
_DECODERS = ("gzip", "x-gzip", "deflate")


def _respond(ex: Exchange, response: Any, decode_content: bool, taps: dict[type, type]) -> None:
    try:
        headers = response.headers
        if ex.parser.headers:
            ex.note_headers(headers.get)
        content_type = headers.get("content-type", "")
        body = response._body
        if body is not None:  # read before urlopen returned
            if decode_content:
                ex.body(response.status, body, content_type, None, _undone, response)
            elif ex.streaming(response.status, content_type, headers.get("content-encoding", "")):
                ex.feed(body)
                ex.finish()
            return
        coding = headers.get("content-encoding", "")
        encoding = undone(response, coding) if coding and response.decode_content else coding
        if not ex.streaming(response.status, content_type, encoding):
            return
        cls = type(response)
        tap = taps.get(cls)
        if tap is None:
            tap = taps[cls] = _make_tap(cls)
        coding = coding.strip().lower()
        setattr(response, _EX, _Tap(ex, bool(response.decode_content), coding not in ("", "identity")))
        response.__class__ = tap
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


class _Tap:
    """What a tapped response keeps: its exchange, whether the exchange is fed decoded bytes,
    whether the body is compressed (if not, raw and decoded reads are the same bytes), whether
    anything was fed yet, and whether a read is under way (urllib3 releases the connection inside
    the read that ends the body, before returning its last bytes: the end is taken after them)."""

    __slots__ = ("compressed", "decoded", "ex", "fed", "reading")

    def __init__(self, ex: Exchange, decoded: bool, compressed: bool) -> None:
        self.ex = ex
        self.decoded = decoded
        self.compressed = compressed
        self.fed = False
        self.reading = 0


def _fed(response: Any, data: Any, decode: Any) -> None:
    """Feed what a reader returned; finish the exchange if the body has ended."""
    tap = response.__dict__.get(_EX)
    if tap is None:
        return
    if decode is None:
        decode = response.decode_content
    if data:
        if tap.compressed and bool(decode) != tap.decoded:
            if tap.fed:
                data = None  # raw and decoded reads mixed on one body: not followed any further
            else:  # the first read says how this caller reads it: the exchange follows
                tap.decoded = bool(decode)
                coding = response.headers.get("content-encoding", "")
                tap.ex.use_encoding(undone(response, coding) if decode else coding)
        if data:
            tap.fed = True
            tap.ex.feed(data)
    fp = response._fp
    if fp is None or _closed(fp):
        buffered = getattr(response, "_decoded_buffer", None)
        if buffered is None or not len(buffered):
            # Reads bounded by ``amt`` leave what is still to be decoded inside the decoder (2.6+).
            decoder = getattr(response, "_decoder", None)
            if decoder is None or not getattr(decoder, "has_unconsumed_tail", False):
                _end(response)


def _closed(fp: Any) -> bool:
    isclosed = getattr(fp, "isclosed", None)
    if isclosed is not None:
        return bool(isclosed())
    return bool(getattr(fp, "closed", False))


def _end(response: Any, exc: BaseException | None = None) -> None:
    """The body ended (or failed with ``exc``): the exchange's end, which never raises."""
    tap = response.__dict__.pop(_EX, None)
    if tap is not None:
        if exc is None:
            tap.ex.finish()
        else:
            tap.ex.interrupted(exc)


def _closing(response: Any) -> None:
    """The response is closed or released: the call ends, unless a read will end it."""
    tap = response.__dict__.get(_EX)
    if tap is not None and not tap.reading:
        _end(response)


def _read(response: Any, reader: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    tap = response.__dict__.get(_EX)
    if tap is None:
        return reader(response, *args, **kwargs)
    tap.reading += 1
    try:
        data = reader(response, *args, **kwargs)
    except BaseException as exc:
        _end(response, exc)
        raise
    finally:
        tap.reading -= 1
    try:
        _fed(response, data, _decode_arg(args, kwargs))
    except Exception:
        log.exception("llmtally: could not meter part of a stream")
    return data


def _decode_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``decode_content`` of ``read(amt, decode_content, ...)`` and friends, however passed."""
    return kwargs["decode_content"] if "decode_content" in kwargs else (args[1] if len(args) > 1 else None)


def _make_tap(base: Any) -> type:
    class TappedHTTPResponse(base):  # type: ignore[misc]
        def read(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.read, args, kwargs)

        def read1(self, *args: Any, **kwargs: Any) -> Any:
            return _read(self, base.read1, args, kwargs)

        def read_chunked(self, *args: Any, **kwargs: Any) -> Any:
            # Unlike read(), read_chunked takes decode_content=None as False: raw bytes.
            decode = bool(_decode_arg(args, kwargs))
            tap = self.__dict__.get(_EX)
            chunks = base.read_chunked(self, *args, **kwargs)
            try:
                while True:
                    if tap is not None:
                        tap.reading += 1
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    finally:
                        if tap is not None:
                            tap.reading -= 1
                    try:
                        _fed(self, chunk, decode)
                    except Exception:
                        log.exception("llmtally: could not meter part of a stream")
                    yield chunk
            except GeneratorExit:  # the reader stopped early
                chunks.close()
                _end(self)
                raise
            except BaseException as exc:
                _end(self, exc)
                raise
            _end(self)

        def close(self) -> Any:
            try:
                return base.close(self)
            finally:
                _closing(self)

        def release_conn(self) -> Any:
            try:
                return base.release_conn(self)
            finally:
                _closing(self)

        def drain_conn(self) -> Any:
            _end(self)  # what is drained is thrown away unread: the call ends here
            return base.drain_conn(self)

        def __del__(self) -> None:
            # Collected unread (IOBase's __del__ closes it): queued only, settled at a safe point.
            tap = self.__dict__.pop(_EX, None)
            if tap is not None:
                collected(tap.ex)
            base.__del__(self)

    TappedHTTPResponse.__name__ = TappedHTTPResponse.__qualname__ = base.__name__
    TappedHTTPResponse.__module__ = base.__module__
    return TappedHTTPResponse


def _make_urlopen(orig: Any, taps: dict[type, type]) -> Any:
    def urlopen(self: Any, method: str, url: str, body: Any = None, *args: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return orig(self, method, url, body, *args, **kwargs)
        ex = _begin(self, method, url, body, scopes)
        if ex is None:
            return orig(self, method, url, body, *args, **kwargs)
        ex.check_limits()  # may raise BudgetExceeded: the request is not sent
        seam = outer.set(True)  # urlopen's own retries and redirects pass through
        try:
            response = orig(self, method, url, body, *args, **kwargs)
        except BaseException as exc:
            ex.failed(exc)
            raise
        finally:
            outer.reset(seam)
        # urlopen(method, url, body, headers, retries, redirect, assert_same_host, timeout,
        # pool_timeout, release_conn, chunked, body_pos, preload_content, decode_content)
        decode = kwargs.get("decode_content", args[10] if len(args) > 10 else True)
        _respond(ex, response, bool(decode), taps)
        return response

    urlopen.__llmtally_original__ = orig  # type: ignore[attr-defined]
    urlopen.__wrapped__ = orig  # type: ignore[attr-defined]
    return urlopen


def _make_manager_urlopen(orig: Any, taps: dict[type, type]) -> Any:
    """``PoolManager.urlopen(method, url, redirect=True, **kw)``: it follows redirects itself, one
    pool call per hop, so the call is begun here, once, and counted for its final answer."""

    def urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return orig(self, method, url, *args, **kwargs)
        try:
            parts = urlsplit(url)
            if parser_for(method.upper(), parts.path) is None:
                # No format reads this path: the pools below decide for each hop (a redirect may
                # lead to one), and say once if it looks like an LLM call.
                return orig(self, method, url, *args, **kwargs)
            ex = begin(
                method.upper(), parts.path, parts.hostname or "", request_bytes(kwargs.get("body")), scopes
            )
        except Exception:
            log.exception("llmtally: could not inspect a request; it is sent unmetered")
            ex = None
        seam = outer.set(True)  # the pools below, and the redirects followed here, pass through
        try:
            if ex is None:
                return orig(self, method, url, *args, **kwargs)
            ex.check_limits()  # may raise BudgetExceeded: the request is not sent
            try:
                response = orig(self, method, url, *args, **kwargs)
            except BaseException as exc:
                ex.failed(exc)
                raise
        finally:
            outer.reset(seam)
        _respond(ex, response, bool(kwargs.get("decode_content", True)), taps)
        return response

    urlopen.__llmtally_original__ = orig  # type: ignore[attr-defined]
    urlopen.__wrapped__ = orig  # type: ignore[attr-defined]
    return urlopen


class Urllib3Adapter:
    """Patches ``HTTPConnectionPool.urlopen`` (HTTPS pools inherit it; botocore sends through it)
    and ``PoolManager.urlopen`` (ProxyManager's calls it), which follows redirects above the pools."""

    modules: ClassVar[tuple[str, ...]] = ("urllib3.connectionpool", "urllib3.poolmanager")

    def __init__(self) -> None:
        self._originals: dict[str, tuple[Any, Any]] = {}
        self._taps: dict[type, type] = {}

    def patch(self, module: ModuleType) -> None:
        if module.__name__ == "urllib3.poolmanager":
            cls, make = module.PoolManager, _make_manager_urlopen
        else:
            cls, make = module.HTTPConnectionPool, _make_urlopen
        urlopen = cls.urlopen
        if module.__name__ in self._originals or hasattr(urlopen, "__llmtally_original__"):
            return
        cls.urlopen = make(urlopen, self._taps)
        self._originals[module.__name__] = (cls, urlopen)

    def unpatch(self) -> None:
        for cls, urlopen in self._originals.values():
            cls.urlopen = urlopen
        self._originals.clear()
