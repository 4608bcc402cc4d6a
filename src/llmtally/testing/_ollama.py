"""Ollama's native API wire format: /api/chat, /api/generate, /api/embed; NDJSON streams; errors.

Ollama streams unless the request says ``"stream": false``, one JSON object per line
(``application/x-ndjson``); the counts (``prompt_eval_count``, ``eval_count``) come on the last.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

from ._script import FakeRequest, Reply, resolve_tokens
from ._wire import Answer, dumps, json_answer, split_text, stream_answer

__all__ = ["chat", "embed", "error", "generate"]


def error(reply: Reply, message: str) -> Answer:
    """Ollama's ``{"error": "..."}``."""
    return json_answer(reply, reply.status, {"error": message}, {})


def _created() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _streams(request: FakeRequest) -> bool:
    return not (isinstance(request.json, dict) and request.json.get("stream") is False)


def _answer(request: FakeRequest, reply: Reply, model: str, piece: Any) -> Answer:
    tokens = resolve_tokens(reply, request)
    done: dict[str, Any] = {"done": True, "done_reason": reply.finish_reason or "stop",
                            "total_duration": 1_000_000, "load_duration": 1000,
                            "prompt_eval_count": tokens.prompt, "prompt_eval_duration": 1000,
                            "eval_count": tokens.completion, "eval_duration": 1000}  # fmt: skip
    if reply.include_usage is False:
        for key in ("prompt_eval_count", "eval_count"):
            del done[key]
    if not _streams(request):
        return json_answer(
            reply, 200, {"model": model, "created_at": _created(), **piece(reply.content), **done}, {}
        )

    def lines() -> Iterator[bytes]:
        for text in split_text(reply.content, reply.chunks):
            yield dumps({"model": model, "created_at": _created(), **piece(text), "done": False}) + b"\n"
        yield dumps({"model": model, "created_at": _created(), **piece(""), **done}) + b"\n"

    answer = stream_answer(reply, lines(), {})
    answer.headers["content-type"] = "application/x-ndjson"
    return answer


def chat(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /api/chat``."""
    return _answer(request, reply, model, lambda text: {"message": {"role": "assistant", "content": text}})


def generate(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /api/generate``."""
    return _answer(request, reply, model, lambda text: {"response": text})


def embed(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``POST /api/embed``: one vector per input."""
    tokens = resolve_tokens(reply, request)
    inputs = request.json.get("input") if isinstance(request.json, dict) else None
    n = len(inputs) if isinstance(inputs, list) else 1
    vectors = [[0.1 * (i + 1)] * reply.embedding_dim for i in range(n)]
    body = {"model": model, "embeddings": vectors, "total_duration": 1000, "load_duration": 100,
            "prompt_eval_count": tokens.prompt}  # fmt: skip
    return json_answer(reply, 200, body, {})
