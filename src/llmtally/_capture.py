"""Capture at the HTTP client: one hook on ``send`` of httpx and httpx2, sync and async.

The current openai and anthropic SDKs (and so LangChain's ChatOpenAI and ChatAnthropic) send every
request through ``httpx2.Client.send`` / ``AsyncClient.send``; many other SDKs use ``httpx``.
Hooking ``send`` meters all of them from the wire format alone, without depending on SDK internals.

The hook never changes what the caller gets: the request goes out as it came, the response object
is the one the client built, and a streamed body reaches the caller chunk for chunk. A streamed
response's byte stream is wrapped by a tap that decodes SSE events as the caller reads them; the
call is over when the stream ends or is closed. A finished call is only queued here (``_Meter._queue``)
and settled later, off the call path (see ``_scope.flush``). Anything that goes wrong inside llmtally
is logged and swallowed; errors of the call itself propagate untouched, and so does
``BudgetExceeded`` when a scope's limit refuses a request before it is sent (``_budget``).

Patching is idempotent and reversible. A client module imported after ``instrument()`` is patched
on import by a meta-path hook, so ``import llmtally`` never has to import httpx itself.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import zlib
from decimal import Decimal
from typing import Any

from . import _scope, wire
from ._pricing import price_usage
from ._usage import Call, Usage

__all__ = ["add_sink", "ensure_instrumented", "instrument", "is_instrumented", "remove_sink", "uninstrument"]

log = logging.getLogger("llmtally")

_MODULES = ("httpx", "httpx2")
_lock = threading.RLock()
# module name -> (module, sync send, async send, Response.json)
_patched: dict[str, tuple[Any, Any, Any, Any]] = {}
_instrumented = False
_finder: _PatchOnImport | None = None

#: Callables that receive every settled Call (the ledger and OpenTelemetry sinks register here).
_sinks: list[Any] = []

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
_JSON_START = re.compile(rb"\s*[{\[]")
_ZERO = Decimal(0)


def add_sink(sink: Any) -> None:
    """Send every settled ``Call`` to ``sink(call)``, whether or not a scope is open."""
    with _lock:
        if sink not in _sinks:
            _sinks.append(sink)
    ensure_instrumented()


def remove_sink(sink: Any) -> None:
    with _lock:
        if sink in _sinks:
            _sinks.remove(sink)


# ---------------------------------------------------------------------------------------------
# One metered request
# ---------------------------------------------------------------------------------------------


class _Meter:
    """The state of one request from ``send`` until its call is settled."""

    # Defaults live on the class: a metered call sets only the few fields it uses.
    status: int | None = None
    kind = ""
    content: bytes | None = None
    parsed: dict[str, Any] | None = None
    _response: Any = None
    result: wire.Result | None = None
    stream = False
    end = 0.0
    _stream: wire.StreamParser | None = None
    _sse: Any = None
    _decoder: Any = None
    broken = False
    done = False
    error: str | None = None
    span: Any = None
    #: Shared-budget reservations of this request: [((name, store, period), amount)], see _budget.
    reservations: Any = None

    def __init__(self, parser: wire.Parser, request: Any, host: str, scopes: tuple[Any, ...]) -> None:
        self.parser = parser
        self.request = request
        self.host = host
        self.scopes = scopes
        self.perf = time.perf_counter()

    # -- outcomes ------------------------------------------------------------------------------
    def failed(self, exc: BaseException) -> None:
        """The request raised before any response (connection error, timeout, cancellation)."""
        self.error = f"{type(exc).__name__}: {exc}"[:300]
        self._queue("error")

    def interrupted(self, exc: BaseException) -> None:
        """The connection failed mid-stream: a failed request, but the tokens generated so far
        were produced (and are billed), so its partial usage and cost are kept."""
        try:
            self.error = f"stream interrupted: {type(exc).__name__}: {exc}"[:300]
            self.finish()
        except Exception:
            log.exception("llmtally: could not record an interrupted stream")

    def response(self, response: Any, read: bool) -> None:
        """The client returned ``response``; ``read`` tells whether its body is already in memory."""
        self.status = status = response.status_code
        if status >= 400:
            # Errors cost nothing; the body is the caller's to read, untouched.
            self.error = f"HTTP {status}"
            self._queue("error")
            return
        if read:
            content = response.content
            # A JSON body needs no header lookup (httpx's Headers.get is not cheap).
            if content[:1] != b"{" and _JSON_START.match(content) is None and _is_sse(response):
                self._begin_stream()
                self._feed_decoded(content)
                self.finish()
            else:
                self._body(content, response)
            return
        sse = _is_sse(response)
        encoding = response.headers.get("content-encoding", "").lower().strip()
        inflate = _decoder(encoding) if encoding and encoding != "identity" else None
        if sse:
            self._begin_stream()
            self._decoder = inflate
        else:
            self._decoder = _Collect(inflate)
        # Swap the body stream for a tap; the caller reads the very same bytes through it.
        response.stream = _tap_for(response.stream, self)

    # -- bodies --------------------------------------------------------------------------------
    def _body(self, content: bytes, response: Any = None) -> None:
        # Only keep a reference here: the body is parsed when the call is settled (flush()),
        # unless the SDK parses it first (_make_json).
        self.content = content
        if response is not None:
            self._response = response
            _awaiting_json[id(response)] = self
        self._queue("body")

    def _parse_body(self) -> wire.Result | None:
        content, self.content = self.content or b"", None
        if self._response is not None:
            _awaiting_json.pop(id(self._response), None)
            self._response = None
        parsed, self.parsed = self.parsed, None
        if parsed is not None:
            result = self.parser.body(parsed)
            # A caller who edited the dict it got from json() cannot hide the usage: the bytes
            # the server sent are still here.
            if result is not None and result.usage is not None:
                return result
        fast = self.parser.fast_body(content)
        if fast is not None:
            return fast
        obj = wire.loads(content)
        if obj is None:
            log.warning(
                "llmtally: the response of POST %s%s is not %s JSON; counted without usage",
                self.host,
                self.request.url.path,
                self.parser.endpoint,
            )
            return wire.Result()
        # None: same path, another API (an OpenAI thread message, say): not a model call.
        return self.parser.body(obj)

    # -- streams -------------------------------------------------------------------------------
    def _begin_stream(self) -> None:
        from ._sse import SSEDecoder

        try:
            request = self.request.content
        except Exception:  # a streamed request body: nothing to learn from it
            request = b""
        self._stream = self.parser.stream(request)
        self._sse = SSEDecoder()

    def feed(self, chunk: bytes) -> None:
        """One raw chunk as the caller reads it."""
        if self.broken or self.done:
            return
        try:
            decoder = self._decoder
            if decoder is not None:
                chunk = decoder.decompress(chunk)
                if self._stream is None:
                    return
            self._feed_decoded(chunk)
        except Exception as exc:
            self.broken = True
            log.warning(
                "llmtally: could not read the stream of POST %s%s (%s: %s); counting it from what was read",
                self.host,
                self.request.url.path,
                type(exc).__name__,
                exc,
            )

    def _feed_decoded(self, chunk: bytes) -> None:
        stream = self._stream
        for name, data in self._sse.feed(chunk):
            stream.event(name, data)  # type: ignore[union-attr]

    def finish(self) -> None:
        """The stream ended or was closed: settle with what it carried."""
        if self.done:
            return
        try:
            if isinstance(self._decoder, _Collect):
                self._body(self._decoder.body())
                return
            if self._stream is not None and not self.broken:
                for name, data in self._sse.close():
                    self._stream.event(name, data)
            self.result = self._stream.result if self._stream is not None else wire.Result()
            self.stream = True
            self._queue("result")
        except Exception:
            log.exception("llmtally: failed to settle a streamed call")
            self.done = True

    # -- settle --------------------------------------------------------------------------------
    def _queue(self, kind: str) -> None:
        """The call is over: queue it for ``flush()`` (see ``_scope``), on the call path."""
        if self.done:
            return
        self.done = True
        self.end = time.perf_counter()
        self.kind = kind
        pending = _scope.pending
        pending.append(self)
        # A span must get its attributes before the caller ends it: settle now.
        if self.span is not None or self.reservations or _eager or len(pending) >= _scope.FLUSH_AT:
            _scope.flush()

    def settle(self) -> None:
        """Parse, price and record the call; run by ``flush()``, never raises."""
        try:
            self._settle()
        except Exception:
            log.exception("llmtally: failed to settle a call")

    def _settle(self) -> None:
        kind = self.kind
        if kind == "body":
            result = self._parse_body()
            if result is None:
                self.request = None
                return
        elif kind == "result":
            result = self.result
            self.result = None
        else:
            result = None
        error = self.error
        stream = kind == "result"
        latency = self.end - self.perf
        started = time.time() - (time.perf_counter() - self.perf)
        requested = self._requested_model()
        hint, api_url = _host_info(self.host)
        call = Call(hint or self.parser.provider, self.parser.endpoint, None)
        call.requested_model = requested
        call.status = self.status
        call.stream = stream
        call.started_at = started
        call.latency = latency
        call.url_host = self.host
        if self.span is not None:
            call.span, self.span = self.span, None
        call.scope_path = tuple([t.name or "" for t in self.scopes])
        for tally in self.scopes:
            if tally.tags:  # inner scopes' tags win
                call.tags = {**call.tags, **tally.tags}
        if result is None:
            call.ok = False
            call.error = error
            call.cost = _ZERO
            call.model = requested
        else:
            call.model = result.model or requested
            call.request_id = result.request_id
            usage = result.usage
            if usage is None:
                usage = self._estimate(result, call.model)
                call.estimated = True
            elif self._stream is not None and not self._stream.complete:
                # Closed before the final count (Anthropic's message_delta): the output so far is
                # at least what the caller already received.
                seen = self._output_estimate(result, call.model)
                if seen > usage.completion_tokens:
                    usage.completion_tokens = seen
                    call.estimated = True
            result.text = []
            call.usage = usage
            if error is not None:
                call.ok = False
                call.error = error
            cost, source = price_usage(usage, call.model, hint, api_url, self.parser.provider, started)
            if source is not None:
                call.cost, call.price_source, call.provider = cost, source.source, source.provider_id
        self.request = None  # drop the request (and its prompt) as soon as possible
        if self.reservations:
            self._release(call)
        for tally in self.scopes:
            tally._calls.append(call)  # atomic; totals catch up when the tally is read
        for sink in _sinks:
            try:
                sink(call)
            except Exception:
                log.exception("llmtally: sink %r failed", sink)

    def _release(self, call: Call) -> None:
        """Settle shared-budget reservations: release them, charge the real cost (the reservation
        itself when the cost is unknown, which cannot undercount)."""
        reservations, self.reservations = self.reservations, None
        for (name, store, _), reserved in reservations:
            actual = call.cost if call.cost is not None else (reserved if call.ok else _ZERO)
            try:
                store.settle(name, reserved, actual)
            except Exception:
                log.exception("llmtally: could not settle the shared budget %r", name)

    def _requested_model(self) -> str | None:
        try:
            content = self.request.content
        except Exception:
            return None
        # The SDKs serialise ``model`` after ``messages``: search from the end. A JSON string cannot
        # hold an unescaped quote, so this matches a key, not prompt text.
        at = content.rfind(b'"model"')
        if at < 0:
            return None
        m = _MODEL.match(content, at)
        return m.group(1).decode("utf-8", "replace") if m else None

    def _estimate(self, result: wire.Result, model: str | None) -> Usage:
        from . import _tokens

        prompt = 0
        try:
            obj = wire.loads(self.request.content)
            if obj is not None:
                texts, messages = self.parser.request_text(obj)
                names = _tokens.names_in(obj.get("messages"))
                prompt = _tokens.estimate_chat_input(texts, messages, model, names)
        except Exception:
            log.exception("llmtally: could not estimate the input tokens of a call")
        completion = self._output_estimate(result, model)
        return Usage(prompt, completion)

    def _output_estimate(self, result: wire.Result, model: str | None) -> int:
        from . import _tokens

        if result.text:
            # Count the text as one piece: a word split across deltas is not two words.
            return _tokens.count("".join(result.text), model)
        # A skimmed stream (its text was not parsed): one token per content chunk.
        return getattr(self._stream, "chunks", 0)


_hosts: dict[str, tuple[str | None, str]] = {}


def _host_info(host: str) -> tuple[str | None, str]:
    """(provider id if well known, URL for the catalogue's API patterns), cached per host."""
    info = _hosts.get(host)
    if info is None:
        info = _hosts[host] = (wire.provider_for_host(host), f"https://{host}")
    return info


def _is_sse(response: Any) -> bool:
    return bool(response.headers.get("content-type", "").startswith("text/event-stream"))


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


def _decoder(encoding: str) -> Any:
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise ValueError(f"unsupported content-encoding {encoding!r} on an SSE stream")


# ---------------------------------------------------------------------------------------------
# Stream taps: subclasses of each module's byte-stream base, which Response checks with isinstance
# ---------------------------------------------------------------------------------------------

_tap_classes: dict[Any, tuple[type, type]] = {}


def _tap_classes_for(module: Any) -> tuple[type, type]:
    classes = _tap_classes.get(module)
    if classes is not None:
        return classes

    class SyncTap(module.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, meter: _Meter) -> None:
            self._inner = inner
            self._meter = meter

        def __iter__(self) -> Any:
            meter = self._meter
            try:
                for chunk in self._inner:
                    meter.feed(chunk)
                    yield chunk
            except Exception as exc:
                meter.interrupted(exc)
                raise
            meter.finish()

        def close(self) -> None:
            try:
                self._inner.close()
            finally:
                self._meter.finish()

        def __getattr__(self, name: str) -> Any:  # elapsed, and whatever else the client reads
            return getattr(self._inner, name)

    class AsyncTap(module.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, meter: _Meter) -> None:
            self._inner = inner
            self._meter = meter

        async def __aiter__(self) -> Any:
            meter = self._meter
            try:
                async for chunk in self._inner:
                    meter.feed(chunk)
                    yield chunk
            except Exception as exc:
                meter.interrupted(exc)
                raise
            meter.finish()

        async def aclose(self) -> None:
            try:
                await self._inner.aclose()
            finally:
                self._meter.finish()

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    classes = _tap_classes[module] = (SyncTap, AsyncTap)
    return classes


def _tap_for(stream: Any, meter: _Meter) -> Any:
    for module, *_ in _patched.values():
        sync_tap, async_tap = _tap_classes_for(module)
        if isinstance(stream, module.SyncByteStream):
            return sync_tap(stream, meter)
        if isinstance(stream, module.AsyncByteStream):
            return async_tap(stream, meter)
    raise TypeError(f"unknown response stream type {type(stream).__name__}")


# ---------------------------------------------------------------------------------------------
# The hooks
# ---------------------------------------------------------------------------------------------


_routes: dict[str, wire.Parser | None] = {}


def _limited(scopes: tuple[Any, ...]) -> bool:
    for tally in scopes:
        if tally._limits is not None:
            return True
    return False


def _budget_check(scopes: tuple[Any, ...], meter: _Meter) -> None:
    from ._budget import BudgetExceeded, check

    try:
        check(scopes, meter.parser, meter.request, meter)
    except BudgetExceeded:
        raise
    except Exception:
        log.exception("llmtally: could not check the budget; the request is sent")


#: opentelemetry.trace.get_current_span while OpenTelemetry export is on (see ledger/otel.py).
_otel_spans: Any = None
#: Settle each call as it ends (OpenTelemetry export wants its metrics now, not on the next read).
_eager = False


def _begin(request: Any, scopes: tuple[Any, ...]) -> _Meter | None:
    try:
        url = request.url
        path = url.path
        try:
            parser = _routes[path]
        except KeyError:
            parser = wire.route("POST", path)
            if len(_routes) < 4096:
                _routes[path] = parser
        if parser is None or request.method != "POST":
            return None
        meter = _Meter(parser, request, url.host, scopes)
        if _otel_spans is not None:
            span = _otel_spans()
            if span.is_recording():
                meter.span = span
        return meter
    except Exception:
        log.exception("llmtally: could not inspect a request; it is sent unmetered")
        return None


def _after(meter: _Meter, response: Any, kwargs: dict[str, Any]) -> None:
    try:
        meter.response(response, not kwargs.get("stream", False))
    except Exception:
        log.exception("llmtally: could not meter a response; the caller gets it untouched")


def _failed(meter: _Meter, exc: BaseException) -> None:
    try:
        meter.failed(exc)
    except Exception:
        log.exception("llmtally: could not record a failed request")


def _make_sync(orig: Any) -> Any:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        scopes = _scope._scopes.get()
        if not scopes and not _sinks:
            return orig(self, request, *args, **kwargs)
        meter = _begin(request, scopes)
        if meter is None:
            return orig(self, request, *args, **kwargs)
        if _limited(scopes):
            _budget_check(scopes, meter)  # may raise BudgetExceeded: the request is not sent
        try:
            response = orig(self, request, *args, **kwargs)
        except BaseException as exc:
            _failed(meter, exc)
            raise
        _after(meter, response, kwargs)
        return response

    send.__llmtally_original__ = orig  # type: ignore[attr-defined]
    send.__wrapped__ = orig  # type: ignore[attr-defined]
    return send


def _make_async(orig: Any) -> Any:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        scopes = _scope._scopes.get()
        if not scopes and not _sinks:
            return await orig(self, request, *args, **kwargs)
        meter = _begin(request, scopes)
        if meter is None:
            return await orig(self, request, *args, **kwargs)
        if _limited(scopes):
            _budget_check(scopes, meter)  # may raise BudgetExceeded: the request is not sent
        try:
            response = await orig(self, request, *args, **kwargs)
        except BaseException as exc:
            _failed(meter, exc)
            raise
        _after(meter, response, kwargs)
        return response

    send.__llmtally_original__ = orig  # type: ignore[attr-defined]
    send.__wrapped__ = orig  # type: ignore[attr-defined]
    return send


#: id(response) -> the meter of a metered JSON response the client has not parsed yet. The meter
#: keeps the response alive until it settles, so the id cannot be reused meanwhile.
_awaiting_json: dict[int, _Meter] = {}


def _make_json(orig: Any) -> Any:
    def json(self: Any, **kwargs: Any) -> Any:
        obj = orig(self, **kwargs)
        if _awaiting_json:
            meter = _awaiting_json.pop(id(self), None)
            if meter is not None and not kwargs and type(obj) is dict:
                # The SDK has just decoded the body: settle from its dict instead of decoding it
                # again. It is only read, later, and the SDK builds its models without changing it.
                meter.parsed = obj
        return obj

    json.__llmtally_original__ = orig  # type: ignore[attr-defined]
    json.__wrapped__ = orig  # type: ignore[attr-defined]
    return json


def _patch_module(module: Any) -> None:
    with _lock:
        if any(p[0] is module for p in _patched.values()):
            return  # httpx2.alias_httpx() makes both names one module
        sync_send = module.Client.send
        async_send = module.AsyncClient.send
        if hasattr(sync_send, "__llmtally_original__"):
            return
        json_method = module.Response.json
        module.Client.send = _make_sync(sync_send)
        module.AsyncClient.send = _make_async(async_send)
        module.Response.json = _make_json(json_method)
        _patched[module.__name__] = (module, sync_send, async_send, json_method)


class _PatchOnImport:  # a meta-path finder; importlib.abc would cost 25 ms of import time
    """Patches httpx / httpx2 right after they are imported, for SDKs imported after instrument()."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MODULES:
            return None
        # Let the normal finders find it, then wrap the loader's exec_module.
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader = spec.loader
                exec_module = loader.exec_module

                def exec_and_patch(module: Any, _exec: Any = exec_module) -> None:
                    _exec(module)
                    try:
                        if _instrumented:
                            _patch_module(module)
                    except Exception:
                        log.exception("llmtally: could not instrument %s", fullname)

                spec.loader = _LoaderProxy(loader, exec_and_patch)  # type: ignore[assignment]
                return spec
        return None


class _LoaderProxy:
    def __init__(self, loader: Any, exec_module: Any) -> None:
        self._loader = loader
        self._exec = exec_module

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._exec(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def instrument() -> None:
    """Hook the HTTP clients (httpx, httpx2; sync and async) so LLM calls are metered.

    Idempotent; the first ``track()`` calls it. Undo with ``uninstrument()``.
    """
    global _instrumented, _finder
    with _lock:
        if _instrumented:
            return
        from ._pricing import warm
        from ._threads import patch_threads

        _instrumented = True
        _scope._state.instrumented = True
        for name in _MODULES:
            module = sys.modules.get(name)
            if module is not None:
                _patch_module(module)
        if _finder is None:
            _finder = _PatchOnImport()
            sys.meta_path.insert(0, _finder)
        patch_threads()
        warm()
    from ._config import configure_from_env

    configure_from_env()


def ensure_instrumented() -> None:
    if not _instrumented:
        instrument()


def is_instrumented() -> bool:
    return _instrumented


def uninstrument() -> None:
    """Remove every hook ``instrument()`` installed; clients behave exactly as before."""
    global _instrumented, _finder
    with _lock:
        from ._threads import unpatch_threads

        for module, sync_send, async_send, json_method in _patched.values():
            module.Client.send = sync_send
            module.AsyncClient.send = async_send
            module.Response.json = json_method
        _patched.clear()
        if _finder is not None and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
        _finder = None
        unpatch_threads()
        _instrumented = False
        _scope._state.instrumented = False
