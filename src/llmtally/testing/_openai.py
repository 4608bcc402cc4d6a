"""OpenAI's wire formats: Chat Completions, legacy Completions, Embeddings and Responses.

Each function turns a scripted `Reply` into the `Answer` the real API would send, down to the
``data: [DONE]`` sentinel, the ``"usage": null`` on every chunk of a stream that asked for usage,
and the base64 float32 embeddings the openai SDK requests by default.

Two OpenAI-compatible providers answer Chat Completions in their own dialect, chosen by the path
their SDKs post to: Groq (``/openai/v1/chat/completions``) puts a stream's usage in its last
chunk's ``x_groq.usage`` when the request did not ask for it, and OpenRouter
(``/api/v1/chat/completions``) always reports usage, streams included, with its own ``cost``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Iterator
from typing import Any

from ._script import FakeRequest, Reply, Tokens, resolve_tokens
from ._wire import Answer, data_event, json_answer, named_event, new_id, now, split_text, stream_answer

__all__ = ["chat_completions", "completions", "embeddings", "error", "responses", "vector"]

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_FINGERPRINT = "fp_fake0000"


def _headers(reply: Reply) -> dict[str, str]:
    return {"x-request-id": reply.request_id or new_id("req_"), "openai-processing-ms": "1"}


def error(reply: Reply, message: str) -> Answer:
    """An error body in OpenAI's ``{"error": {...}}`` shape."""
    kind, code = _ERROR_TYPES.get(
        reply.status, ("server_error" if reply.status >= 500 else "invalid_request_error", None)
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_answer(reply, reply.status, body, _headers(reply))


def _wants_usage(reply: Reply, request: FakeRequest) -> bool:
    if reply.include_usage is not None:
        return reply.include_usage
    options = request.json.get("stream_options") if isinstance(request.json, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


def _dialect(request: FakeRequest) -> str | None:
    if request.path.endswith("/openai/v1/chat/completions"):
        return "groq"
    if request.path.endswith("/api/v1/chat/completions"):
        return "openrouter"
    return None


def _usage(t: Tokens, reply: Reply | None = None, dialect: str | None = None) -> dict[str, Any]:
    prompt_details: dict[str, int] = {"cached_tokens": t.cached, "audio_tokens": 0}
    if t.cache_write:
        prompt_details["cache_write_tokens"] = t.cache_write
    extra: dict[str, Any] = {}
    if dialect == "groq":
        extra = {"queue_time": 0.01, "prompt_time": 0.002, "completion_time": 0.05, "total_time": 0.052}
    elif dialect == "openrouter" and reply is not None and reply.cost is not None:
        extra = {
            "cost": float(reply.cost),
            "is_byok": False,
            "cost_details": {"upstream_inference_cost": None},
        }
    return {
        **extra,
        "prompt_tokens": t.prompt,
        "completion_tokens": t.completion,
        "total_tokens": t.prompt + t.completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": t.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _call_ids(reply: Reply) -> list[str]:
    return [call.id or new_id("call_") for call in reply.tool_calls or ()]


def chat_completions(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /chat/completions`` (Azure deployments included)."""
    tokens = resolve_tokens(reply, request)
    ids = _call_ids(reply)
    head = {
        "id": reply.request_id or new_id("chatcmpl-"),
        "created": now(),
        "model": model,
        "service_tier": reply.service_tier or "default",
        "system_fingerprint": _FINGERPRINT,
    }
    dialect = _dialect(request)
    if request.stream:
        with_usage = _wants_usage(reply, request) or (dialect == "openrouter" and reply.include_usage is None)
        events = _chat_events(reply, head, ids, tokens, with_usage, dialect)
        return stream_answer(reply, events, _headers(reply))
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": id_,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for id_, call in zip(ids, reply.tool_calls, strict=True)
        ]
    body: dict[str, Any] = {
        "object": "chat.completion",
        **head,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish_reason(reply), "logprobs": None}
        ],
    }
    if reply.include_usage is not False:
        body["usage"] = _usage(tokens, reply, dialect)
    if dialect == "groq":
        body["x_groq"] = {"id": new_id("req_")}
    return json_answer(reply, 200, body, _headers(reply))


def _chat_events(
    reply: Reply,
    head: dict[str, Any],
    ids: list[str],
    tokens: Tokens,
    with_usage: bool,
    dialect: str | None = None,
) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj: dict[str, Any] = {
            "object": "chat.completion.chunk",
            **head,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            obj["usage"] = None
        if finish and dialect == "groq" and not with_usage and reply.include_usage is not False:
            obj["x_groq"] = {"id": new_id("req_"), "usage": _usage(tokens, reply, dialect)}
        return data_event(obj)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in split_text(reply.content, reply.chunks):
        yield chunk({"content": piece})
    for index, (id_, call) in enumerate(zip(ids, reply.tool_calls or (), strict=True)):
        opening = {
            "index": index,
            "id": id_,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield chunk({"tool_calls": [opening]})
        for piece in split_text(call.arguments_json(), None):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    yield chunk({}, _finish_reason(reply))
    if with_usage:
        usage = _usage(tokens, reply, dialect)
        yield data_event({"object": "chat.completion.chunk", **head, "choices": [], "usage": usage})
    yield data_event("[DONE]")


def completions(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /completions``, the legacy text completion API."""
    tokens = resolve_tokens(reply, request)
    head = {
        "id": reply.request_id or new_id("cmpl-"),
        "object": "text_completion",
        "created": now(),
        "model": model,
    }
    finish = reply.finish_reason or "stop"
    if request.stream:
        return stream_answer(
            reply,
            _completion_events(reply, head, finish, tokens, _wants_usage(reply, request)),
            _headers(reply),
        )
    body: dict[str, Any] = {
        **head,
        "system_fingerprint": _FINGERPRINT,
        "choices": [{"text": reply.content, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    if reply.include_usage is not False:
        body["usage"] = _usage(tokens)
    return json_answer(reply, 200, body, _headers(reply))


def _completion_events(
    reply: Reply, head: dict[str, Any], finish: str, tokens: Tokens, with_usage: bool
) -> Iterator[bytes]:
    pieces = split_text(reply.content, reply.chunks) or [""]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish if last else None}
        obj: dict[str, Any] = {**head, "choices": [choice]}
        if with_usage:
            obj["usage"] = None
        yield data_event(obj)
    if with_usage:
        yield data_event({**head, "choices": [], "usage": _usage(tokens)})
    yield data_event("[DONE]")


def vector(text: str, dim: int) -> list[float]:
    # Same input, same vector; multiples of 1/128 survive float32 and base64 exactly.
    raw = b""
    counter = 0
    while len(raw) < dim:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    return [(b - 128) / 128 for b in raw[:dim]]


def _inputs(body: Any) -> list[str]:
    value = body.get("input") if isinstance(body, dict) else None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [repr(value)]
    if isinstance(value, list):
        return [v if isinstance(v, str) else repr(v) for v in value]
    return [""]


def embeddings(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /embeddings``, honouring ``encoding_format: "base64"``."""
    as_base64 = isinstance(request.json, dict) and request.json.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(_inputs(request.json)):
        values: Any = vector(text, reply.embedding_dim)
        if as_base64:
            values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": values})
    body: dict[str, Any] = {
        "id": reply.request_id or new_id("embd-"),
        "object": "list",
        "data": data,
        "model": model,
    }
    if reply.include_usage is not False:
        prompt = resolve_tokens(reply, request).prompt
        body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return json_answer(reply, 200, body, _headers(reply))


def _responses_usage(t: Tokens) -> dict[str, Any]:
    return {
        "input_tokens": t.prompt,
        "input_tokens_details": {"cached_tokens": t.cached, "cache_write_tokens": t.cache_write},
        "output_tokens": t.completion,
        "output_tokens_details": {"reasoning_tokens": t.reasoning},
        "total_tokens": t.prompt + t.completion,
    }


def _output(reply: Reply, message_id: str, ids: list[str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.content or not reply.tool_calls:
        text = {"type": "output_text", "text": reply.content, "annotations": [], "logprobs": []}
        items.append(
            {
                "type": "message",
                "id": message_id,
                "status": "completed",
                "role": "assistant",
                "content": [text],
            }
        )
    for call_id, call in zip(ids, reply.tool_calls or (), strict=True):
        items.append(
            {
                "type": "function_call",
                "id": "fc_" + call_id.removeprefix("call_"),
                "call_id": call_id,
                "name": call.name,
                "arguments": call.arguments_json(),
                "status": "completed",
            }
        )
    return items


def responses(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /responses``, the Responses API, with its typed, sequence-numbered stream events."""
    body = request.json if isinstance(request.json, dict) else {}
    tokens = resolve_tokens(reply, request)
    output = _output(reply, new_id("msg_"), _call_ids(reply))
    response: dict[str, Any] = {
        "id": reply.request_id or new_id("resp_"),
        "object": "response",
        "created_at": now(),
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": _responses_usage(tokens) if reply.include_usage is not False else None,
        "user": None,
    }
    if request.stream:
        return stream_answer(reply, _responses_events(reply, response), _headers(reply))
    return json_answer(reply, 200, response, _headers(reply))


def _responses_events(reply: Reply, response: dict[str, Any]) -> Iterator[bytes]:
    sequence = 0

    def event(type_: str, **fields: Any) -> bytes:
        nonlocal sequence
        obj = {"type": type_, "sequence_number": sequence, **fields}
        sequence += 1
        return named_event(obj)

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    for index, item in enumerate(response["output"]):
        where = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            yield event("response.content_part.added", **where, content_index=0, part={**part, "text": ""})
            for piece in split_text(part["text"], reply.chunks):
                yield event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
            yield event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[])
            yield event("response.content_part.done", **where, content_index=0, part=part)
        else:
            yield event(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            for piece in split_text(item["arguments"], None):
                yield event("response.function_call_arguments.delta", **where, delta=piece)
            yield event("response.function_call_arguments.done", **where, arguments=item["arguments"])
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response)
