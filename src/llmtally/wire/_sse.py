"""An incremental Server-Sent Events decoder over raw byte chunks.

Fed the chunks of a response as the caller reads them, it returns the events completed so far and
keeps only the unfinished tail line, so a stream of any length is decoded in constant memory. A
long line read in small pieces is kept as its pieces until its end arrives, then joined once: time
linear in its length, however it is read.
Only the ``event`` and ``data`` fields matter for metering; ``id``, ``retry`` and comments are
skipped. Lines end in LF, CRLF or CR, as the SSE specification allows.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]

#: A line longer than this without a newline is not SSE; give up rather than buffer without end.
MAX_LINE = 16 * 1024 * 1024


class SSEDecoder:
    """``feed(chunk) -> [(event, data), ...]``; ``event`` is ``""`` when the server named none."""

    __slots__ = ("_data", "_event", "_parts", "_size", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._parts: list[bytes] = []  # pieces of a line still open, after the tail
        self._size = 0
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if b"\n" not in chunk and b"\r" not in chunk:  # the middle of a line: keep it for later
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size + len(self._tail) > MAX_LINE:
                    raise ValueError(f"SSE line longer than {MAX_LINE} bytes without a newline")
            return []
        if self._parts:
            self._tail += b"".join(self._parts)
            self._parts, self._size = [], 0
        # The common case, one whole "data: ...\n\n" event per chunk, without the general machinery.
        if (
            not self._tail
            and not self._data
            and not self._event
            and chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n") == len(chunk) - 2
            and b"\r" not in chunk
        ):
            return [("", chunk[6:-2])]
        buf = self._tail + chunk if self._tail else chunk
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF split across chunks.
            if buf.endswith(b"\r"):
                self._tail = b"\r"
                buf = buf[:-1]
            else:
                self._tail = b""
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if self._tail:
                # Keep the pending CR out of the line split; it rejoins on the next feed.
                lines = buf.split(b"\n")
                pending = lines.pop()
                self._tail = pending + b"\r"
                return self._lines(lines)
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE:
            raise ValueError(f"SSE line longer than {MAX_LINE} bytes without a newline")
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append((self._event, b"\n".join(self._data)))
                self._event = ""
                self._data = []
                continue
            field, sep, value = line.partition(b":")
            if sep and value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        return events

    def close(self) -> list[tuple[str, bytes]]:
        """Events left when the stream ends without a final blank line."""
        if self._parts:
            self._tail += b"".join(self._parts)
            self._parts, self._size = [], 0
        events = self._lines([self._tail.rstrip(b"\r")] if self._tail else [])
        self._tail = b""
        if self._data:
            events.append((self._event, b"\n".join(self._data)))
            self._data = []
        return events
