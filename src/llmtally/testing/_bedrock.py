"""Amazon Bedrock runtime's wire format: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream (each model family's own bodies), AWS event-stream frames, errors.

``POST /model/{modelId}/converse`` (``/converse-stream``, ``/invoke``,
``/invoke-with-response-stream``). Converse's ``inputTokens``, like Anthropic's ``input_tokens``,
exclude the cache reads and writes; so do Bedrock's ``X-Amzn-Bedrock-*-Token-Count`` headers and the
``amazon-bedrock-invocationMetrics`` a streamed InvokeModel ends with. The family of an InvokeModel
answer is the model id's: ``anthropic.`` (Messages), ``meta.`` (Llama), ``mistral.``,
``amazon.titan-text``, ``amazon.titan-embed``, ``amazon.nova``; any other gets a body without usage
and only the headers, as Mistral's and Cohere's do.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from . import _anthropic
from ._script import FakeRequest, Reply, Tokens, resolve_tokens
from ._wire import Answer, dumps, json_answer, new_id, split_text

__all__ = ["converse", "error", "event_frame", "invoke", "model_in_path"]

_MODEL = re.compile(r"/model/([^/]+)/(?:converse|converse-stream|invoke|invoke-with-response-stream)$")
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_STOP = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def model_in_path(path: str) -> str | None:
    m = _MODEL.search(path)
    return unquote(m.group(1)) if m else None


def _headers(reply: Reply) -> dict[str, str]:
    return {"x-amzn-requestid": reply.request_id or new_id("")}


def error(reply: Reply, message: str) -> Answer:
    """An error as botocore reads it: the type in ``x-amzn-ErrorType``, ``{"message": ...}``."""
    kind = _ERRORS.get(
        reply.status, "InternalServerException" if reply.status >= 500 else "ValidationException"
    )
    headers = {
        **_headers(reply),
        "x-amzn-errortype": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
    }
    return json_answer(reply, reply.status, {"message": message}, headers)


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total and header lengths, CRC), string headers,
    payload, and the CRC of all that."""
    encoded = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _event(kind: str, obj: Any) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return event_frame(headers, dumps(obj))


def _stream(reply: Reply, frames: Iterator[bytes], headers: dict[str, str]) -> Answer:
    answer = Answer(headers={"content-type": _EVENTSTREAM, **headers, **(reply.headers or {})})
    if reply.garbage is not None:
        answer.events = [reply.garbage]
    elif reply.cut_stream_after is not None:
        answer.events = (f for i, f in enumerate(frames) if i < (reply.cut_stream_after or 0))
        answer.truncated = True
    else:
        answer.events = frames
    answer.delay = reply.delay
    return answer


# -- Converse -----------------------------------------------------------------------------------
def _converse_usage(t: Tokens) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "inputTokens": t.prompt - t.cached - t.cache_write,
        "outputTokens": t.completion,
        "totalTokens": t.prompt + t.completion,
    }
    if t.cached:
        usage["cacheReadInputTokens"] = t.cached
    if t.cache_write:
        usage["cacheWriteInputTokens"] = t.cache_write
        usage["cacheDetails"] = [
            {"ttl": ttl, "inputTokens": n}
            for ttl, n in (("5m", t.cache_write - t.cache_write_1h), ("1h", t.cache_write_1h))
            if n
        ]
    return usage


def _stop(reply: Reply) -> str:
    default = "tool_use" if reply.tool_calls else "end_turn"
    return _STOP.get(reply.finish_reason or "", reply.finish_reason or default)


def converse(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``/converse`` and ``/converse-stream``."""
    tokens = resolve_tokens(reply, request)
    if not request.path.endswith("/converse-stream"):
        content: list[dict[str, Any]] = []
        if reply.content or not reply.tool_calls:
            content.append({"text": reply.content})
        for call in reply.tool_calls or ():
            tool = {
                "toolUseId": call.id or new_id("tooluse_"),
                "name": call.name,
                "input": call.arguments_dict(),
            }
            content.append({"toolUse": tool})
        body: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": _stop(reply),
            "metrics": {"latencyMs": 120},
        }
        if reply.include_usage is not False:
            body["usage"] = _converse_usage(tokens)
        return json_answer(reply, 200, body, _headers(reply))
    return _stream(reply, _converse_events(reply, tokens), _headers(reply))


def _converse_events(reply: Reply, tokens: Tokens) -> Iterator[bytes]:
    yield _event("messageStart", {"role": "assistant"})
    index = 0
    if reply.content or not reply.tool_calls:
        for piece in split_text(reply.content, reply.chunks):
            yield _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
        yield _event("contentBlockStop", {"contentBlockIndex": 0})
        index = 1
    for i, call in enumerate(reply.tool_calls or (), start=index):
        start = {"toolUse": {"toolUseId": call.id or new_id("tooluse_"), "name": call.name}}
        yield _event("contentBlockStart", {"contentBlockIndex": i, "start": start})
        arguments = json.dumps(call.arguments_dict())
        yield _event(
            "contentBlockDelta", {"contentBlockIndex": i, "delta": {"toolUse": {"input": arguments}}}
        )
        yield _event("contentBlockStop", {"contentBlockIndex": i})
    yield _event("messageStop", {"stopReason": _stop(reply)})
    if reply.include_usage is not False:
        yield _event("metadata", {"usage": _converse_usage(tokens), "metrics": {"latencyMs": 120}})


# -- InvokeModel --------------------------------------------------------------------------------
def _family(model: str) -> str:
    for family in (
        "anthropic.",
        "meta.",
        "mistral.",
        "amazon.titan-text",
        "amazon.titan-embed",
        "amazon.nova",
    ):
        if family in model:
            return family.rstrip(".")
    return "other"


def _count_headers(tokens: Tokens) -> dict[str, str]:
    headers = {
        "x-amzn-bedrock-input-token-count": str(tokens.prompt - tokens.cached - tokens.cache_write),
        "x-amzn-bedrock-output-token-count": str(tokens.completion),
        "x-amzn-bedrock-invocation-latency": "120",
    }
    if tokens.cached:
        headers["x-amzn-bedrock-cache-read-input-token-count"] = str(tokens.cached)
    if tokens.cache_write:
        headers["x-amzn-bedrock-cache-write-input-token-count"] = str(tokens.cache_write)
    return headers


def _metrics(tokens: Tokens) -> dict[str, Any]:
    metrics = {
        "inputTokenCount": tokens.prompt - tokens.cached - tokens.cache_write,
        "outputTokenCount": tokens.completion,
        "invocationLatency": 120,
        "firstByteLatency": 40,
    }
    if tokens.cached:
        metrics["cacheReadInputTokenCount"] = tokens.cached
    if tokens.cache_write:
        metrics["cacheWriteInputTokenCount"] = tokens.cache_write
    return metrics


def invoke(request: FakeRequest, reply: Reply, model: str) -> Answer:
    """``/invoke`` and ``/invoke-with-response-stream``, in the model family's own shapes."""
    tokens = resolve_tokens(reply, request)
    family = _family(model)
    headers = _headers(reply)
    if reply.include_usage is not False:
        headers.update(_count_headers(tokens))
    streamed = request.path.endswith("/invoke-with-response-stream")
    if family == "anthropic":
        body, tokens = _anthropic.message(request, reply, model.split("anthropic.", 1)[-1])
        if not streamed:
            return json_answer(reply, 200, body, headers)
        chunks = list(_anthropic.stream_events(reply, body, tokens))
    elif not streamed:
        return json_answer(reply, 200, _family_body(family, reply, tokens), headers)
    else:
        chunks = list(_family_chunks(family, reply, tokens))
    if reply.include_usage is not False:
        chunks[-1] = {**chunks[-1], "amazon-bedrock-invocationMetrics": _metrics(tokens)}
    frames = (_event("chunk", {"bytes": base64.b64encode(dumps(c)).decode()}) for c in chunks)
    # A stream's counts come at its end, not in its headers.
    return _stream(reply, frames, {k: v for k, v in headers.items() if "token-count" not in k})


def _family_body(family: str, reply: Reply, t: Tokens) -> dict[str, Any]:
    text = reply.content
    if family == "meta":
        return {
            "generation": text,
            "prompt_token_count": t.prompt,
            "generation_token_count": t.completion,
            "stop_reason": "stop",
        }
    if family == "amazon.titan-text":
        result = {"tokenCount": t.completion, "outputText": text, "completionReason": "FINISH"}
        return {"inputTextTokenCount": t.prompt, "results": [result]}
    if family == "amazon.titan-embed":
        return {"embedding": [0.1, -0.2, 0.3], "inputTextTokenCount": t.prompt}
    if family == "amazon.nova":
        usage = {
            "inputTokens": t.prompt - t.cached - t.cache_write,
            "outputTokens": t.completion,
            "totalTokens": t.prompt + t.completion,
            "cacheReadInputTokenCount": t.cached,
            "cacheWriteInputTokenCount": t.cache_write,
        }
        message = {"role": "assistant", "content": [{"text": text}]}
        return {"output": {"message": message}, "stopReason": "end_turn", "usage": usage}
    # Mistral and the rest: no usage in the body; Bedrock's headers count it.
    return {"outputs": [{"text": text, "stop_reason": "stop"}]}


def _family_chunks(family: str, reply: Reply, t: Tokens) -> Iterator[dict[str, Any]]:
    pieces = split_text(reply.content, reply.chunks) or [""]
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        if family == "meta":
            yield {
                "generation": piece,
                "prompt_token_count": t.prompt if i == 0 else None,
                "generation_token_count": i + 1,
                "stop_reason": "stop" if i == last else None,
            }
        elif family == "amazon.titan-text":
            yield {
                "outputText": piece,
                "index": 0,
                "totalOutputTextTokenCount": t.completion if i == last else i + 1,
                "completionReason": "FINISH" if i == last else None,
                "inputTextTokenCount": t.prompt if i == 0 else None,
            }
        elif family == "amazon.nova":
            if i == 0:
                yield {"messageStart": {"role": "assistant"}}
            yield {"contentBlockDelta": {"delta": {"text": piece}, "contentBlockIndex": 0}}
            if i == last:
                yield {"messageStop": {"stopReason": "end_turn"}}
        else:
            yield {"outputs": [{"text": piece, "stop_reason": "stop" if i == last else None}]}
