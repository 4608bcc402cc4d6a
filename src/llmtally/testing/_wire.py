"""The provider-neutral shape of an answer, and the small encoding helpers both dialects share.

An `Answer` is what the loopback server and the in-memory transports both render: either a
whole body, or a lazy sequence of server-sent events that each go out as their own chunk.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from ._script import Reply

__all__ = [
    "Answer",
    "data_event",
    "dumps",
    "json_answer",
    "named_event",
    "new_id",
    "split_text",
    "stream_answer",
]

_WORD_START = re.compile(r"(?<=\s)(?=\S)")


@dataclass
class Answer:
    """A response ready to send. ``events`` set means a chunked ``text/event-stream``."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: Iterable[bytes] | None = None
    # The stream ends by dropping the connection instead of with the terminating chunk.
    truncated: bool = False
    delay: float = 0.0

    def reason(self) -> str:
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Unknown"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def now() -> int:
    return int(time.time())


def data_event(obj: Any) -> bytes:
    """An OpenAI-style event: a ``data:`` line only."""
    if isinstance(obj, str):
        return f"data: {obj}\n\n".encode()
    return b"data: " + dumps(obj) + b"\n\n"


def named_event(obj: dict[str, Any]) -> bytes:
    """An event named by its payload's ``type``, as Anthropic and the Responses API send them."""
    return f"event: {obj['type']}\n".encode() + b"data: " + dumps(obj) + b"\n\n"


def split_text(text: str, chunks: int | None) -> list[str]:
    """Cut ``text`` into stream pieces: about one per word, or exactly ``chunks`` of near-even size."""
    if chunks is None:
        return [piece for piece in _WORD_START.split(text) if piece]
    chunks = max(1, chunks)
    size = len(text)
    return [text[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks)]


def _finish(answer: Answer, reply: Reply, headers: dict[str, str]) -> Answer:
    answer.headers.update(headers)
    answer.headers.update(reply.headers or {})
    answer.delay = reply.delay
    return answer


def json_answer(reply: Reply, status: int, body: Any, headers: dict[str, str]) -> Answer:
    """A whole JSON body, unless the script asked for garbage."""
    raw = reply.garbage if reply.garbage is not None else dumps(body)
    answer = Answer(status=status, headers={"content-type": "application/json"}, body=raw)
    return _finish(answer, reply, headers)


def stream_answer(reply: Reply, events: Iterator[bytes], headers: dict[str, str]) -> Answer:
    """A server-sent event stream, cut short or replaced by garbage if the script says so."""
    answer = Answer(headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"})
    if reply.garbage is not None:
        answer.events = [reply.garbage]
    elif reply.cut_stream_after is not None:
        answer.events = _take(events, reply.cut_stream_after)
        answer.truncated = True
    else:
        answer.events = events
    return _finish(answer, reply, headers)


def _take(events: Iterator[bytes], n: int) -> Iterator[bytes]:
    for i, event in enumerate(events):
        if i >= n:
            return
        yield event
