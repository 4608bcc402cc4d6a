"""Google's Gemini API and Vertex AI: ``generateContent``, ``streamGenerateContent`` and embeddings.

The model is named in the URL, not the body::

    POST /v1beta/models/gemini-2.5-flash:generateContent                        (Gemini API)
    POST /v1/projects/P/locations/L/publishers/google/models/gemini-2.5-pro:streamGenerateContent

Usage is ``usageMetadata``::

    {"promptTokenCount": 1200, "cachedContentTokenCount": 1000, "candidatesTokenCount": 80,
     "thoughtsTokenCount": 300, "toolUsePromptTokenCount": 40, "totalTokenCount": 1620}

``promptTokenCount`` includes the cached tokens; thoughts are reported *beside* the candidates, and
tool-use prompt tokens beside the prompt. So, in llmtally's convention (as genai-prices' own
extractor reads it): prompt = prompt + tool-use prompt, completion = candidates + thoughts,
reasoning = thoughts, cached = cached content. Streams (``?alt=sse``, or a JSON array without it)
repeat ``usageMetadata`` in their chunks, cumulative: the last one wins.

Embeddings (`EmbedContent`) are ``:embedContent`` and ``:batchEmbedContents`` (usage in
``usageMetadata.promptTokenCount``) and, on Vertex AI, ``:predict`` for Google's embedding models
(``predictions[].embeddings.statistics.token_count``, summed). A response without either, as the
Gemini API sends for older models, is counted offline from the request's text, marked estimated.
"""

from __future__ import annotations

import re
from typing import Any

from .._core.usage import Usage
from ._base import Parser, Result, StreamParser, as_int, as_str, loads, odd_count

__all__ = ["EmbedContent", "GenerateContent", "gemini_usage", "is_vertex_embedding", "model_in_path"]

_MODEL_IN_PATH = re.compile(r"/models/([^/:]{1,256}):")
_VERTEX_EMBEDDING = re.compile(r"/publishers/google/models/[^/:]*embedding[^/:]*:predict$")


def is_vertex_embedding(path: str) -> bool:
    """Vertex AI's ``:predict`` for one of Google's embedding models (it serves other models too)."""
    return _VERTEX_EMBEDDING.search(path) is not None


def model_in_path(path: str) -> str | None:
    m = _MODEL_IN_PATH.search(path)
    return m.group(1) if m else None


def gemini_usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    if u.get("promptTokenCount") is None or (
        "candidatesTokenCount" in u and u["candidatesTokenCount"] is None
    ):
        # Its very token count missing or null: noted, not a silent 0 (no output count at all is
        # an answer of no tokens, as a blocked prompt's).
        odd_count(None, stated=True)
    prompt = as_int(u.get("promptTokenCount")) + as_int(u.get("toolUsePromptTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    completion = as_int(u.get("candidatesTokenCount")) + thoughts
    cached = min(as_int(u.get("cachedContentTokenCount")), prompt)
    usage = Usage(prompt, completion, cached, 0, thoughts)
    if "promptTokensDetails" in u or "candidatesTokensDetails" in u:
        # Per modality, as genai-prices reads them: documents are priced as images.
        inputs = (u.get("promptTokensDetails"), u.get("toolUsePromptTokensDetails"))
        usage.input_audio_tokens = min(sum(_modality(d, "AUDIO") for d in inputs), prompt)
        usage.input_image_tokens = min(sum(_modality(d, "IMAGE", "DOCUMENT") for d in inputs), prompt)
        usage.cached_audio_tokens = min(_modality(u.get("cacheTokensDetails"), "AUDIO"), cached)
        drawn = u.get("candidatesTokensDetails")
        usage.output_audio_tokens = min(_modality(drawn, "AUDIO"), completion)
        usage.output_image_tokens = min(_modality(drawn, "IMAGE", "DOCUMENT"), completion)
    return usage


def _modality(details: Any, *names: str) -> int:
    """The tokens of ``names`` in a ``[{"modality": ..., "tokenCount": ...}]`` list."""
    if not isinstance(details, list):
        return 0
    return sum(
        as_int(d.get("tokenCount")) for d in details if isinstance(d, dict) and d.get("modality") in names
    )


def _read(obj: dict[str, Any], r: Result) -> None:
    """One response (or one stream chunk) into ``r``: model, id, usage, and the answer's text."""
    r.model = as_str(obj.get("modelVersion")) or r.model
    r.request_id = as_str(obj.get("responseId")) or r.request_id
    usage = gemini_usage(obj.get("usageMetadata"))
    if usage is not None:
        r.usage = usage
    for candidate in obj.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                r.text.append(part["text"])


class _GeminiStream(StreamParser):
    """Each SSE event is a whole response chunk; its usage is cumulative, so the last one wins."""

    __slots__ = ()

    def event(self, name: str, data: bytes) -> None:
        obj = loads(data)
        if obj is not None:
            _read(obj, self.result)


class GenerateContent(Parser):
    endpoint = "generate_content"
    provider = "google"
    arrays = True

    def body(self, obj: Any) -> Result | None:
        r = Result()
        # A stream without ?alt=sse is one JSON array of chunks, read whole.
        for chunk in obj if isinstance(obj, list) else (obj,):
            if isinstance(chunk, dict):
                _read(chunk, r)
        if r.usage is not None:
            r.text = []
        return r

    def stream(self, request: bytes = b"") -> StreamParser:
        return _GeminiStream()

    def model_in_path(self, path: str) -> str | None:
        return model_in_path(path)

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        count = 0
        system = obj.get("systemInstruction") or obj.get("system_instruction")
        for content in [system, *(obj.get("contents") or ())]:
            if not isinstance(content, dict):
                continue
            count += 1
            for part in content.get("parts") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        return texts, count


def _parts_text(content: Any, texts: list[str]) -> None:
    if isinstance(content, str):
        texts.append(content)
        return
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])


class EmbedContent(Parser):
    endpoint = "embeddings"
    provider = "google"

    def body(self, obj: Any) -> Result | None:
        if not isinstance(obj, dict):
            return None
        usage = obj.get("usageMetadata")
        count = usage.get("promptTokenCount") if isinstance(usage, dict) else None
        if type(count) is int and count >= 0:
            return Result(usage=Usage(count, 0))
        predictions = obj.get("predictions")
        if isinstance(predictions, list):
            counts = [_token_count(p) for p in predictions]
            if counts and None not in counts:
                return Result(usage=Usage(sum(c for c in counts if c is not None), 0))
        return Result()

    def model_in_path(self, path: str) -> str | None:
        return model_in_path(path)

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        texts: list[str] = []
        _parts_text(obj.get("content"), texts)  # :embedContent
        for request in obj.get("requests") or ():  # :batchEmbedContents
            if isinstance(request, dict):
                _parts_text(request.get("content"), texts)
        for instance in obj.get("instances") or ():  # Vertex :predict
            if isinstance(instance, dict):
                _parts_text(instance.get("content"), texts)
        return texts, 0


def _token_count(prediction: Any) -> int | None:
    embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
    stats = embeddings.get("statistics") if isinstance(embeddings, dict) else None
    count = stats.get("token_count") if isinstance(stats, dict) else None
    # Predictions are a protobuf Struct: its numbers are doubles, which as_int takes when exact.
    return None if count is None else as_int(count)
