"""Google's Gemini API wire format: generateContent, streamGenerateContent (SSE or a JSON array),
embeddings (embedContent, batchEmbedContents, and Vertex AI's predict for embedding models), errors.

`Reply.completion_tokens` includes the reasoning tokens (OpenAI style); Gemini reports thoughts
beside the candidates (``thoughtsTokenCount``), so the conversion happens here and nowhere else.
``promptTokenCount`` includes the cached tokens, as `Reply.prompt_tokens` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ._openai import vector
from ._script import FakeRequest, Reply, Tokens, _words, resolve_tokens
from ._wire import Answer, data_event, dumps, json_answer, new_id, split_text, stream_answer

__all__ = ["embed_content", "error", "generate_content", "model_in_path"]

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}
_MODEL_IN_PATH = re.compile(r"/models/([^/:]+):")


def model_in_path(path: str) -> str | None:
    m = _MODEL_IN_PATH.search(path)
    return m.group(1) if m else None


def error(reply: Reply, message: str) -> Answer:
    """An error body in Google's ``{"error": {"code", "message", "status"}}`` shape."""
    status = _STATUS.get(reply.status, "INTERNAL" if reply.status >= 500 else "INVALID_ARGUMENT")
    body = {"error": {"code": reply.status, "message": message, "status": status}}
    return json_answer(reply, reply.status, body, {})


def _usage(t: Tokens, candidates: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": t.prompt, "candidatesTokenCount": candidates}
    if t.cached:
        usage["cachedContentTokenCount"] = t.cached
    if t.reasoning:
        usage["thoughtsTokenCount"] = t.reasoning
    usage["totalTokenCount"] = t.prompt + candidates + t.reasoning
    return usage


def _parts(reply: Reply, text: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": text}] if text or not reply.tool_calls else []
    for call in reply.tool_calls or ():
        parts.append({"functionCall": {"name": call.name, "args": call.arguments_dict()}})
    return parts


def _chunk(
    reply: Reply, model: str, text: str, finish: str | None, usage: dict[str, Any] | None
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": _parts(reply, text)}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
    if usage is not None:
        chunk["usageMetadata"] = usage
    chunk["responseId"] = reply.request_id or new_id("resp-")
    return chunk


def generate_content(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST .../models/{model}:generateContent`` and ``:streamGenerateContent`` (``?alt=sse``, or a
    JSON array of chunks without it)."""
    tokens = resolve_tokens(reply, request)
    candidates = max(tokens.completion - tokens.reasoning, 0)
    finish = _FINISH.get(reply.finish_reason or "stop", reply.finish_reason or "STOP")
    with_usage = reply.include_usage is not False
    if not request.path.endswith(":streamGenerateContent"):
        usage = _usage(tokens, candidates) if with_usage else None
        return json_answer(reply, 200, _chunk(reply, model, reply.content, finish, usage), {})
    pieces = split_text(reply.content, reply.chunks) or [""]
    chunks = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        # Every chunk carries the prompt count; the last one the whole answer's.
        usage = _usage(tokens, candidates if last else 0) if with_usage else None
        chunks.append(_chunk(reply, model, piece, finish if last else None, usage))
    if request.query.get("alt") == "sse":
        return stream_answer(reply, (data_event(c) for c in chunks), {})
    return _array_answer(reply, chunks)


def _array_answer(reply: Reply, chunks: list[dict[str, Any]]) -> Answer:
    def events() -> Iterator[bytes]:
        for i, chunk in enumerate(chunks):
            yield (b"[" if i == 0 else b",\r\n") + dumps(chunk)
        yield b"]"

    answer = stream_answer(reply, events(), {})
    answer.headers["content-type"] = "application/json; charset=UTF-8"
    return answer


def _texts(request: FakeRequest) -> list[Any]:
    body = request.json if isinstance(request.json, dict) else {}
    if request.path.endswith(":embedContent"):
        return [body.get("content")]
    key, field = ("instances", "content") if request.path.endswith(":predict") else ("requests", "content")
    return [item.get(field) for item in body.get(key) or () if isinstance(item, dict)]


def embed_content(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``:embedContent``, ``:batchEmbedContents`` and Vertex AI's ``:predict`` for embedding models.

    Usage is ``usageMetadata.promptTokenCount`` (``:predict``: each prediction's
    ``statistics.token_count``); ``Reply(include_usage=False)`` leaves it out, as the Gemini API
    does for older models. ``Reply.prompt_tokens`` overrides the total (``:predict``: the first
    input's count, the rest counted by words).
    """
    contents = _texts(request)
    counts = [max(_words(c), 1) for c in contents] or [1]
    if reply.prompt_tokens is not None:
        counts[0] = reply.prompt_tokens if len(counts) == 1 else max(reply.prompt_tokens - sum(counts[1:]), 0)
    with_usage = reply.include_usage is not False
    vectors = [{"values": vector(dumps(c).decode(), reply.embedding_dim)} for c in contents]
    if request.path.endswith(":predict"):
        predictions = []
        for v, n in zip(vectors, counts, strict=False):
            stats: dict[str, Any] = {"truncated": False}
            if with_usage:
                stats["token_count"] = n
            predictions.append({"embeddings": {**v, "statistics": stats}})
        chars = sum(len(dumps(c)) for c in contents)
        return json_answer(
            reply, 200, {"predictions": predictions, "metadata": {"billableCharacterCount": chars}}, {}
        )
    body: dict[str, Any] = (
        {"embedding": vectors[0] if vectors else {"values": []}}
        if request.path.endswith(":embedContent")
        else {"embeddings": vectors}
    )
    if with_usage:
        body["usageMetadata"] = {"promptTokenCount": sum(counts), "totalTokenCount": sum(counts)}
    return json_answer(reply, 200, body, {})
