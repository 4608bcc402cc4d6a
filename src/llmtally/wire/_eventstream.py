"""An incremental decoder of AWS's binary event-stream framing, with the SSE decoder's interface.

Bedrock's ``ConverseStream`` and ``InvokeModelWithResponseStream`` answer as
``application/vnd.amazon.eventstream``: length-prefixed, CRC-checked messages with typed headers.
The frames are read by botocore's own parser (``botocore.eventstream.EventStreamBuffer``), which is
there whenever Bedrock is called (boto3, LiteLLM and the AWS SDKs sign with it). Each complete
message becomes ``(event type, payload)``; an exception message (a throttle mid-stream) becomes
``("!" + its exception type, payload)``. Only the unfinished message is kept: constant memory.

Most frames of a stream are its deltas (``contentBlockDelta`` of Converse, ``chunk`` of
InvokeModel), which the SDK reading the same bytes decodes and CRC-checks for the caller. Those are
recognised by their ``:event-type`` header's exact bytes and their payload sliced out; every other
frame (the usage, an exception, anything unexpected) goes through botocore's parser whole. Frames
are cut by their length prefix: decoding each delta a second time with botocore cost ~12 µs.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["EventStreamDecoder"]

log = logging.getLogger("llmtally")


def _event_type(name: str) -> bytes:
    """The bytes of an ``:event-type`` header naming ``name`` (a string header, type 7)."""
    value = name.encode()
    return b"\x0b:event-type\x07" + len(value).to_bytes(2, "big") + value


#: Frames read without botocore: (the header's bytes, the event type).
_DELTAS = tuple((_event_type(name), name) for name in ("contentBlockDelta", "chunk"))
_EVENT_MESSAGE = b"\x0d:message-type\x07\x00\x05event"
#: Frames larger than this go to botocore, which refuses them with its own error (16 MB payloads).
_MAX_FRAME = 24 * 1024 * 1024


class EventStreamDecoder:
    """``feed(chunk) -> [(event type, payload), ...]``."""

    __slots__ = ("_buffer", "_parser")

    def __init__(self) -> None:
        self._buffer = bytearray()
        try:
            from botocore.eventstream import EventStreamBuffer
        except ImportError:
            log.warning(
                "llmtally: an AWS event stream cannot be read without botocore; "
                "the call is counted without its usage"
            )
            self._parser: Any = None
        else:
            self._parser = EventStreamBuffer

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if self._parser is None:
            return []
        buffer = self._buffer
        buffer += chunk
        out: list[tuple[str, bytes]] = []
        while len(buffer) >= 12:
            total = int.from_bytes(buffer[0:4], "big")
            if total < 16 or total > _MAX_FRAME:
                # Not a frame: botocore says what is wrong with it (raised to the tap, which logs it
                # and counts the call from what was read).
                self._parse(bytes(buffer), out)
                buffer.clear()
                break
            if len(buffer) < total:
                break
            frame = bytes(buffer[:total])
            del buffer[:total]
            end = 12 + int.from_bytes(frame[4:8], "big")
            headers = frame[12:end]
            for marker, name in _DELTAS:
                if marker in headers and _EVENT_MESSAGE in headers:
                    out.append((name, frame[end:-4]))
                    break
            else:
                self._parse(frame, out)
        return out

    def _parse(self, data: bytes, out: list[tuple[str, bytes]]) -> None:
        parser = self._parser()
        parser.add_data(data)
        for message in parser:
            headers = message.headers
            kind = headers.get(":message-type", "event")
            if kind == "event":
                out.append((str(headers.get(":event-type", "")), message.payload))
            else:
                name = headers.get(":exception-type") or headers.get(":error-code") or kind
                out.append(("!" + str(name), message.payload))

    def close(self) -> list[tuple[str, bytes]]:
        return []
