"""Cohere's v2 wire format: /v2/chat (plain and SSE streams) and /v2/embed, and errors.

Cohere reports ``billed_units`` (what it bills) and ``tokens`` (with its prompt template); here
the script's counts are the billed units, and the template adds a few tokens to ``tokens``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ._script import FakeRequest, Reply, Tokens, resolve_tokens
from ._wire import Answer, dumps, json_answer, new_id, split_text, stream_answer

__all__ = ["chat", "embed", "error"]

#: Tokens Cohere's prompt template adds to ``tokens.input_tokens`` (not billed).
TEMPLATE = 209
_FINISH = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}


def error(reply: Reply, message: str) -> Answer:
    return json_answer(reply, reply.status, {"id": new_id(""), "message": message}, {})


def _usage(t: Tokens) -> dict[str, Any]:
    return {
        "billed_units": {"input_tokens": t.prompt, "output_tokens": t.completion},
        "tokens": {"input_tokens": t.prompt + TEMPLATE, "output_tokens": t.completion},
        "cached_tokens": t.cached,
    }


def _event(obj: dict[str, Any]) -> bytes:
    return f"event: {obj['type']}\n".encode() + b"data: " + dumps(obj) + b"\n\n"


def chat(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /v2/chat``."""
    tokens = resolve_tokens(reply, request)
    finish = _FINISH.get(reply.finish_reason or "stop", reply.finish_reason or "COMPLETE")
    ident = reply.request_id or new_id("")
    message = {"role": "assistant", "content": [{"type": "text", "text": reply.content}]}
    if not request.stream:
        body: dict[str, Any] = {"id": ident, "message": message, "finish_reason": finish}
        if reply.include_usage is not False:
            body["usage"] = _usage(tokens)
        return json_answer(reply, 200, body, {})

    def events() -> Iterator[bytes]:
        yield _event({"id": ident, "type": "message-start",
                      "delta": {"message": {"role": "assistant", "content": []}}})  # fmt: skip
        yield _event({"type": "content-start", "index": 0,
                      "delta": {"message": {"content": {"type": "text", "text": ""}}}})  # fmt: skip
        for piece in split_text(reply.content, reply.chunks):
            yield _event({"type": "content-delta", "index": 0,
                          "delta": {"message": {"content": {"text": piece}}}})  # fmt: skip
        yield _event({"type": "content-end", "index": 0})
        end: dict[str, Any] = {"finish_reason": finish}
        if reply.include_usage is not False:
            end["usage"] = _usage(tokens)
        yield _event({"type": "message-end", "delta": end})

    return stream_answer(reply, events(), {})


def embed(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /v2/embed``: float embeddings, one per text."""
    tokens = resolve_tokens(reply, request)
    texts = request.json.get("texts") if isinstance(request.json, dict) else None
    n = len(texts) if isinstance(texts, list) else 1
    body = {
        "id": reply.request_id or new_id(""),
        "embeddings": {"float": [[0.1 * (i + 1)] * reply.embedding_dim for i in range(n)]},
        "texts": texts or [],
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens.prompt}},
        "response_type": "embeddings_by_type",
    }
    return json_answer(reply, 200, body, {})
