"""One LLM request from ``send`` until it is queued: the transport-neutral exchange.

Every HTTP client adapter (``_capture/httpx.py``, ...) turns its own request, response and byte
stream into calls on an ``Exchange``:

- ``begin()`` before the request is sent: is it an LLM call (a POST to a known wire format), and
  which scopes does it count in; then ``check_limits()``, which may refuse it;
- one outcome: ``failed()`` (no response), ``body()`` (a whole body in memory), or ``streaming()``
  (a body the caller will read: the adapter wraps its stream in a tap that calls ``feed()`` for
  every chunk and ``finish()`` / ``interrupted()`` at the end);
- ``json()`` when the SDK has decoded the body itself, so settlement reads its dict instead of
  decoding the bytes again.

Nothing is parsed or priced here: the exchange only keeps what it saw and, once the call is over,
queues itself on the pipeline; ``settle()`` (``_capture/settle.py``) does the rest off the call path.
Every method is called on the caller's thread inside the caller's request, so each is guarded by
the adapter: a failure here is logged and the caller gets exactly what the server sent.
"""

from __future__ import annotations

import logging
import os
import re
import time
import weakref
import zlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .. import wire
from .._core import gateways
from .._core.pipeline import FLUSH_AT, PIPELINE
from .._core.scope import _suppressed
from .._limits import BudgetExceeded, check, unreserve
from .codings import UNDECODABLE, UNREAD, decoder
from .settle import settle
from .state import State

if TYPE_CHECKING:
    from decimal import Decimal

    from .._core.tally import Tally
    from .._limits import Shared

__all__ = ["Exchange", "State", "begin", "outer", "request_bytes"]

log = logging.getLogger("llmtally")

_JSON_START = re.compile(rb"\s*[{\[]")
#: A body that is server-sent events whatever its content type says (a proxy that drops it).
_SSE_START = re.compile(rb"\s*(?:event:|data:|id:|retry:|:)")
_ASKED_STREAM = re.compile(rb'"stream"\s*:\s*true')
#: A URL's query string in an error message (urllib3's and requests' name the URL): where Gemini,
#: signed URLs and some gateways put keys, so it never reaches a log or the ledger.
_QUERY = re.compile(r"\?[^\s'\"<>()]*=[^\s'\"<>()]*")
#: Set while an adapter sends a request it meters: clients stack (requests and botocore run on
#: urllib3, an httpx transport may run on aiohttp), and a call is counted once, at the outermost
#: seam, so the seams below it pass the request through.
outer: ContextVar[bool] = ContextVar("llmtally_outer_seam", default=False)
#: path -> its wire parser (None: not an LLM endpoint), for the last few thousand paths seen.
_routes: dict[str, wire.Parser | None] = {}


#: The states in which the call is over and queued (a tuple: ``in`` compares by identity first,
#: where a set would call Enum's Python-level __hash__).
_OVER = (State.BODY, State.STREAMED, State.FAILED, State.SETTLED)


def request_bytes(body: object) -> bytes | None:
    """A request body as the adapters get it, as bytes: text encoded, bytes as they are, ``None``
    for a form, a file or a generator (streamed: nothing to learn from it)."""
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    return None


def begin(
    method: str, path: str, host: str, request_body: bytes | None, scopes: tuple[Tally, ...]
) -> Exchange | None:
    """An exchange for a request about to be sent, or ``None`` if it is not a metered LLM call.

    ``request_body`` is the request's bytes (``None`` if the client streams it); it is kept until
    settlement, for the requested model and offline estimates, and then dropped.
    """
    if method != "POST" or _suppressed.get() is not None or outer.get():
        return None
    try:
        parser = _routes[path]
    except KeyError:
        parser = wire.route("POST", path)
        if len(_routes) < 4096:
            _routes[path] = parser
    if parser is None:
        _not_understood(host, path)
        return None
    return Exchange(parser, host, path, request_body, scopes)


#: (host, path) -> whether a POST there looks like an LLM call that no wire format reads.
_unread: dict[tuple[str, str], bool] = {}
#: Every such POST, at DEBUG, for `llmtally.testing.unmetered()` (the warning is said only once).
_unmetered_log = logging.getLogger("llmtally.unmetered")


def parser_for(method: str, path: str) -> wire.Parser | None:
    """The wire format that reads a request's answer, or ``None`` (looked up once per path)."""
    if method != "POST":
        return None
    try:
        return _routes[path]
    except KeyError:
        parser = wire.route("POST", path)
        if len(_routes) < 4096:
            _routes[path] = parser
        return parser


def _not_understood(host: str, path: str) -> None:
    """Say once per (host, path) that a POST that looks like an LLM call is not counted: never
    silently. The path never holds the query string, where Gemini puts its API key."""
    try:
        key = (host, path)
        llm = _unread.get(key)
        if llm is None:
            llm = wire.looks_like_llm(host, path)
            if len(_unread) < 4096:
                _unread[key] = llm
            if llm:
                log.warning(
                    "llmtally: POST %s%s looks like an LLM API call, but no wire format llmtally knows "
                    "reads it: it is not counted (this is said once for this host and path)",
                    host,
                    path,
                )
        if llm and _unmetered_log.isEnabledFor(logging.DEBUG):
            _unmetered_log.debug(
                "llmtally: POST %s%s not counted", host, path, extra={"llmtally_unmetered": key}
            )
    except Exception:  # pragma: no cover - a message must never break the call
        log.exception("llmtally: could not inspect a request's path")


def end_when_collected(response: Any, ex: Exchange) -> None:
    """A streamed response the caller drops without reading or closing it was still sent and
    billed: when it is collected, its call ends (counted from what was read, reservations settled)."""
    try:
        weakref.finalize(response, collected, ex).atexit = False
    except TypeError:  # a response type without weak references: ended by its reader only
        pass


#: Exchanges whose bodies are being read (streams, and bodies read after the response returned).
_live: dict[int, Exchange] = {}
#: This process's id, kept current across forks (read on every call: cheaper than os.getpid()).
_pid = [os.getpid()]


def _forked() -> None:
    _live.clear()  # a child's copies are the parent's to end
    _pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def end_streams() -> None:
    """At exit: every body still being read ends here, counted from what was read, so its call is
    recorded and its budget reservation settled (the caller will read no more of it)."""
    for ex in list(_live.values()):
        try:
            ex.finish(flush=False)
        except Exception:
            log.exception("llmtally: could not end the metering of a stream at exit")
    _live.clear()


def collected(ex: Exchange) -> None:
    """The response of ``ex`` was garbage-collected: end its call, but only queue it. The collector
    runs wherever an allocation happens to trigger it, possibly inside a ledger or budget store's
    lock: settling (which may write to that store) waits for the next flush, a safe point. In a
    forked child, a copy of the parent's response is the parent's to count."""
    try:
        if ex.pid == _pid[0]:
            ex.finish(flush=False)
    except Exception:
        log.exception("llmtally: could not end the metering of a dropped response")


class Exchange:
    """The call-path state of one request (see the module docstring)."""

    __slots__ = (
        "_awaiting",
        "_decoder",
        "_request_body",
        "_sse",
        "content",
        "end",
        "error",
        "gateway",
        "headers",
        "host",
        "parsed",
        "parser",
        "path",
        "pid",
        "reservations",
        "scopes",
        "span",
        "start",
        "state",
        "status",
        "stream_parser",
    )

    def __init__(
        self, parser: wire.Parser, host: str, path: str, request_body: Any, scopes: tuple[Tally, ...]
    ) -> None:
        self.parser = parser
        self.host = host
        self.path = path
        self._request_body = request_body
        self.scopes = scopes
        self.pid = _pid[0]
        #: The provider configured for this URL when the request was made (``configure(providers=)``).
        self.gateway = gateways.provider_for(host, path) if gateways.configured() else None
        self.state = State.SENDING
        self.status: int | None = None
        self.content: bytes | None = None
        self.parsed: dict[str, Any] | None = None
        self.stream_parser: wire.StreamParser | None = None
        self.error: str | None = None
        #: The response headers the wire format reads (``Parser.headers``), if it reads any.
        self.headers: dict[str, str] | None = None
        #: Shared-budget reservations made for this request (``_limits``), settled with the call.
        self.reservations: list[tuple[Shared, Decimal]] | None = None
        self._awaiting: Any = None
        self._decoder: Any = None
        self._sse: Any = None
        getter = PIPELINE.span_getter
        #: The OpenTelemetry span current now (with OTel export on): the parent of the call's own.
        self.span = getter() if getter is not None else None
        self.end = 0.0
        self.start = time.perf_counter()

    # -- the request -----------------------------------------------------------------------------
    def request_body(self) -> bytes:
        """The request's bytes as sent (``b""`` if unknown: a streamed upload)."""
        body = self._request_body
        return body if type(body) is bytes else b""

    def _sse_by_content(self, content: bytes) -> bool:
        """Server-sent events by their content, when the request asked for a stream: some proxies
        serve them as ``application/json`` or ``text/plain``."""
        return _SSE_START.match(content) is not None and _ASKED_STREAM.search(self.request_body()) is not None

    def check_limits(self) -> None:
        """Refuse the request if a limit of an enclosing scope says so (raises ``BudgetExceeded``)."""
        for tally in self.scopes:
            if tally._limits is not None:
                break
        else:
            return
        try:
            check(self.scopes, self)
        except BudgetExceeded:
            raise
        except Exception:
            log.exception("llmtally: could not check the limits; the request is sent")

    # -- outcomes ----------------------------------------------------------------------------------
    def note_headers(self, get: Any) -> None:
        """Keep the response headers the wire format reads (Bedrock's token counts); ``get`` is the
        response's case-insensitive header lookup. Adapters call it only if ``parser.headers``."""
        try:
            kept = {}
            for name in self.parser.headers:
                value = get(name)
                if value is not None:
                    kept[name] = str(value)
            self.headers = kept
        except Exception:
            log.exception("llmtally: could not read the headers of a response")

    def failed(self, exc: BaseException) -> None:
        """The request raised before any response (connection error, timeout, cancellation).

        Never raises: an adapter calls it on its way to re-raising the caller's exception."""
        try:
            self.error = _QUERY.sub("?***", f"{type(exc).__name__}: {exc}")[:300]
            self._queue(State.FAILED)
        except Exception:
            log.exception("llmtally: could not record a failed request")

    def body(
        self,
        status: int,
        content: bytes,
        content_type: str,
        awaiting: Any = None,
        undone: Any = None,
        of: Any = None,
    ) -> None:
        """The whole response body is in memory.

        ``awaiting`` is ``(table, key)`` when the adapter will pass the SDK's decoded JSON to
        ``json()``: the exchange is filed under ``key`` until then, and removed at settlement.
        ``undone(of)`` says which Content-Encoding the client left undone on it (one it has no
        decoder for, or ``""``); it is asked only of a body that is not JSON, so JSON costs nothing.
        """
        self.status = status
        if status >= 300:
            self._unanswered(status)
            return
        # A JSON body needs no header lookup: most answers are JSON objects.
        if content[:1] != b"{" and _JSON_START.match(content) is None:
            if undone is not None:
                encoding = undone(of)
                if encoding:
                    self._encoded_body(status, content, content_type, awaiting, encoding)
                    return
            framing = self._framing(content_type)
            if framing is None and self._sse_by_content(content):
                framing = wire.SSEDecoder()
            if framing is not None:  # a stream read whole (SSE, an AWS event stream)
                self._begin_stream(framing)
                self._feed_decoded(content)
                self.finish()
                return
        self.content = content
        if awaiting is not None:
            table, key = awaiting
            table[key] = self
            self._awaiting = awaiting
        self._queue(State.BODY)

    def _encoded_body(
        self, status: int, content: bytes, content_type: str, awaiting: Any, encoding: str
    ) -> None:
        coding = encoding.lower().strip()
        decoded: bytes | None = content
        try:
            inflate = _inflater(coding) if coding and coding != "identity" else None
            if inflate is UNDECODABLE:
                decoded = None  # said once by the decoder: counted from the request
            elif inflate is not None:
                decoded = bytes(inflate.decompress(content))
        except Exception as exc:
            log.warning(
                "llmtally: could not decode the %.40r body of POST %s%s (%s: %s); counted as an estimate",
                coding,
                self.host,
                self.path,
                type(exc).__name__,
                exc,
            )
            decoded = None
        if decoded is None:
            self.content = UNREAD
            self._queue(State.BODY)
            return
        self.body(status, decoded, content_type, awaiting)

    def json(self, obj: dict[str, Any]) -> None:
        """The SDK decoded the body into ``obj``; settlement reads it instead of the bytes."""
        self.parsed = obj
        self._awaiting = None  # the adapter has taken it off its table

    def streaming(self, status: int, content_type: str, encoding: str) -> bool:
        """The caller will read the body in chunks; ``True`` if the adapter must tap the stream."""
        self.status = status
        if status >= 300:
            self._unanswered(status)
            return False
        encoding = encoding.lower().strip()
        framing = self._framing(content_type)
        if encoding and encoding != "identity":
            inflate = _inflater(encoding)
            if framing is not None:
                self._begin_stream(framing)
                self._decoder = inflate
            else:
                self._decoder = _Collect(inflate) if inflate is not UNDECODABLE else _Undecoded(None)
                self.state = State.COLLECTING
        elif framing is not None:
            self._begin_stream(framing)
        else:
            self._decoder = _Collect(None)
            self.state = State.COLLECTING
        _live[id(self)] = self  # ended by its reader, its collection, or the exit (end_streams)
        return True

    def use_encoding(self, encoding: str) -> None:
        """Before the first chunk is fed: the caller reads the body ``encoding``-encoded after all
        (raw bytes of a gzip body, say), so the exchange inflates it itself, or no longer does."""
        encoding = encoding.lower().strip()
        inflate = _inflater(encoding) if encoding and encoding != "identity" else None
        if self.state is State.STREAMING:
            self._decoder = inflate
        elif self.state is State.COLLECTING:
            self._decoder = _Collect(inflate) if inflate is not UNDECODABLE else _Undecoded(None)

    def _unanswered(self, status: int) -> None:
        if status < 400:
            # A redirect: the model has not answered yet (the client follows it, or the caller
            # does, with a request of its own). Nothing to count; reservations go back.
            self.state = State.SETTLED
            if self.reservations:
                reservations, self.reservations = self.reservations, None
                unreserve(reservations)
            return
        # Errors cost nothing; the body is the caller's to read, untouched.
        self.error = f"HTTP {status}"
        self._queue(State.FAILED)

    # -- streams ---------------------------------------------------------------------------------
    def _framing(self, content_type: str) -> Any:
        """The decoder of a streamed body's framing, or ``None`` for a body to read whole."""
        if _is_sse(content_type):
            return wire.SSEDecoder()
        parser = self.parser
        if parser.ndjson and content_type.startswith("application/x-ndjson"):
            return wire.NDJSONDecoder()  # Ollama: one JSON object per line
        if parser.eventstream and content_type.startswith("application/vnd.amazon.eventstream"):
            return wire.EventStreamDecoder()  # Bedrock: AWS's binary event-stream frames
        return None

    def _begin_stream(self, framing: Any) -> None:
        wire.bad_count()  # forget what a parse before this stream left noted on this thread
        self.stream_parser = self.parser.stream(self.request_body())
        self._sse = framing
        self.state = State.STREAMING

    def feed(self, chunk: bytes) -> None:
        """One raw chunk as the caller reads it."""
        if self.state is not State.STREAMING and self.state is not State.COLLECTING:
            return
        try:
            decoder = self._decoder
            if decoder is not None:
                chunk = decoder.decompress(chunk)
                if self.stream_parser is None:
                    return
            self._feed_decoded(chunk)
            bad = wire.bad_count()
            if bad is not wire.NOTHING:
                self._bad(bad)
        except Exception as exc:
            log.warning(
                "llmtally: could not read the stream of POST %s%s (%s: %s); counting it from what was read",
                self.host,
                self.path,
                type(exc).__name__,
                exc,
            )
            self._decoder = None
            self._queue(State.STREAMED)

    def _bad(self, value: Any) -> None:
        """A usage value in the stream that is no token count: its usage will be counted offline."""
        stream = self.stream_parser
        if stream is not None and stream.result.bad is wire.NOTHING:
            stream.result.bad = value

    def _feed_decoded(self, chunk: bytes) -> None:
        stream = self.stream_parser
        assert stream is not None
        for name, data in self._sse.feed(chunk):
            stream.event(name, data)

    def finish(self, flush: bool = True) -> None:
        """The stream ended or was closed: queue the call with what it carried (settled now if
        something needs it now, unless ``flush`` is false: see `collected`). Never raises: it runs
        inside the caller's read, close or release."""
        try:
            self._finish(flush)
        except Exception:
            log.exception("llmtally: could not end the metering of a stream; the caller's read is untouched")

    def _finish(self, flush: bool) -> None:
        state = self.state
        if state is State.COLLECTING:
            whole = self._decoder
            self._decoder = None
            content = whole.body()
            if not self._sse_by_content(content):
                self.content = content
                self._queue(State.BODY, flush)
                return
            self._begin_stream(wire.SSEDecoder())  # a stream served under another content type
            state = self.state
            try:
                self._feed_decoded(content)
            except Exception:
                log.exception("llmtally: could not read a stream; counting it from what was read")
        if state is not State.STREAMING:
            return
        try:
            for name, data in self._sse.close():
                self.stream_parser.event(name, data)  # type: ignore[union-attr]
            bad = wire.bad_count()
            if bad is not wire.NOTHING:
                self._bad(bad)
        except Exception:
            log.exception("llmtally: could not read the end of a stream; counting it from what was read")
        self._queue(State.STREAMED, flush)

    def interrupted(self, exc: BaseException) -> None:
        """The connection failed mid-stream: a failed request, but the tokens generated so far
        were produced (and are billed), so its partial usage and cost are kept."""
        if self.state in _OVER:
            return
        try:
            self.error = _QUERY.sub("?***", f"stream interrupted: {type(exc).__name__}: {exc}")[:300]
        except Exception:  # an exception whose str() fails: its type is enough
            self.error = f"stream interrupted: {type(exc).__name__}"
        self.finish()
        if self.state is State.SENDING:  # pragma: no cover - a tap exists only once streaming
            self._queue(State.FAILED)

    # -- queued ----------------------------------------------------------------------------------
    def _queue(self, state: State, flush: bool = True) -> None:
        """The call is over: queue it for settlement (``pipeline.flush``)."""
        if self.state in _OVER:
            return
        self.state = state
        self.end = time.perf_counter()
        if _live:
            _live.pop(id(self), None)
        pending = PIPELINE.pending
        pending.append(self)
        # A reservation must be released; a sink may want the call now; and the queue must stay
        # bounded.
        if flush and (self.reservations or PIPELINE.eager or len(pending) >= FLUSH_AT):
            PIPELINE.flush()

    #: Parse, price and deliver the call; run by ``pipeline.flush()``, never raises.
    settle = settle

    def forget_awaiting(self) -> None:
        awaiting, self._awaiting = self._awaiting, None
        if awaiting is not None:
            table, key = awaiting
            if table.get(key) is self:
                del table[key]


def _is_sse(content_type: str) -> bool:
    return content_type.startswith("text/event-stream")


class _Collect:
    """A streamed JSON body (``stream=True`` without SSE): kept whole, as the SDK keeps it, then parsed."""

    __slots__ = ("inflate", "parts", "size")
    LIMIT = 64 * 1024 * 1024

    def __init__(self, inflate: Any) -> None:
        self.inflate = inflate
        self.parts: list[bytes] = []
        self.size = 0

    def decompress(self, chunk: bytes) -> bytes:
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        self.size += len(chunk)
        if self.size > self.LIMIT:
            raise ValueError(f"a JSON response body over {self.LIMIT} bytes")
        self.parts.append(chunk)
        return chunk

    def body(self) -> bytes:
        return b"".join(self.parts)


class _Undecoded(_Collect):
    """A body in a coding that cannot be read here: nothing kept, and counted from the request."""

    __slots__ = ()

    def decompress(self, chunk: bytes) -> bytes:
        return b""

    def body(self) -> bytes:
        return UNREAD


def _inflater(encoding: str) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    return decoder(encoding, _inflater)


class _Deflate:
    """``Content-Encoding: deflate`` is zlib-wrapped by the standard, and raw deflate from some
    servers (as the HTTP clients accept): the first bytes say which."""

    __slots__ = ("_head", "_inflate")

    def __init__(self) -> None:
        self._inflate: Any = None
        self._head = b""

    def decompress(self, data: bytes) -> bytes:
        if self._inflate is None:
            data = self._head + data
            if len(data) < 2:  # the two header bytes may come split
                self._head = data
                return b""
            zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return bytes(self._inflate.decompress(data))

    def flush(self) -> bytes:
        return b"" if self._inflate is None else bytes(self._inflate.flush())
