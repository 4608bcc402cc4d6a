"""An incremental decoder of AWS's binary event-stream framing, with the SSE decoder's interface.

Bedrock's ``ConverseStream`` and ``InvokeModelWithResponseStream`` answer as
``application/vnd.amazon.eventstream``: length-prefixed, CRC-checked messages with typed headers.
The frames are read by botocore's own parser (``botocore.eventstream.EventStreamBuffer``), which is
there whenever Bedrock is called (boto3, LiteLLM and the AWS SDKs sign with it). Each complete
message becomes ``(event type, payload)``; an exception message (a throttle mid-stream) becomes
``("!" + its exception type, payload)``. Only the unfinished message is kept: constant memory.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EventStreamDecoder"]

log = logging.getLogger("llmtally")


class EventStreamDecoder:
    """``feed(chunk) -> [(event type, payload), ...]``."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        try:
            from botocore.eventstream import EventStreamBuffer
        except ImportError:
            log.warning(
                "llmtally: an AWS event stream cannot be read without botocore; "
                "the call is counted without its usage"
            )
            self._buffer: Any = None
        else:
            self._buffer = EventStreamBuffer()

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        buffer = self._buffer
        if buffer is None:
            return []
        buffer.add_data(chunk)
        out = []
        for message in buffer:
            headers = message.headers
            kind = headers.get(":message-type", "event")
            if kind == "event":
                out.append((str(headers.get(":event-type", "")), message.payload))
            else:
                name = headers.get(":exception-type") or headers.get(":error-code") or kind
                out.append(("!" + str(name), message.payload))
        return out

    def close(self) -> list[tuple[str, bytes]]:
        return []
