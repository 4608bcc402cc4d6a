"""Anthropic's Messages API.

Anthropic's ``input_tokens`` *exclude* cache reads and writes::

    {"input_tokens": 21, "cache_creation_input_tokens": 188086, "cache_read_input_tokens": 0,
     "output_tokens": 393, "cache_creation": {"ephemeral_5m_input_tokens": 188086,
                                              "ephemeral_1h_input_tokens": 0}}

so prompt tokens = input + cache reads + cache writes. ``server_tool_use.web_search_requests``
are web searches (priced per search) and ``output_tokens_details.thinking_tokens`` the reasoning
part of the output, as genai-prices' extractor reads them. Streams send usage in
``message_start`` (input side, and an early output count) and cumulative counts in
``message_delta``; the later value of each field wins.
"""

from __future__ import annotations

import re
from typing import Any

from .._core.usage import Usage
from ._base import Parser, Result, StreamParser, as_int, as_str, loads, odd_count, served_as

__all__ = ["Messages", "VertexMessages", "messages_usage"]

_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def messages_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    fields = {k: as_int(u.get(k)) for k in _FIELDS}
    # A whole message's input or output count given as null, or missing: noted, not a silent 0 (only
    # a stream's message_delta states counts as null, meaning "not repeated here"; see _MessagesStream).
    if any(u.get(k) is None for k in ("input_tokens", "output_tokens")):
        odd_count(None, stated=True)
    _extras(u, fields)
    return _to_usage(fields, u.get("cache_creation"))


def _extras(u: dict[str, Any], fields: dict[str, int]) -> None:
    """Web searches and thinking tokens, where the usage reports them (later values win)."""
    tools = u.get("server_tool_use")
    if isinstance(tools, dict) and "web_search_requests" in tools:
        fields["web_searches"] = as_int(tools["web_search_requests"])
    details = u.get("output_tokens_details")
    if isinstance(details, dict) and "thinking_tokens" in details:
        fields["thinking_tokens"] = as_int(details["thinking_tokens"])


def _to_usage(f: dict[str, int], creation: Any) -> Usage:
    write = f["cache_creation_input_tokens"]
    read = f["cache_read_input_tokens"]
    write_1h = as_int(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, dict) else 0
    output = f["output_tokens"]
    return Usage(
        prompt_tokens=f["input_tokens"] + read + write,
        completion_tokens=output,
        cached_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=min(f.get("thinking_tokens", 0), output),
        cache_write_1h_tokens=min(write_1h, write),
        web_searches=f.get("web_searches", 0),
    )


def _answer(content: Any) -> list[str]:
    """The text, thinking and tool arguments of a message's content blocks."""
    import json

    texts: list[str] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                texts.append(block[key])
        if block.get("type") == "tool_use" and "input" in block:
            texts.append(json.dumps(block["input"], ensure_ascii=False))
    return texts


class _MessagesStream(StreamParser):
    """Usage comes in ``message_start`` (input, and a placeholder output count) and, cumulative,
    in ``message_delta``. Text deltas are kept until then, so a stream closed early is counted from
    the text the caller already received; Anthropic's deltas are several tokens each, so there
    are few of them to parse."""

    __slots__ = ("_creation", "_fields", "_tainted", "complete")

    def __init__(self) -> None:
        super().__init__()
        self._fields: dict[str, int] | None = None
        self._creation: Any = None
        self._tainted = False  # a bad count seen: the usage will be estimated, from the text
        self.complete = False

    def _merge(self, u: Any, stated: tuple[str, ...]) -> bool:
        """Merge a usage; ``False`` if a count in it is no token count (then noted, see ``as_int``).
        ``stated``: the counts this event must give (null or missing is then a bad count too)."""
        if not isinstance(u, dict):
            return False
        good = True
        for k in stated:
            if u.get(k) is None:
                odd_count(None, stated=True)
                good = False
        fields = self._fields if self._fields is not None else dict.fromkeys(_FIELDS, 0)
        for k in _FIELDS:
            if k in u and u[k] is not None:
                value = u[k]
                if not (type(value) is int and 0 <= value):
                    good = False  # as_int notes it, or takes an exact float or digit string
                fields[k] = as_int(value)
        if isinstance(u.get("cache_creation"), dict):
            self._creation = u["cache_creation"]
        if "speed" in u:
            self.result.context = served_as("speed", u["speed"])
        _extras(u, fields)
        self._fields = fields
        self.result.usage = _to_usage(fields, self._creation)
        return good

    def event(self, name: str, data: bytes) -> None:
        if self.complete and name == "content_block_delta":
            return
        obj = loads(data)
        if obj is None:
            return
        kind = obj.get("type") or name
        r = self.result
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                for key in ("text", "partial_json", "thinking"):
                    if isinstance(delta.get(key), str):
                        r.text.append(delta[key])
        elif kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                r.model = as_str(msg.get("model"))
                r.request_id = as_str(msg.get("id"))
                self._tainted = not self._merge(msg.get("usage"), ("input_tokens",))
        elif kind == "message_delta":
            good = self._merge(obj.get("usage"), ("output_tokens",))
            if obj.get("usage") is not None:
                self.complete = True
                if good and not self._tainted:  # else the text is what the output is counted from
                    r.text = []


class Messages(Parser):
    endpoint = "messages"
    provider = "anthropic"

    def body(self, obj: dict[str, Any]) -> Result | None:
        # OpenAI's Assistants API also POSTs to .../messages; its objects say "object": "thread.message".
        if "object" in obj or obj.get("type", "message") != "message":
            return None
        u = obj.get("usage")
        result = Result(as_str(obj.get("model")), messages_usage(u), as_str(obj.get("id")))
        if isinstance(u, dict) and "speed" in u:  # Opus's fast mode is priced apart
            result.context = served_as("speed", u["speed"])
        if result.usage is None:  # the answer, to count offline (kept only when there is no usage)
            result.text = _answer(obj.get("content"))
        return result

    def stream(self, request: bytes = b"") -> StreamParser:
        return _MessagesStream()

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        system = obj.get("system")
        if isinstance(system, str):
            texts.append(system)
        elif isinstance(system, list):
            texts.extend(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
        messages = obj.get("messages")
        count = 0
        if isinstance(messages, list):
            for m in messages:
                if not isinstance(m, dict):
                    continue
                count += 1
                content = m.get("content")
                if isinstance(content, str):
                    texts.append(content)
                elif isinstance(content, list):
                    for b in content:
                        if isinstance(b, dict) and isinstance(b.get("text"), str):
                            texts.append(b["text"])
        return texts, count


class VertexMessages(Messages):
    """Anthropic's Messages on Vertex AI: ``.../publishers/anthropic/models/{model}:rawPredict`` and
    ``:streamRawPredict``; the same bodies and streams, the model named in the URL (the request
    body has none)."""

    endpoint = "messages"

    def model_in_path(self, path: str) -> str | None:
        m = _VERTEX_MODEL.search(path)
        return m.group(1) if m else None


_VERTEX_MODEL = re.compile(r"/publishers/anthropic/models/([^/:]{1,256}):")
