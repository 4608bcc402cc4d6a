"""Settlement, off the call path: an exchange becomes a priced ``Call`` in its scopes and sinks.

``settle()`` is a pipeline of small steps, each guarded on its own:

1. ``_record``   the call's identity: provider, endpoint, requested model, timing, scopes, tags;
2. ``_read``     the wire format reads the response: served model, usage, request id;
3. ``_count``    a response without usage is counted offline with the model's tokenizer
                 (``estimated``), and a stream cut before its final count is topped up;
4. ``_price``    the usage is priced at the time of the call, by host, wire provider or model;
5. ``_release``  shared-budget reservations made before the request are settled;
6. delivery     the call goes into every scope it was made in and to every sink.

A step that fails is logged and leaves its fields unknown (usage ``None``, cost ``None``): the call
is still counted and recorded, never lost. Only a response that another API sent on the same path
(an OpenAI thread message on ``/messages``) is dropped, as not a model call.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from .. import wire
from .._core.money import ZERO
from .._core.pipeline import PIPELINE
from .._core.usage import Call, Usage
from .._pricing import price_usage
from .state import State

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["settle"]

log = logging.getLogger("llmtally")

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
#: host -> (provider id if well known, URL for the catalogue's API patterns).
_hosts: dict[str, tuple[str | None, str]] = {}
#: scope names of a stack of scopes, by the identity of the innermost scope's frame.
_NOT_A_CALL = wire.Result()


def settle(ex: Exchange) -> None:
    """Parse, price and deliver one exchange; never raises, never loses the call."""
    if ex.state is State.SETTLED:
        return
    try:
        call = _record(ex)
    except Exception:
        log.exception("llmtally: could not record a call; counting it with what is known")
        call = Call(ex.parser.provider, ex.parser.endpoint, None)
    try:
        if ex.state is State.FAILED:
            call.ok = False
            call.error = ex.error
            call.cost = ZERO
        else:
            result = _step(_read, ex, call, "read the response of")
            if result is _NOT_A_CALL:
                ex.state = State.SETTLED
                _step(_release, ex, call, "release the budget reservations of")
                return
            if result is not None:
                _step(_count, ex, call, "count the tokens of", result)
                if call.usage is not None:
                    _step(_price, ex, call, "price")
        _step(_release, ex, call, "release the budget reservations of")
    finally:
        ex.state = State.SETTLED
        ex.drop_request()
        ex.content = ex.parsed = ex.result = ex.stream_parser = None
        ex.forget_awaiting()
    PIPELINE.deliver(call, ex.scopes)


def _step(fn: Any, ex: Exchange, call: Call, doing: str, *args: Any) -> Any:
    try:
        return fn(ex, call, *args)
    except Exception:
        log.exception(
            "llmtally: could not %s POST %s%s; the call is counted, this part of it unknown",
            doing,
            ex.host,
            ex.path,
        )
        return None


def _record(ex: Exchange) -> Call:
    hint, _ = _host(ex.host)
    parser = ex.parser
    call = Call(hint or parser.provider, parser.endpoint, None)
    call.requested_model = call.model = _requested_model(ex.request_body())
    call.status = ex.status
    call.latency = ex.end - ex.start
    call.started_at = time.time() - (time.perf_counter() - ex.start)
    call.url_host = ex.host
    if ex.span is not None:
        call.span, ex.span = ex.span, None
    scopes = ex.scopes
    if scopes:
        call.scope_path = tuple([t.name or "" for t in scopes])
        for tally in scopes:
            if tally.tags:  # inner scopes' tags win
                call.tags = {**call.tags, **tally.tags}
    if ex.error is not None:
        call.ok = False
        call.error = ex.error
    return call


def _read(ex: Exchange, call: Call) -> wire.Result | None:
    """What the response says about itself; ``_NOT_A_CALL`` for another API on the same path."""
    result: wire.Result | None
    if ex.state is State.STREAMED:
        call.stream = True
        stream = ex.stream_parser
        result = stream.result if stream is not None else wire.Result()
    else:
        result = _parse_body(ex)
        if result is None:
            return _NOT_A_CALL
    call.model = result.model or call.requested_model
    call.request_id = result.request_id
    return result


def _parse_body(ex: Exchange) -> wire.Result | None:
    parser = ex.parser
    parsed = ex.parsed
    if parsed is not None:
        result = parser.body(parsed)
        # A caller who edited the dict it got from json() cannot hide the usage: the bytes
        # the server sent are still here.
        if result is not None and result.usage is not None:
            return result
    content = ex.content or b""
    fast = parser.fast_body(content)
    if fast is not None:
        return fast
    obj = wire.loads(content)
    if obj is None:
        log.warning(
            "llmtally: the response of POST %s%s is not %s JSON; counted without usage",
            ex.host,
            ex.path,
            parser.endpoint,
        )
        return wire.Result()
    # None: same path, another API (an OpenAI thread message, say): not a model call.
    return parser.body(obj)


def _count(ex: Exchange, call: Call, result: wire.Result) -> None:
    """The usage the response reported; counted offline where it reported none."""
    usage = result.usage
    if usage is None:
        call.usage = _estimate(ex, result, call.model)
        call.estimated = True
        return
    stream = ex.stream_parser
    if stream is not None and not stream.complete:
        # Closed before the final count (Anthropic's message_delta): the output so far is at
        # least what the caller already received.
        seen = _output_estimate(ex, result, call.model)
        if seen > usage.completion_tokens:
            usage.completion_tokens = seen
            call.estimated = True
    call.usage = usage


def _price(ex: Exchange, call: Call) -> None:
    hint, api_url = _host(ex.host)
    assert call.usage is not None
    cost, source = price_usage(call.usage, call.model, hint, api_url, ex.parser.provider, call.started_at)
    if source is not None:
        call.cost, call.price_source, call.provider = cost, source.source, source.provider_id


def _release(ex: Exchange, call: Call) -> None:
    if ex.reservations:
        from .._limits import release

        reservations, ex.reservations = ex.reservations, None
        release(reservations, call)


def _host(host: str) -> tuple[str | None, str]:
    """(provider id if well known, URL for the catalogue's API patterns), cached per host."""
    info = _hosts.get(host)
    if info is None:
        info = (wire.provider_for_host(host), f"https://{host}")
        if len(_hosts) < 4096:
            _hosts[host] = info
    return info


def _requested_model(content: bytes) -> str | None:
    # The SDKs serialise ``model`` after ``messages``: search from the end. A JSON string cannot
    # hold an unescaped quote, so this matches a key, not prompt text.
    at = content.rfind(b'"model"')
    if at < 0:
        return None
    m = _MODEL.match(content, at)
    return m.group(1).decode("utf-8", "replace") if m else None


def _estimate(ex: Exchange, result: wire.Result, model: str | None) -> Usage:
    from .. import _tokens

    prompt = 0
    try:
        obj = wire.loads(ex.request_body())
        if obj is not None:
            texts, messages = ex.parser.request_text(obj)
            names = _tokens.names_in(obj.get("messages"))
            prompt = _tokens.estimate_chat_input(texts, messages, model, names)
    except Exception:
        log.exception("llmtally: could not estimate the input tokens of a call")
    return Usage(prompt, _output_estimate(ex, result, model))


def _output_estimate(ex: Exchange, result: wire.Result, model: str | None) -> int:
    from .. import _tokens

    if result.text:
        # Count the text as one piece: a word split across deltas is not two words.
        return _tokens.count("".join(result.text), model)
    # A skimmed stream (its text was not parsed): one token per content chunk.
    return int(getattr(ex.stream_parser, "chunks", 0))
