"""What the fake provider is told to say (`Reply`, `ToolCall`) and what it was asked (`FakeRequest`).

Token counts the script leaves out are computed deterministically, one token per
whitespace-separated word, so a test can predict them without a tokenizer:

* prompt tokens: the words in every string under the request's ``messages``, ``input``,
  ``prompt``, ``system`` and ``instructions`` (following ``content``/``text``/``arguments``
  inside message objects), plus one per token id; at least 1.
* completion tokens: the words in the reply text, plus, per tool call, the words of its name
  and of its JSON arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["FakeRequest", "Reply", "Tokens", "ToolCall", "count_prompt_tokens", "resolve_tokens"]


@dataclass
class ToolCall:
    """A function call the fake model makes, e.g. ``ToolCall("search", {"query": "x"})``.

    ``arguments`` may be a string to send arguments verbatim (malformed JSON included);
    ``id`` defaults to a fresh provider-style id (``call_...`` / ``toolu_...``).
    """

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    def arguments_json(self) -> str:
        """The arguments as the JSON string OpenAI puts on the wire."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)

    def arguments_dict(self) -> Any:
        """The arguments as the object Anthropic puts on the wire (``{}`` if they don't parse)."""
        if not isinstance(self.arguments, str):
            return self.arguments
        try:
            return json.loads(self.arguments)
        except ValueError:
            return {}


@dataclass
class Reply:
    """One scripted answer. Every field is optional; the defaults make a plain, successful reply.

    ``text`` defaults to ``"ok"``, or to no text at all when ``tool_calls`` are given.
    ``prompt_tokens`` is always the TOTAL input, cache reads and writes included (OpenAI's
    convention); the Anthropic wire format subtracts the cache parts for ``input_tokens``.
    ``reasoning_tokens`` is part of ``completion_tokens``; ``cache_write_1h_tokens`` is the part of
    ``cache_write_tokens`` written with a one-hour TTL (Anthropic only).

    ``include_usage=None`` behaves like the real provider (OpenAI chat/completions streams carry
    usage only when the request sets ``stream_options.include_usage``; Responses and Anthropic
    streams always do); ``True`` forces usage in; ``False`` leaves it out everywhere, bodies included
    (no real provider does that to Anthropic messages, and the anthropic SDK's ``messages.stream``
    helper fails on it; iterate ``messages.create(stream=True)`` instead).

    ``status >= 400`` answers with ``error`` in the provider's error JSON shape. ``chunks`` splits the
    streamed text into exactly that many pieces (some may be empty); by default a stream sends about one
    piece per word. ``delay`` waits before answering, ``cut_stream_after`` drops the connection after
    that many stream events, and ``garbage`` is sent raw instead of any valid body or stream.
    ``request_id`` becomes the ``x-request-id`` (OpenAI) or ``request-id`` (Anthropic) header and the
    body id. ``headers`` are added to the response as they are. ``cost`` is the cost a provider that
    reports its own puts in ``usage.cost`` (OpenRouter, at ``/api/v1/chat/completions``), as a
    decimal string such as ``"0.0042"``. ``service_tier`` is what an OpenAI answer says it was served
    at (``"flex"``, ``"priority"``; OpenAI sends ``"default"`` otherwise).

    ``encoding`` sends the answer with that ``Content-Encoding``, whatever the client accepts:
    ``"gzip"``, ``"deflate"``, ``"br"``, ``"zstd"``, or several applied in turn (``"gzip, br"``).
    A stream is compressed event by event and flushed after each, so each chunk decodes on its own
    as it arrives; ``garbage`` is compressed too. br needs ``brotli`` or ``brotlicffi``; zstd needs
    ``zstandard`` or ``backports.zstd`` (the standard library's ``compression.zstd`` from 3.14).
    """

    text: str | None = None
    tool_calls: list[ToolCall] | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    include_usage: bool | None = None
    status: int = 200
    error: str | None = None
    chunks: int | None = None
    finish_reason: str | None = None
    embedding_dim: int = 8
    delay: float = 0.0
    cut_stream_after: int | None = None
    garbage: bytes | None = None
    request_id: str | None = None
    headers: dict[str, str] | None = None
    cost: str | None = None
    service_tier: str | None = None
    encoding: str | None = None

    @property
    def content(self) -> str:
        """The text the model says: ``text``, else ``"ok"`` unless the reply is only tool calls."""
        if self.text is not None:
            return self.text
        return "" if self.tool_calls else "ok"


@dataclass
class FakeRequest:
    """A request the fake provider received, as the SDK sent it.

    ``headers`` has lower-case keys; ``json`` is the parsed body (``None`` if it was not JSON);
    ``stream`` is true when the body asked for a streamed answer.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    query: dict[str, str] = field(default_factory=dict)
    json: Any = None

    @property
    def stream(self) -> bool:
        return isinstance(self.json, dict) and self.json.get("stream") is True

    @property
    def model(self) -> str | None:
        """The ``model`` the request named, if any."""
        if isinstance(self.json, dict) and isinstance(self.json.get("model"), str):
            return str(self.json["model"])
        return None


class Tokens(NamedTuple):
    """The token counts one reply reports, with the script's blanks filled in."""

    prompt: int
    completion: int
    cached: int
    cache_write: int
    cache_write_1h: int
    reasoning: int


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1  # a token id, as in `prompt=[[1, 2, 3]]` or embeddings of token ids
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(value[k]) for k in ("content", "text", "input", "arguments", "parts") if k in value)
    return 0


def count_prompt_tokens(body: Any) -> int:
    """The default prompt token count for a request body (see the module docstring)."""
    if not isinstance(body, dict):
        return 1
    keys = ("messages", "input", "prompt", "system", "instructions", "contents", "systemInstruction", "texts")
    return max(1, sum(_words(body.get(k)) for k in keys))


def resolve_tokens(reply: Reply, request: FakeRequest) -> Tokens:
    """The counts ``reply`` reports for ``request``, defaults computed."""
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = count_prompt_tokens(request.json)
    completion = reply.completion_tokens
    if completion is None:
        completion = len(reply.content.split()) + sum(
            len(call.name.split()) + len(call.arguments_json().split()) for call in reply.tool_calls or ()
        )
    return Tokens(
        prompt=prompt,
        completion=completion,
        cached=reply.cached_tokens,
        cache_write=reply.cache_write_tokens,
        cache_write_1h=reply.cache_write_1h_tokens,
        reasoning=reply.reasoning_tokens,
    )
