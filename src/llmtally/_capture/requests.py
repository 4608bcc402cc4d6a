"""The requests adapter: one hook on ``requests.Session.send``.

``requests.post(...)``, ``Session.post(...)`` and every SDK built on requests end in
``Session.send(prepared_request, stream=...)``. Without ``stream=True`` the body is read before
``send`` returns; with it, the caller reads ``response.raw`` (urllib3's response) through
``iter_content`` / ``iter_lines``, so the adapter puts a tap in its place that feeds each chunk to
the exchange as it is read: decoded by urllib3 for ``iter_content`` / ``iter_lines`` (gzip and
deflate, br and zstd where their libraries are installed), raw for ``response.raw.read()`` and
``raw.stream()`` (requests turns urllib3's decoding off), which the exchange then inflates itself.

``Session.send`` calls itself for each redirect; the ``outer`` seam flag makes those inner calls,
and urllib3 below, pass through: a call is counted once, for the final response.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .._core.pipeline import PIPELINE
from .._core.scope import _scopes
from .exchange import Exchange, begin, end_when_collected, outer, request_bytes
from .urllib3 import undone

__all__ = ["RequestsAdapter"]

log = logging.getLogger("llmtally")


def _begin(request: Any, scopes: Any) -> Exchange | None:
    try:
        url = urlsplit(request.url)
        return begin(request.method or "", url.path, url.hostname or "", request_bytes(request.body), scopes)
    except Exception:
        log.exception("llmtally: could not inspect a request; it is sent unmetered")
        return None


def _respond(ex: Exchange, response: Any, stream: bool) -> None:
    try:
        headers = response.headers
        if ex.parser.headers:  # Bedrock's token counts
            ex.note_headers(headers.get)
        content = getattr(response, "_content", False)
        if not stream or isinstance(content, bytes):
            content = response.content
            if content[:1] == b"{":  # JSON, as most answers are: no header to look up
                ex.body(response.status_code, content, "")
            else:
                ex.body(
                    response.status_code, content, headers.get("content-type", ""), None, _undone, response
                )
            return
        # What requests' readers get is what urllib3 decodes (decode_content=True).
        coding = _coding(headers)
        encoding = undone(response.raw, coding) if coding else ""
        if ex.streaming(response.status_code, headers.get("content-type", ""), encoding):
            response.raw = tap = _RawTap(response.raw, ex, coding)
            end_when_collected(tap, ex)  # a relay may keep only response.raw (or its stream())
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


def _coding(headers: Any) -> str:
    """The Content-Encoding header, from requests' own dict of lowercased names when it has one:
    its ``get`` raises and catches a KeyError when the header is absent (0.4 µs a call)."""
    store = getattr(headers, "_store", None)
    if isinstance(store, dict):
        found = store.get("content-encoding")
        return found[1] if found else ""
    return str(headers.get("content-encoding", ""))


def _undone(response: Any) -> str:
    """What urllib3 left undone on the body requests read: a coding it has no decoder for."""
    return undone(response.raw, response.headers.get("content-encoding", ""))


def _make_send(orig: Any) -> Any:
    def send(self: Any, request: Any, **kwargs: Any) -> Any:
        scopes = _scopes.get()
        if not scopes and not PIPELINE.sinks:
            return orig(self, request, **kwargs)
        ex = _begin(request, scopes)
        if ex is None:
            # Not a call to meter; urllib3 below must not look at it again (nor say so twice).
            seam = outer.set(True)
            try:
                return orig(self, request, **kwargs)
            finally:
                outer.reset(seam)
        ex.check_limits()  # may raise BudgetExceeded: the request is not sent
        seam = outer.set(True)  # redirects (Session.send again) and urllib3 pass it through
        try:
            response = orig(self, request, **kwargs)
        except BaseException as exc:
            ex.failed(exc)
            raise
        finally:
            outer.reset(seam)
        _respond(ex, response, bool(kwargs.get("stream", self.stream)))
        return response

    send.__llmtally_original__ = orig  # type: ignore[attr-defined]
    send.__wrapped__ = orig  # type: ignore[attr-defined]
    return send


class _RawTap:
    """urllib3's response as requests' readers use it, each chunk also fed to the exchange."""

    def __init__(self, raw: Any, ex: Exchange, coding: str) -> None:
        self._raw = raw
        self._ex = ex
        #: The body's Content-Encoding ("" if none: then raw and decoded reads are the same bytes).
        self._coding = coding
        #: Whether the caller reads decoded bytes, once its first read has said so.
        self._decoded: bool | None = None

    def _follow(self, decode_content: bool | None) -> bool:
        """Whether a read of an encoded body is fed: the first read says whether the caller reads it
        raw (``raw.read()``, and ``raw.stream()``: requests turns urllib3's decoding off) or decoded
        (``iter_content``), and the exchange follows it. Reads mixed the other way on one body
        (urllib3 refuses them) are not followed."""
        try:
            if decode_content is None:
                decode_content = getattr(self._raw, "decode_content", False)
            decoded = bool(decode_content)
            if self._decoded is None:
                self._decoded = decoded
                if not decoded:
                    self._ex.use_encoding(self._coding)
                return True
            return decoded == self._decoded
        except Exception:
            log.exception("llmtally: could not meter part of a stream")
            return False

    def stream(self, amt: int | None = 2**16, decode_content: bool | None = None) -> Any:
        ex = self._ex
        try:
            # iter_content reads decoded, as the exchange was told at first.
            follow = decode_content is True or not self._coding or self._follow(decode_content)
            for chunk in self._raw.stream(amt, decode_content=decode_content):
                if follow:
                    ex.feed(chunk)
                yield chunk
        except GeneratorExit:  # the reader stopped early
            ex.finish()
            raise
        except BaseException as exc:
            ex.interrupted(exc)
            raise
        ex.finish()

    def read(self, amt: int | None = None, decode_content: bool | None = None, **kwargs: Any) -> Any:
        try:
            data = self._raw.read(amt, decode_content=decode_content, **kwargs)
        except BaseException as exc:
            self._ex.interrupted(exc)
            raise
        if data and (not self._coding or self._follow(decode_content)):
            self._ex.feed(data)
        if not data or amt is None:  # the end of the body, or all of it at once
            self._ex.finish()
        return data

    def __iter__(self) -> Any:
        return self.stream()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            self._ex.finish()

    def release_conn(self) -> None:
        try:
            self._raw.release_conn()
        finally:
            self._ex.finish()

    def __getattr__(self, name: str) -> Any:  # headers, status, isclosed, ... as urllib3 has them
        return getattr(self._raw, name)


class RequestsAdapter:
    """Patches ``requests.Session.send``."""

    modules: ClassVar[tuple[str, ...]] = ("requests",)

    def __init__(self) -> None:
        self._original: tuple[ModuleType, Any] | None = None

    def patch(self, module: ModuleType) -> None:
        send = module.Session.send
        if self._original is not None or hasattr(send, "__llmtally_original__"):
            return
        module.Session.send = _make_send(send)
        self._original = (module, send)

    def unpatch(self) -> None:
        if self._original is not None:
            module, send = self._original
            module.Session.send = send
            self._original = None
