"""``Reply(encoding=...)``: an answer sent gzip-, deflate-, br- or zstd-encoded, or several in turn.

A whole body is compressed whole. A stream is compressed as one body, but flushed after every event,
so each chunk on the wire holds whole events a client can decode as they arrive, as a compressing
server sends server-sent events. The br and zstd libraries are imported here, on first use only.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

from ._wire import Answer

__all__ = ["Compressor", "compress", "encode"]

#: Where each coding's compressor may come from, in the order tried.
_LIBRARIES = {
    "br": ("brotli", "brotlicffi"),
    "zstd": ("compression.zstd", "backports.zstd", "zstandard"),
}


def _codings(encoding: str) -> list[str]:
    return [c.strip().lower() for c in encoding.split(",") if c.strip()]


def encode(answer: Answer, encoding: str) -> Answer:
    """Compress ``answer`` in ``encoding`` (codings applied left to right) and say so in its headers."""
    codings = _codings(encoding)
    answer.headers["content-encoding"] = ", ".join(codings)
    if answer.events is None:
        answer.body = compress(answer.body, encoding)
    else:
        answer.events = _flushed(answer.events, codings, answer.truncated)
    return answer


def compress(data: bytes, encoding: str) -> bytes:
    """``data`` as a server sends it with ``Content-Encoding: encoding``."""
    for coding in _codings(encoding):
        data = Compressor(coding).end(data)
    return data


def _flushed(events: Iterable[bytes], codings: list[str], truncated: bool) -> Iterator[bytes]:
    stack = [Compressor(coding) for coding in codings]
    for event in events:
        for compressor in stack:
            event = compressor.push(event)
        yield event
    if truncated:
        return  # the connection drops: no end of the compressed stream either
    tail = b""
    for compressor in stack:
        tail = compressor.end(tail)
    yield tail


class Compressor:
    """One coding's streaming compressor: ``push`` compresses and flushes, ``end`` finishes."""

    def __init__(self, coding: str) -> None:
        self._obj: Any
        if coding in ("gzip", "x-gzip", "deflate"):
            self._kind = "zlib"
            self._obj = zlib.compressobj(wbits=16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS)
        elif coding in _LIBRARIES:
            module = _library(coding)
            self._kind = module.__name__ if coding == "zstd" else coding
            if coding == "br":
                self._obj = module.Compressor()
            elif self._kind == "zstandard":
                self._flush_block = module.COMPRESSOBJ_FLUSH_BLOCK
                self._obj = module.ZstdCompressor().compressobj()
            else:  # compression.zstd, backports.zstd
                self._obj = module.ZstdCompressor()
        else:
            raise ValueError(f"FakeProvider cannot send content-encoding {coding!r}")

    def push(self, data: bytes) -> bytes:
        """``data`` compressed and flushed: decodable up to its end with what came before."""
        obj, kind = self._obj, self._kind
        if kind == "zlib":
            return bytes(obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH))
        if kind == "br":
            return bytes(obj.process(data) + obj.flush())
        if kind == "zstandard":
            return bytes(obj.compress(data) + obj.flush(self._flush_block))
        return bytes(obj.compress(data, obj.FLUSH_BLOCK))

    def end(self, data: bytes = b"") -> bytes:
        """``data`` compressed, and the end of the compressed stream."""
        obj, kind = self._obj, self._kind
        if kind == "br":
            return bytes(obj.process(data) + obj.finish())
        if kind in ("zlib", "zstandard"):
            return bytes(obj.compress(data) + obj.flush())
        return bytes(obj.compress(data, obj.FLUSH_FRAME))


def _library(coding: str) -> Any:
    for name in _LIBRARIES[coding]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    wanted = " or ".join(repr(n) for n in _LIBRARIES[coding] if not n.startswith("compression."))
    raise RuntimeError(f"FakeProvider needs {wanted} installed to send content-encoding {coding!r}")
