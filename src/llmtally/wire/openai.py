"""OpenAI's wire formats: Chat Completions, Responses, Embeddings and legacy Completions.

The same formats are spoken by Azure OpenAI and by OpenAI-compatible servers (vLLM, Ollama, Groq,
Together, DeepSeek, gateways), so the served model is always taken from the response.

Chat Completions usage::

    {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
     "prompt_tokens_details": {"cached_tokens": 0},
     "completion_tokens_details": {"reasoning_tokens": 0}}

Streams carry it only in a last chunk with ``"choices": []`` when the request set
``stream_options.include_usage``. Responses API usage names the same things ``input_tokens`` /
``output_tokens`` with ``*_details``, and streams send it in ``response.completed``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .._core.usage import Usage
from ._base import (
    MAX_COUNT,
    Parser,
    Result,
    StreamParser,
    as_int,
    as_str,
    key_string,
    loads,
    object_after,
    odd_count,
    served_as,
)

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = [
    "ChatCompletions",
    "Completions",
    "Embeddings",
    "Responses",
    "chat_usage",
    "reported_cost",
    "responses_usage",
]


def _details(usage: dict[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return as_int(details.get(field)) if isinstance(details, dict) else 0


def chat_usage(u: Any) -> Usage | None:
    """Usage of Chat Completions, legacy Completions and Embeddings, in llmtally's convention."""
    if type(u) is not dict:
        return None
    # as_int written out: this runs for nearly every call, cold.
    prompt = u.get("prompt_tokens")
    if type(prompt) is not int or not 0 <= prompt <= MAX_COUNT:
        prompt = odd_count(prompt, "prompt_tokens" in u)
    completion = u.get("completion_tokens")
    if type(completion) is not int or not 0 <= completion <= MAX_COUNT:
        completion = odd_count(completion, "completion_tokens" in u)
    cached: Any = 0
    written = 0
    reasoning: Any = 0
    details = u.get("prompt_tokens_details")
    if type(details) is dict:
        cached = details.get("cached_tokens")
        if type(cached) is not int or not 0 <= cached <= MAX_COUNT:
            cached = odd_count(cached)
        if "cache_write_tokens" in details:  # OpenRouter, Azure: cache writes, part of the prompt
            written = min(as_int(details["cache_write_tokens"]), prompt - min(cached, prompt))
    if not cached and "prompt_cache_hit_tokens" in u:
        # DeepSeek reports cache hits at the top level.
        cached = as_int(u["prompt_cache_hit_tokens"])
    audio_in = audio_out = 0
    if type(details) is dict and details.get("audio_tokens"):  # prompt_tokens_details; 0 mostly
        audio_in = min(as_int(details["audio_tokens"]), prompt)
    details = u.get("completion_tokens_details")
    if type(details) is dict:
        reasoning = details.get("reasoning_tokens")
        if type(reasoning) is not int or not 0 <= reasoning <= MAX_COUNT:
            reasoning = odd_count(reasoning)
        if details.get("audio_tokens"):
            audio_out = as_int(details["audio_tokens"])
    elif "reasoning_tokens" in u:  # xAI's native usage: reasoning at the top level, beside the output
        reasoning = as_int(u["reasoning_tokens"])
        completion += reasoning
    if not cached and "cached_prompt_text_tokens" in u:  # xAI's native usage
        cached = as_int(u["cached_prompt_text_tokens"])
    if "citation_tokens" in u or "num_search_queries" in u:
        # Perplexity: citation tokens beside the completion (as its reasoning), and the searches run.
        return _perplexity(u, prompt, completion, cached, reasoning)
    if reasoning and type(details) is dict and u.get("total_tokens") == prompt + completion + reasoning:
        # xAI's chat API counts reasoning beside the completion too (its total says so).
        completion += reasoning
    if audio_in or audio_out:
        return Usage(
            prompt,
            completion,
            cached if cached <= prompt else prompt,
            written,
            reasoning if reasoning <= completion else completion,
            input_audio_tokens=audio_in,
            output_audio_tokens=min(audio_out, completion),
        )
    return Usage(
        prompt,
        completion,
        cached if cached <= prompt else prompt,
        written,
        reasoning if reasoning <= completion else completion,
    )


def _perplexity(u: dict[str, Any], prompt: int, completion: int, cached: int, reasoning: int) -> Usage:
    citations = as_int(u.get("citation_tokens"))
    completion += citations
    return Usage(
        prompt,
        completion,
        min(cached, prompt),
        0,
        min(reasoning, completion),
        citation_tokens=citations,
        web_searches=as_int(u.get("num_search_queries")),
    )


#: No single call costs this much: a larger "cost" is a unit mix-up or garbage, and would overflow
#: the ledger's integer picodollars (BIGINT holds $9.2 million).
_MAX_REPORTED_COST = 100_000


def reported_cost(u: Any) -> Decimal | None:
    """The provider's own cost of the call, in USD (OpenRouter's ``usage.cost``), if it says one.

    Read from the number JSON gave (a float: its shortest repr, 17 significant digits at most);
    anything that is not a finite number from 0 to $100,000 is no figure at all, and the call is
    priced by the catalogue as usual.
    """
    cost = u.get("cost") if type(u) is dict else None
    if cost is None or type(cost) not in (int, float):
        return None
    from decimal import Decimal

    value = Decimal(repr(cost))
    if not value.is_finite() or not 0 <= value <= _MAX_REPORTED_COST:
        return None
    return value if value else Decimal(0)  # -0.0 is 0


def responses_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    prompt = as_int(u.get("input_tokens"))
    completion = as_int(u.get("output_tokens"))
    cached = min(_details(u, "input_tokens_details", "cached_tokens"), prompt)
    written = min(_details(u, "input_tokens_details", "cache_write_tokens"), prompt - cached)
    reasoning = _details(u, "output_tokens_details", "reasoning_tokens")
    return Usage(prompt, completion, cached, written, min(reasoning, completion))


def _message_texts(messages: Any) -> tuple[list[str], int]:
    texts: list[str] = []
    count = 0
    if not isinstance(messages, list):
        return texts, count
    for m in messages:
        if not isinstance(m, dict):
            continue
        count += 1
        for key in ("role", "name"):
            if isinstance(m.get(key), str):
                texts.append(m[key])
        content = m.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    texts.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return texts, count


_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_NO_USAGE = re.compile(rb'"usage"\s*:\s*null')


class _ChatStream(StreamParser):
    """Chat and legacy completion chunks.

    When the request asked for usage, a chunk without a usage object is only counted, not parsed:
    JSON-decoding every token's chunk would cost more than the rest of the metering. If the usage
    promised never comes (a server that ignores ``include_usage``), the output is estimated as one
    token per content chunk, which is how OpenAI-style servers stream.
    """

    __slots__ = ("chunks", "skim")

    def __init__(self, skim: bool = False) -> None:
        super().__init__()
        self.skim = skim
        self.chunks = 0

    def event(self, name: str, data: bytes) -> None:
        r = self.result
        if (
            self.skim
            and r.model is not None
            and (data.endswith(b'"usage":null}') or b'"usage"' not in data or _NO_USAGE.search(data))
        ):
            if data != b"[DONE]":
                self.chunks += 1
            return
        obj = loads(data)
        if obj is None:
            return
        if not r.model:  # the first non-empty one: Azure's first chunk says "model": ""
            r.model = as_str(obj.get("model")) or None
            r.request_id = as_str(obj.get("id"))
        if r.context is None and "service_tier" in obj:
            r.context = served_as("service_tier", obj["service_tier"])
        usage = obj.get("usage")
        if not usage:
            # Groq's default streams carry usage only in their last chunk's x_groq.
            extra = obj.get("x_groq")
            usage = extra.get("usage") if isinstance(extra, dict) else None
        if usage:
            r.usage = chat_usage(usage)
            if "cost" in usage:
                r.cost = reported_cost(usage)
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return
        if self.skim:
            if choices:
                self.chunks += 1
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                # Legacy completions stream text at the choice level.
                text = choice.get("text")
                if isinstance(text, str):
                    r.text.append(text)
                continue
            for key in ("content", "reasoning_content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str):
                    r.text.append(text)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict):
                        r.text.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))


class ChatCompletions(Parser):
    endpoint = "chat.completions"
    provider = "openai"

    def body(self, obj: dict[str, Any]) -> Result | None:
        u = obj.get("usage")
        result = Result(as_str(obj.get("model")), chat_usage(u), as_str(obj.get("id")))
        if type(u) is dict and "cost" in u:
            result.cost = reported_cost(u)
        if "service_tier" in obj:  # OpenAI's flex and priority tiers are priced apart
            result.context = served_as("service_tier", obj["service_tier"])
        if result.usage is None:
            # A server that reports no usage: keep the answer's text to count it offline.
            for choice in obj.get("choices") or ():
                if isinstance(choice, dict):
                    msg = choice.get("message")
                    text = msg.get("content") if isinstance(msg, dict) else choice.get("text")
                    if isinstance(text, str):
                        result.text.append(text)
        return result

    def stream(self, request: bytes = b"") -> StreamParser:
        return _ChatStream(skim=_INCLUDE_USAGE.search(request) is not None)

    def fast_body(self, content: bytes) -> Result | None:
        # Chat, legacy completions and embeddings put "usage" last, at the top level; tool-call
        # arguments are JSON *strings*, so no other object here has a "usage" key. Decoding just
        # that object skips the answer's text and, for embeddings, every vector.
        u = object_after(content, b'"usage"')
        usage = chat_usage(u)
        if usage is None:
            return None
        result = Result(key_string(content, b'"model"'), usage, key_string(content, b'"id"'))
        if "cost" in u:
            result.cost = reported_cost(u)
        if b'"service_tier"' in content:
            result.context = served_as("service_tier", key_string(content, b'"service_tier"'))
        return result

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts, count = _message_texts(obj.get("messages"))
        tools = obj.get("tools")
        if isinstance(tools, list):
            import json

            texts.append(json.dumps(tools))
        return texts, count


class Completions(ChatCompletions):
    endpoint = "completions"

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        prompt = obj.get("prompt")
        if isinstance(prompt, str):
            return [prompt], 0
        if isinstance(prompt, list):
            return [p for p in prompt if isinstance(p, str)], 0
        return [], 0


class Embeddings(ChatCompletions):
    endpoint = "embeddings"

    def fast_body(self, content: bytes) -> Result | None:
        result = super().fast_body(content)
        if result is not None and result.usage is not None:
            result.usage.completion_tokens = result.usage.reasoning_tokens = 0
            result.request_id = None
        return result

    def body(self, obj: dict[str, Any]) -> Result | None:
        u = obj.get("usage")
        usage = chat_usage(u)
        if usage is not None:
            usage.completion_tokens = usage.reasoning_tokens = 0
        return Result(as_str(obj.get("model")), usage, None, cost=reported_cost(u))


class _ResponsesStream(StreamParser):
    """Responses streams always end with usage in ``response.completed``: deltas (most events) are
    counted, not parsed; a stream cut before the end is estimated at one token per delta."""

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        super().__init__()
        self.chunks = 0

    def event(self, name: str, data: bytes) -> None:
        if name.endswith(".delta"):
            self.chunks += 1
            return
        obj = loads(data)
        if obj is None:
            return
        kind = obj.get("type") or name
        r = self.result
        if kind.endswith(".delta") if isinstance(kind, str) else False:
            self.chunks += 1
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        r.model = as_str(response.get("model")) or r.model
        r.request_id = as_str(response.get("id")) or r.request_id
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            usage = responses_usage(response.get("usage"))
            if usage is not None:
                r.usage = usage
            r.context = served_as("service_tier", response.get("service_tier")) or r.context


class Responses(Parser):
    endpoint = "responses"
    provider = "openai"

    def body(self, obj: dict[str, Any]) -> Result | None:
        if obj.get("object", "response") != "response":
            return None
        result = Result(as_str(obj.get("model")), responses_usage(obj.get("usage")), as_str(obj.get("id")))
        result.context = served_as("service_tier", obj.get("service_tier"))
        return result

    def stream(self, request: bytes = b"") -> StreamParser:
        return _ResponsesStream()

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        if isinstance(obj.get("instructions"), str):
            texts.append(obj["instructions"])
        inp = obj.get("input")
        if isinstance(inp, str):
            return [*texts, inp], 1
        more, count = _message_texts(inp)
        return texts + more, count
