"""Cohere's v2 API: ``/v2/chat`` (plain and streamed) and ``/v2/embed``.

Chat answers carry two counts::

    "usage": {"billed_units": {"input_tokens": 17, "output_tokens": 65},
              "tokens": {"input_tokens": 226, "output_tokens": 65}, "cached_tokens": 0}

``tokens`` includes the prompt template Cohere wraps around the messages; ``billed_units`` is what
Cohere bills, and what genai-prices prices by default: llmtally counts ``billed_units`` (and falls
back to ``tokens`` when an answer has no billed units). Streams are server-sent events; the usage
comes in ``message-end``'s ``delta``. Embeddings report ``meta.billed_units.input_tokens``.

The answers name no model: the requested model (from the request body) is the model.
"""

from __future__ import annotations

from typing import Any

from .._core.usage import Usage
from ._base import Parser, Result, StreamParser, as_int, as_str, loads

__all__ = ["CohereChat", "CohereEmbed", "cohere_usage"]


def cohere_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    counts = u.get("billed_units")
    if isinstance(counts, dict):
        # What Cohere bills. Its ``cached_tokens`` count cache hits among all the prompt's tokens
        # (``tokens.input_tokens``, the preamble included), not among these: no part of them is
        # known to be cached, and Cohere prices no cache reads.
        return Usage(as_int(counts.get("input_tokens")), as_int(counts.get("output_tokens")))
    counts = u.get("tokens")
    if not isinstance(counts, dict):
        return None
    prompt = as_int(counts.get("input_tokens"))
    return Usage(prompt, as_int(counts.get("output_tokens")), min(as_int(u.get("cached_tokens")), prompt))


def _is_cohere_chat(obj: Any) -> bool:
    return isinstance(obj, dict) and "finish_reason" in obj and isinstance(obj.get("message"), dict)


class _CohereStream(StreamParser):
    """``message-start`` (id), ``content-delta`` (text), ``message-end`` (usage); ``foreign`` until a
    typed Cohere event is seen (other APIs may use ``/v2/chat``)."""

    __slots__ = ("foreign",)

    def __init__(self) -> None:
        super().__init__()
        self.foreign = True

    def event(self, name: str, data: bytes) -> None:
        obj = loads(data)
        if obj is None:
            return
        kind = obj.get("type") or name
        r = self.result
        if kind == "message-start":
            self.foreign = False
            r.request_id = as_str(obj.get("id"))
        elif kind == "content-delta":
            self.foreign = False
            delta = obj.get("delta")
            message = delta.get("message") if isinstance(delta, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, dict) and isinstance(content.get("text"), str):
                r.text.append(content["text"])
        elif kind == "message-end":
            self.foreign = False
            delta = obj.get("delta")
            usage = cohere_usage(delta.get("usage")) if isinstance(delta, dict) else None
            if usage is not None:
                r.usage = usage
                r.text = []


class CohereChat(Parser):
    endpoint = "cohere.chat"
    provider = "cohere"

    def body(self, obj: dict[str, Any]) -> Result | None:
        if not _is_cohere_chat(obj):
            return None  # another API's /v2/chat: not a model call
        r = Result(None, cohere_usage(obj.get("usage")), as_str(obj.get("id")))
        if r.usage is None:
            content = obj["message"].get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    r.text.append(part["text"])
        return r

    def stream(self, request: bytes = b"") -> StreamParser:
        return _CohereStream()

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        messages = obj.get("messages")
        for m in messages if isinstance(messages, list) else ():
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return texts, len(messages) if isinstance(messages, list) else 0


class CohereEmbed(Parser):
    endpoint = "cohere.embed"
    provider = "cohere"

    def body(self, obj: dict[str, Any]) -> Result | None:
        meta = obj.get("meta")
        if not isinstance(meta, dict) or "embeddings" not in obj:
            return None
        billed = meta.get("billed_units")
        usage = Usage(as_int(billed.get("input_tokens"))) if isinstance(billed, dict) else None
        return Result(None, usage, as_str(obj.get("id")))

    def stream(self, request: bytes = b"") -> StreamParser:
        return StreamParser()

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts = obj.get("texts")
        return [t for t in texts if isinstance(t, str)] if isinstance(texts, list) else [], 0
