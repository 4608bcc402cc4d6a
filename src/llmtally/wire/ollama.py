"""Ollama's native API: ``/api/chat``, ``/api/generate`` and ``/api/embed``.

Answers carry their counts at the top level, on the last object of a stream (Ollama streams by
default, as NDJSON, one object per line)::

    {"model": "llama3.2", "message": {"role": "assistant", "content": "..."}, "done": true,
     "prompt_eval_count": 26, "eval_count": 290, "total_duration": 4883583458, ...}

``prompt_eval_count`` is the prompt, ``eval_count`` the answer; embeddings report only the
prompt. Other APIs use these paths too (``/api/chat`` is a common name), so an answer counts only
when it has Ollama's shape: a ``model`` and a ``done`` (or ``embeddings``).

Ollama serves local models: their tokens are counted and their cost left unknown (``priced =
False``), never taken as zero, until a price is set for them.
"""

from __future__ import annotations

from typing import Any

from .._core.usage import Usage
from ._base import Parser, Result, StreamParser, as_int, as_str, loads

__all__ = ["OllamaChat", "OllamaEmbed", "OllamaGenerate"]


def _is_ollama(obj: Any) -> bool:
    return isinstance(obj, dict) and "model" in obj and ("done" in obj or "embeddings" in obj)


def _read(obj: dict[str, Any], r: Result, text_key: str) -> None:
    r.model = as_str(obj.get("model")) or r.model
    if obj.get("done") or "embeddings" in obj:
        prompt = as_int(obj.get("prompt_eval_count"))
        r.usage = Usage(prompt, 0 if "embeddings" in obj else as_int(obj.get("eval_count")))
    source = obj.get("message") if text_key == "message" else obj
    text = (
        source.get("content" if text_key == "message" else "response") if isinstance(source, dict) else None
    )
    if isinstance(text, str) and text:
        r.text.append(text)


class _OllamaStream(StreamParser):
    """One JSON object per line; ``foreign`` until a line has Ollama's shape."""

    __slots__ = ("foreign", "text_key")

    def __init__(self, text_key: str) -> None:
        super().__init__()
        self.text_key = text_key
        self.foreign = True

    def event(self, name: str, data: bytes) -> None:
        obj = loads(data)
        if _is_ollama(obj):
            self.foreign = False
            _read(obj, self.result, self.text_key)


class OllamaChat(Parser):
    endpoint = "ollama.chat"
    provider = "ollama"
    priced = False
    ndjson = True
    #: Where an answer's text is: ``message.content`` (chat) or ``response`` (generate).
    text_key = "message"

    def body(self, obj: Any) -> Result | None:
        # A stream read whole (application/x-ndjson, stream=False on the client side) is a list.
        objs = obj if isinstance(obj, list) else [obj]
        if not any(_is_ollama(o) for o in objs):
            return None  # another API's /api/chat: not a model call
        r = Result()
        for o in objs:
            if _is_ollama(o):
                _read(o, r, self.text_key)
        if r.usage is not None:
            r.text = []
        return r

    def stream(self, request: bytes = b"") -> StreamParser:
        return _OllamaStream(self.text_key)

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        messages = obj.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if isinstance(m, dict) and isinstance(m.get("content"), str):
                texts.append(m["content"])
        for key in ("system", "prompt"):
            if isinstance(obj.get(key), str):
                texts.append(obj[key])
        return texts, len(messages) if isinstance(messages, list) else 0


class OllamaGenerate(OllamaChat):
    endpoint = "ollama.generate"
    text_key = "response"


class OllamaEmbed(OllamaChat):
    endpoint = "ollama.embed"

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        inp = obj.get("input", obj.get("prompt"))
        if isinstance(inp, str):
            return [inp], 0
        return [t for t in inp if isinstance(t, str)] if isinstance(inp, list) else [], 0
