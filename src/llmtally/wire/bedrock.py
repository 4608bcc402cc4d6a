"""Amazon Bedrock's runtime API: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

``POST /model/{modelId}/converse`` (and ``/converse-stream``, ``/invoke``,
``/invoke-with-response-stream``); the model is in the URL, percent-encoded (``...-v1%3A0``), with
any cross-region prefix (``us.``, ``eu.``, ``global.``) or an inference profile's ARN. Streams are
AWS event streams (``_eventstream.py``).

Converse reports ``usage`` whose ``inputTokens`` *exclude* cache reads and writes, as Anthropic's
do: prompt = input + cacheRead + cacheWrite (genai-prices' ``aws`` extractor reads it the same way);
``cacheDetails`` splits the writes by lifetime. InvokeModel answers in each model family's own
body: Anthropic's Messages (usage as Anthropic's), Nova (``usage`` as Converse's), Llama
(``prompt_token_count`` / ``generation_token_count``), Titan (``inputTextTokenCount``, each
result's ``tokenCount``); Mistral's and others' bodies carry no usage, so Bedrock's response headers
(``X-Amzn-Bedrock-Input-Token-Count``, ...) count those. Streamed InvokeModel chunks carry the
family's events base64-encoded, and the last one Bedrock's ``amazon-bedrock-invocationMetrics``.

The served model is the URL's, never a body's: the catalogue prices Bedrock by its model ids
(a ``global.`` profile and a regional one cost differently), which the bodies do not repeat.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import unquote

from .._core.usage import Usage
from ._base import Parser, Result, StreamParser, as_int, loads
from .anthropic import Messages, messages_usage

__all__ = ["Converse", "InvokeModel", "bedrock_model", "converse_usage"]

_ACTIONS = ("/converse", "/converse-stream", "/invoke", "/invoke-with-response-stream")
_MODEL = re.compile(r"/model/([^/]{1,2048})/(?:converse|converse-stream|invoke|invoke-with-response-stream)$")
#: Bedrock's own token counts, on every InvokeModel answer (lower-case: how adapters look them up).
HEADERS = (
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-cache-read-input-token-count",
    "x-amzn-bedrock-cache-write-input-token-count",
)

#: The names of the same counts in ``amazon-bedrock-invocationMetrics``.
_COUNTS = ("inputTokenCount", "outputTokenCount", "cacheReadInputTokenCount", "cacheWriteInputTokenCount")


def is_bedrock(path: str) -> bool:
    return "/model/" in path and path.endswith(_ACTIONS)


def bedrock_model(path: str) -> str | None:
    """The model id in a Bedrock runtime URL; an ARN's resource name (the profile or model id)."""
    m = _MODEL.search(path)
    if m is None:
        return None
    model = unquote(m.group(1))
    if model.startswith("arn:"):
        resource = model.split(":", 5)[-1]
        if resource.startswith("custom-model/") and resource.count("/") >= 2:
            return resource  # custom-model/BASE/ID: priced from its base unless its own price is set
        model = model.rsplit("/", 1)[-1]
    return model or None


def converse_usage(u: Any) -> Usage | None:
    """Converse's (and Nova's) usage: ``inputTokens`` exclude the cache reads and writes."""
    if not isinstance(u, dict):
        return None
    read = as_int(u.get("cacheReadInputTokens", u.get("cacheReadInputTokenCount")))
    write = as_int(u.get("cacheWriteInputTokens", u.get("cacheWriteInputTokenCount")))
    write_1h = 0
    details = u.get("cacheDetails")
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and d.get("ttl") == "1h":
                write_1h += as_int(d.get("inputTokens"))
    return Usage(
        prompt_tokens=as_int(u.get("inputTokens")) + read + write,
        completion_tokens=as_int(u.get("outputTokens")),
        cached_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write_1h, write),
    )


def _counts_usage(counts: dict[str, Any]) -> Usage | None:
    """Bedrock's own counts (headers, ``amazon-bedrock-invocationMetrics``): ``inputTokenCount``
    excludes the cache parts, as Converse's ``inputTokens`` do."""
    if "inputTokenCount" not in counts and "outputTokenCount" not in counts:
        return None
    read = as_int(counts.get("cacheReadInputTokenCount"))
    write = as_int(counts.get("cacheWriteInputTokenCount"))
    return Usage(
        prompt_tokens=as_int(counts.get("inputTokenCount")) + read + write,
        completion_tokens=as_int(counts.get("outputTokenCount")),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def _header_int(value: str | None) -> int:
    return as_int(value)  # text, as every header: as_int takes it when it is a whole number


class _Bedrock(Parser):
    provider = "aws"
    eventstream = True

    def model_in_path(self, path: str) -> str | None:
        return bedrock_model(path)

    def headers_usage(self, headers: dict[str, str]) -> Usage | None:
        if HEADERS[0] not in headers and HEADERS[1] not in headers:
            return None
        counts = {n: _header_int(headers.get(h)) for n, h in zip(_COUNTS, HEADERS, strict=True)}
        return _counts_usage(counts)

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        for key in ("prompt", "inputText"):  # Llama, Mistral; Titan
            if isinstance(obj.get(key), str):
                texts.append(obj[key])
        system = obj.get("system")
        if isinstance(system, list):  # Converse and Nova: [{"text": ...}]
            texts.extend(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
        anthropic_texts, count = Messages().request_text({k: v for k, v in obj.items() if k != "system"})
        if isinstance(system, str):
            texts.append(system)
        texts.extend(anthropic_texts)
        messages = obj.get("messages")
        if isinstance(messages, list):  # Converse content blocks are {"text": ...} without a type
            for m in messages:
                content = m.get("content") if isinstance(m, dict) else None
                if isinstance(content, list):
                    texts.extend(
                        b["text"]
                        for b in content
                        if isinstance(b, dict) and "type" not in b and isinstance(b.get("text"), str)
                    )
        return texts, count


class Converse(_Bedrock):
    endpoint = "converse"

    def body(self, obj: dict[str, Any]) -> Result | None:
        return Result(None, converse_usage(obj.get("usage")), None)

    def stream(self, request: bytes = b"") -> StreamParser:
        return _ConverseStream()


class _ConverseStream(StreamParser):
    """Text in ``contentBlockDelta``; usage in the last event, ``metadata``."""

    __slots__ = ()

    def event(self, name: str, data: bytes) -> None:
        if name == "contentBlockDelta":
            obj = loads(data)
            delta = obj.get("delta") if obj is not None else None
            if isinstance(delta, dict):
                for key in ("text", "reasoningContent", "toolUse"):
                    value = delta.get(key)
                    if isinstance(value, dict):
                        value = value.get("text") or value.get("input")
                    if isinstance(value, str):
                        self.result.text.append(value)
        elif name == "metadata":
            obj = loads(data)
            if obj is not None:
                usage = converse_usage(obj.get("usage"))
                if usage is not None:
                    self.result.usage = usage
                    self.result.text = []


class InvokeModel(_Bedrock):
    endpoint = "invoke_model"
    headers = HEADERS

    def body(self, obj: dict[str, Any]) -> Result | None:
        return Result(None, family_usage(obj), None)

    def stream(self, request: bytes = b"") -> StreamParser:
        return _InvokeStream()


def family_usage(obj: dict[str, Any]) -> Usage | None:
    """The usage in a model family's own InvokeModel body, or ``None`` where it reports none."""
    usage = obj.get("usage")
    if obj.get("type") == "message":  # Anthropic
        return messages_usage(usage)
    if isinstance(usage, dict) and "inputTokens" in usage:  # Nova
        return converse_usage(usage)
    if "prompt_token_count" in obj or "generation_token_count" in obj:  # Llama
        return Usage(as_int(obj.get("prompt_token_count")), as_int(obj.get("generation_token_count")))
    if "inputTextTokenCount" in obj:  # Titan text and embeddings
        results = obj.get("results")
        out = 0
        if isinstance(results, list):
            out = sum(as_int(r.get("tokenCount")) for r in results if isinstance(r, dict))
        return Usage(as_int(obj.get("inputTextTokenCount")), out)
    return None


class _InvokeStream(StreamParser):
    """``chunk`` events whose ``bytes`` are the family's own stream events, base64-encoded.

    Anthropic's are read by Anthropic's stream parser (its usage has the cache lifetimes); every
    family's last chunk carries Bedrock's ``amazon-bedrock-invocationMetrics``, which count the
    others.
    """

    __slots__ = ("_anthropic", "_metrics", "complete")

    def __init__(self) -> None:
        super().__init__()
        self._anthropic: StreamParser | None = None
        self._metrics: Usage | None = None
        self.complete = True

    def event(self, name: str, data: bytes) -> None:
        if name != "chunk":
            return
        outer = loads(data)
        raw = outer.get("bytes") if outer is not None else None
        if not isinstance(raw, str):
            return
        try:
            inner = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return
        obj = loads(inner)
        if obj is None:
            return
        metrics = obj.get("amazon-bedrock-invocationMetrics")
        if isinstance(metrics, dict):
            self._metrics = _counts_usage(metrics)
        if isinstance(obj.get("type"), str):  # Anthropic's events
            if self._anthropic is None:
                self._anthropic = Messages().stream()
            self._anthropic.event(obj["type"], inner)
        else:
            _family_text(obj, self.result.text)
        self._settle()

    def _settle(self) -> None:
        anthropic = self._anthropic
        result = self.result
        self.complete = self._metrics is not None or anthropic is None or anthropic.complete
        if anthropic is not None:
            result.text = anthropic.result.text
            if anthropic.complete or self._metrics is None:
                result.usage = anthropic.result.usage
                return
        if self._metrics is not None:
            result.usage = self._metrics


def _family_text(obj: dict[str, Any], out: list[str]) -> None:
    for key in ("generation", "outputText", "completion"):  # Llama; Titan; older Anthropic
        if isinstance(obj.get(key), str):
            out.append(obj[key])
    outputs = obj.get("outputs")  # Mistral
    if isinstance(outputs, list):
        out.extend(o["text"] for o in outputs if isinstance(o, dict) and isinstance(o.get("text"), str))
    delta = obj.get("contentBlockDelta")  # Nova
    if isinstance(delta, dict) and isinstance(delta.get("delta"), dict):
        text = delta["delta"].get("text")
        if isinstance(text, str):
            out.append(text)
