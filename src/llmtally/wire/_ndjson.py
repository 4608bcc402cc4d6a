"""An incremental newline-delimited JSON decoder, with the SSE decoder's interface.

Ollama streams its answers as NDJSON (``application/x-ndjson``): one JSON object per line. Fed the
chunks of a response as the caller reads them, this returns the lines completed so far as
``("", line)`` pairs, keeping only the unfinished tail: constant memory, however long the stream.
"""

from __future__ import annotations

__all__ = ["NDJSONDecoder"]

#: A line longer than this without a newline is not NDJSON; give up rather than buffer without end.
MAX_LINE = 16 * 1024 * 1024


class NDJSONDecoder:
    """``feed(chunk) -> [("", line), ...]``; blank lines are skipped."""

    __slots__ = ("_parts", "_size", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._parts: list[bytes] = []  # pieces of a line still open: joined once, when it ends
        self._size = 0

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        if b"\n" not in chunk:
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size + len(self._tail) > MAX_LINE:
                    raise ValueError(f"an NDJSON line longer than {MAX_LINE} bytes without a newline")
            return []
        if self._parts:
            self._tail += b"".join(self._parts)
            self._parts, self._size = [], 0
        buf = self._tail + chunk if self._tail else chunk
        lines = buf.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE:
            raise ValueError(f"an NDJSON line longer than {MAX_LINE} bytes without a newline")
        return [("", line) for line in lines if line.strip()]

    def close(self) -> list[tuple[str, bytes]]:
        """The last line, when the stream ends without a final newline."""
        tail, self._tail = self._tail + b"".join(self._parts), b""
        self._parts, self._size = [], 0
        return [("", tail)] if tail.strip() else []
