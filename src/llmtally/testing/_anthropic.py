"""Anthropic's wire format: Messages (plain and streamed), token counting and errors.

`Reply.prompt_tokens` counts all input, OpenAI style; Anthropic reports ``input_tokens``
without the cache reads and writes, so the conversion happens here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ._script import FakeRequest, Reply, Tokens, resolve_tokens
from ._wire import Answer, json_answer, named_event, new_id, split_text, stream_answer

__all__ = ["count_tokens", "error", "message", "messages", "stream_events"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def _headers(reply: Reply) -> dict[str, str]:
    return {"request-id": reply.request_id or new_id("req_")}


def error(reply: Reply, message: str) -> Answer:
    """An error body in Anthropic's ``{"type": "error", "error": {...}}`` shape."""
    kind = _ERROR_TYPES.get(reply.status, "api_error" if reply.status >= 500 else "invalid_request_error")
    headers = _headers(reply)
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": headers["request-id"]}
    return json_answer(reply, reply.status, body, headers)


def _usage(t: Tokens, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": t.prompt - t.cached - t.cache_write,
        "cache_creation_input_tokens": t.cache_write,
        "cache_read_input_tokens": t.cached,
        "cache_creation": {
            "ephemeral_5m_input_tokens": t.cache_write - t.cache_write_1h,
            "ephemeral_1h_input_tokens": t.cache_write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }
    if t.reasoning:
        usage["output_tokens_details"] = {"thinking_tokens": t.reasoning}
    return usage


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.content or not reply.tool_calls:
        blocks.append({"type": "text", "text": reply.content})
    for call in reply.tool_calls or ():
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id or new_id("toolu_"),
                "name": call.name,
                "input": call.arguments_dict(),
            }
        )
    return blocks


def message(request: FakeRequest, reply: Reply, model: str) -> tuple[dict[str, Any], Tokens]:
    """The Messages API's answer object (Bedrock's InvokeModel sends it too), and its tokens."""
    tokens = resolve_tokens(reply, request)
    default_stop = "tool_use" if reply.tool_calls else "end_turn"
    body: dict[str, Any] = {
        "id": reply.request_id or new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _blocks(reply),
        "stop_reason": _STOP_REASONS.get(reply.finish_reason or "", reply.finish_reason or default_stop),
        "stop_sequence": None,
    }
    if reply.include_usage is not False:
        body["usage"] = _usage(tokens, tokens.completion)
    return body, tokens


def messages(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /v1/messages``."""
    body, tokens = message(request, reply, model)
    if request.stream:
        events = (named_event(e) for e in stream_events(reply, body, tokens))
        return stream_answer(reply, events, _headers(reply))
    return json_answer(reply, 200, body, _headers(reply))


def stream_events(reply: Reply, message: dict[str, Any], tokens: Tokens) -> Iterator[dict[str, Any]]:
    """The events of a streamed Messages answer, as objects (Bedrock sends them base64-encoded)."""
    with_usage = "usage" in message
    start = {**message, "content": [], "stop_reason": None}
    if with_usage:
        # The real API reports one output token up front and the final count in message_delta.
        start["usage"] = _usage(tokens, 1)
    yield {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            if index == 0:
                yield {"type": "ping"}
            for piece in split_text(block["text"], reply.chunks):
                delta = {"type": "text_delta", "text": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        else:
            opening = {**block, "input": {}}
            yield {"type": "content_block_start", "index": index, "content_block": opening}
            if index == 0:
                yield {"type": "ping"}
            for piece in split_text(json.dumps(block["input"]), None):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
        yield {"type": "content_block_stop", "index": index}
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
    }
    if with_usage:
        final["usage"] = {"output_tokens": tokens.completion}
    yield final
    yield {"type": "message_stop"}


def count_tokens(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /v1/messages/count_tokens``: the reply's ``prompt_tokens``, or the computed count."""
    return json_answer(reply, 200, {"input_tokens": resolve_tokens(reply, request).prompt}, _headers(reply))
