"""Settlement, off the call path: an exchange becomes a priced ``Call`` in its scopes and sinks.

``settle()`` is a pipeline of small steps, each guarded on its own:

1. ``_record``    the call's identity: provider, endpoint, requested model, timing, scopes, tags;
2. ``_read``      the wire format reads the response: served model, usage, request id;
3. ``_count``     a response without usage is counted offline with the model's tokenizer
                  (``estimated``), and a stream cut before its final count is topped up;
4. price         the usage is priced at the time of the call, by host, wire provider or model;
5. finish        the bodies are dropped, shared-budget reservations settled (``_release``);
6. deliver       the call goes into every scope it was made in and to every sink.

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
from .._core import currency
from .._core.money import ZERO
from .._core.pipeline import PIPELINE
from .._core.usage import NO_TAGS, Call, Usage
from .._limits import release
from .._pricing import price_usage
from .codings import UNREAD
from .state import State

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["settle"]

log = logging.getLogger("llmtally")

_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,256})"')
#: host -> (provider id if well known, URL for the catalogue's API patterns).
_hosts: dict[str, tuple[str | None, str]] = {}
#: What ``_read`` returns for another API's answer on a model endpoint's path.
_NOT_A_CALL = wire.Result()


def settle(ex: Exchange) -> None:
    """Parse, price and deliver one exchange; never raises, never loses the call.

    The steps are guarded one by one, inline rather than through a wrapper: this runs cold, right
    after the SDK's own work, where every extra function touched costs more than its instructions.
    """
    if ex.state is State.SETTLED:
        return
    call: Call | None = None
    result: wire.Result | None = None
    try:
        parser = ex.parser
        provider, api_url = _hosts.get(ex.host) or _host(ex.host)
        if ex.gateway is not None:  # the mapping in force when the call was made, not now
            provider = ex.gateway
        try:  # 1. record
            call = _record(ex, provider or parser.provider)
        except Exception:
            _failed_step(ex, "record")
            call = _plain_call(ex, provider or parser.provider)
        if ex.state is State.FAILED:
            call.ok = False
            call.error = ex.error
            call.cost = ZERO
        else:
            try:  # 2. read
                result = _read(ex, call)
            except Exception:
                _failed_step(ex, "read the response of")
                result = None
            if result is _NOT_A_CALL:
                call.cost = ZERO  # not a model call: it releases its reservations unspent
            elif result is not None:
                try:  # 3. count
                    _count(ex, call, result)
                except Exception:
                    _failed_step(ex, "count the tokens of")
                if call.usage is not None and parser.priced:
                    try:  # 4. price
                        call.context = result.context
                        cost, source = price_usage(
                            call.usage,
                            call.model,
                            provider,
                            api_url,
                            parser.provider,
                            call.started_at,
                            result.context,
                        )
                        if source is not None:
                            call.cost, call.price_source, call.provider = (
                                cost,
                                source.source,
                                source.provider_id,
                            )
                            if cost is not None and source.currency != currency.display():
                                _convert(call, cost, source.currency)
                    except Exception:
                        _failed_step(ex, "price")
                if result.cost is not None:
                    # The provider's own figure (OpenRouter's usage.cost) is what was billed: scopes
                    # and budgets count it; ours stays beside it in the record.
                    call.computed_cost, call.cost = call.cost, result.cost
                    ours = call.price_source or "no price known"
                    call.price_source = f"reported by the provider (llmtally's price: {ours})"
        # 5. finish: drop the bodies, settle budget reservations at the call's cost.
        ex.state = State.SETTLED
        ex._request_body = ex.content = ex.parsed = ex.stream_parser = None
        if ex._awaiting is not None:
            ex.forget_awaiting()
        if ex.reservations:
            _release(ex, call)
        if result is _NOT_A_CALL:
            return
    except Exception:  # pragma: no cover - every step is guarded; this guards the guards
        log.exception("llmtally: could not settle a call; counting it with what is known")
        ex.state = State.SETTLED
        if call is None:
            call = _plain_call(ex, ex.parser.provider)
        if ex.reservations:
            _release(ex, call)
    # 6. deliver: into every scope the call was made in, and to every sink.
    PIPELINE.deliver(call, ex.scopes)


def _convert(call: Call, cost: Any, code: str) -> None:
    """Priced in another currency than the display one: kept as priced, counted converted; without a
    rate for it, unpriced (never 0)."""
    call.native_cost, call.native_currency = cost, code
    call.cost = currency.convert(cost, code)
    call.currency = currency.display()
    if call.cost is None:
        call.price_source = f"{call.price_source}; no rate from {code} to {call.currency}: unpriced"


def _plain_call(ex: Exchange, provider: str) -> Call:
    """The call with only what needs no parsing, when recording it properly failed: still dated,
    timed, attributed to its host and scopes, so its record is not lost in the ledger either."""
    call = Call(provider, ex.parser.endpoint, None, status=ex.status, url_host=ex.host)
    for step in (_plain_timing, _plain_scopes):
        try:
            step(ex, call)
        except Exception:
            log.exception("llmtally: could not record part of a call")
    if ex.error is not None:
        call.ok, call.error = False, ex.error
    return call


def _plain_timing(ex: Exchange, call: Call) -> None:
    call.latency = max(ex.end - ex.start, 0.0)
    call.started_at = time.time() - (time.perf_counter() - ex.start)


def _plain_scopes(ex: Exchange, call: Call) -> None:
    call.scope_path = tuple(t.name or "" for t in ex.scopes)


def _release(ex: Exchange, call: Call) -> None:
    try:
        reservations, ex.reservations = ex.reservations, None
        if reservations:
            release(reservations, call)
    except Exception:
        _failed_step(ex, "release the budget reservations of")


def _failed_step(ex: Exchange, doing: str) -> None:
    log.exception(
        "llmtally: could not %s POST %s%s; the call is counted, this part of it unknown",
        doing,
        ex.host,
        ex.path,
    )


def _record(ex: Exchange, provider: str) -> Call:
    """The call's identity: provider, endpoint, requested model, timing, scopes, tags."""
    scope_path, tags = _names_and_tags(ex.scopes)
    start = ex.start
    # The URL's model first where the API names it there (Gemini, Bedrock): a body's "model" key
    # could be a tool argument's.
    requested = ex.parser.model_in_path(ex.path) or _requested_model(ex.request_body())
    span, ex.span = ex.span, None
    error = ex.error
    return Call(
        provider,
        ex.parser.endpoint,
        requested,
        requested_model=requested,
        status=ex.status,
        ok=error is None,
        error=error,
        started_at=time.time() - (time.perf_counter() - start),
        latency=ex.end - start,
        url_host=ex.host,
        scope_path=scope_path,
        tags=tags,
        span=span,
    )


def _names_and_tags(scopes: Any) -> tuple[tuple[str, ...], Any]:
    """The scopes' names, outermost first, and their tags merged (inner scopes' tags win).

    Kept on the frame of open scopes (``_core.scope._Frame``), which every call made in it
    shares: worked out once per scope entered, not once per call. A scope renamed or retagged
    while open is seen on its next entry.
    """
    if not scopes:
        return (), NO_TAGS
    cached = getattr(scopes, "names_and_tags", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    names = []
    tags: Any = NO_TAGS
    for tally in scopes:
        names.append(tally.name or "")
        if tally.tags:
            tags = {**tags, **tally.tags}
    cached = (tuple(names), tags)
    try:
        scopes.names_and_tags = cached
    except AttributeError:  # a plain tuple (current_scopes() handed over by hand)
        pass
    return cached


def _read(ex: Exchange, call: Call) -> wire.Result | None:
    """What the response says about itself; ``_NOT_A_CALL`` for another API on the same path."""
    result: wire.Result | None
    wire.bad_count()  # forget what another parse on this thread left noted
    if ex.state is State.STREAMED:
        call.stream = True
        stream = ex.stream_parser
        if getattr(stream, "foreign", False):
            return _NOT_A_CALL  # another API on a path a wire format shares (Ollama's /api/chat)
        result = stream.result if stream is not None else wire.Result()
    else:
        result = _parse_body(ex)
        if result is None:
            return _NOT_A_CALL
    if result.usage is None and ex.headers:
        result.usage = ex.parser.headers_usage(ex.headers)  # Bedrock's counts, where bodies have none
    bad = wire.bad_count()
    if bad is not wire.NOTHING and result.bad is wire.NOTHING:
        result.bad = bad
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
    content = ex.content
    if not content:
        if content is UNREAD:  # in a coding llmtally cannot read (said when it came): estimated
            return wire.Result()
        content = b""
    fast = parser.fast_body(content)
    if fast is not None:
        return fast
    obj = wire.loads_body(content)
    if obj is None and parser.ndjson:
        objs = [wire.loads(line) for line in content.splitlines() if line.strip()]
        obj = [o for o in objs if o is not None]
        if not obj:
            return None  # not JSON on a path other APIs share (Ollama's /api/chat): not a model call
    elif type(obj) is list and not parser.arrays:
        obj = None
    if obj is None:
        log.warning(
            "llmtally: the response of POST %s%s %s; counted without usage",
            ex.host,
            ex.path,
            f"is not {parser.endpoint} JSON" if content.strip() else "was closed before its body was read",
        )
        return wire.Result()
    # None: same path, another API (an OpenAI thread message, say): not a model call.
    return parser.body(obj)


def _count(ex: Exchange, call: Call, result: wire.Result) -> None:
    """The usage the response reported; counted offline where it reported none."""
    usage = result.usage
    if result.bad is not wire.NOTHING and usage is not None:
        # Not a silent 0: the limits keep counting what the call most likely used.
        log.warning(
            "llmtally: POST %s%s reported a usage value that is no token count (%.80r); its tokens "
            "are counted offline and marked estimated",
            ex.host,
            ex.path,
            result.bad,
        )
        usage = None
        if not call.stream:
            result.text = _answer_text(ex)
    if usage is None:
        call.usage = _estimate(ex, result, call.model)
        call.estimated = True
        return
    stream = ex.stream_parser
    if stream is not None and not stream.complete:
        # Closed before the final count (Anthropic's message_delta): the output count is not the
        # final one, and is at least what the caller already received.
        usage.completion_tokens = max(usage.completion_tokens, _output_estimate(ex, result, call.model))
        call.estimated = True
    call.usage = usage


def _answer_text(ex: Exchange) -> list[str]:
    """The answer's text of a body whose usage is not to be believed, to count its output offline:
    the parsers keep the text only of a body without usage, so read it again without."""
    obj = ex.parsed if ex.parsed is not None else wire.loads_body(ex.content or b"")
    if not isinstance(obj, dict):
        return []
    bare = {k: v for k, v in obj.items() if k not in ("usage", "usageMetadata", "meta")}
    result = ex.parser.body(bare)
    wire.bad_count()
    return list(result.text) if result is not None else []


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
        text = "".join(result.text)
        tokens = _tokens.count(text, model)
        dropped = getattr(result.text, "dropped", 0)
        if dropped and text:  # a very long stream: only its first characters were kept
            tokens = round(tokens * (len(text) + dropped) / len(text))
        return tokens
    # A skimmed stream (its text was not parsed): one token per content chunk.
    return int(getattr(ex.stream_parser, "chunks", 0))
