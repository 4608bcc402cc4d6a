"""Content codings beyond gzip and deflate: ``br``, ``zstd``, and codings stacked in one header.

The exchange inflates a body itself only when the caller reads it still encoded (urllib3's and
requests' raw reads, aiohttp with ``auto_decompress=False``, http.client, httpx's byte stream), or
when the client could not decode it. It decodes as the clients do, with the same optional
libraries: ``brotli`` or ``brotlicffi`` for br; for zstd the standard library's
``compression.zstd`` (Python 3.14), ``backports.zstd`` (what urllib3, aiohttp and httpx2 use before
that) or ``zstandard`` (httpx's). They are imported when the first such body arrives, never with
``import llmtally``. Every decoder is a streaming one, fed chunk by chunk as the caller reads.

A coding nothing here can read is not an error: the call is still counted, as an estimate made
from the request, and a log line says (once per coding) what to install.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Collection
from typing import Any

__all__ = ["UNDECODABLE", "UNREAD", "decoder", "left_encoded"]

log = logging.getLogger("llmtally")

#: The libraries that read each coding, in the order the clients prefer them.
_LIBRARIES = {
    "br": ("brotli", "brotlicffi"),
    "zstd": ("compression.zstd", "backports.zstd", "zstandard"),
}
#: What to install, as the log line says it.
_INSTALL = {
    "br": "the 'brotli' package (or 'brotlicffi')",
    "zstd": "the 'zstandard' package (or 'backports.zstd')",
}
#: More codings than this in one header is no server's doing (urllib3 and httpx refuse them too).
_MAX_STACK = 5
#: coding -> the imported library that reads it, or None if none is installed (looked up once).
_modules: dict[str, Any] = {}
#: The codings already said to be unreadable: said once each, not once per call.
_said: set[str] = set()


class _Undecodable:
    """A body in a coding that cannot be read here: nothing of it is fed, and the call is counted
    from the request (an estimate)."""

    __slots__ = ()

    def decompress(self, data: bytes) -> bytes:
        return b""


UNDECODABLE = _Undecodable()


class _Unread(bytes):
    __slots__ = ()


#: The content of a body in a coding that cannot be read here: empty, and told apart by identity
#: from a body that was empty, so settlement estimates the call without saying it was cut short.
UNREAD = _Unread()


def decoder(encoding: str, inflater: Callable[[str], Any]) -> Any:
    """A streaming decoder (``decompress(chunk) -> bytes``) for a lowercased ``Content-Encoding``
    value that is not plain gzip or deflate, or `UNDECODABLE`. ``inflater`` makes those two."""
    if "," not in encoding:
        return _one(encoding, inflater)
    codings = [c for c in (c.strip() for c in encoding.split(",")) if c not in ("", "identity")]
    if not codings:
        return None
    if len(codings) > _MAX_STACK:
        _say(encoding, f"it stacks more than {_MAX_STACK} codings")
        return UNDECODABLE
    # Applied left to right by the server, so undone right to left.
    decoders = [_one(coding, inflater) for coding in reversed(codings)]
    if any(d is UNDECODABLE for d in decoders):
        return UNDECODABLE
    return decoders[0] if len(decoders) == 1 else _Stacked(decoders)


def left_encoded(encoding: str, decoded_by_client: Collection[str]) -> str:
    """The part of ``encoding`` a client that decodes ``decoded_by_client`` hands over still encoded:
    ``""`` if it decodes it all (gzip, say), the whole value if it decodes none of it (br without
    the library it needs). A stacked value is decoded whole or not at all, as urllib3 does."""
    if encoding in decoded_by_client:  # "gzip", as servers write it
        return ""
    coding = encoding.strip().lower()
    if not coding or coding == "identity" or coding in decoded_by_client:
        return ""
    if "," in coding and all(c.strip() in decoded_by_client for c in coding.split(",") if c.strip()):
        return ""
    return coding


def _one(coding: str, inflater: Callable[[str], Any]) -> Any:
    if coding in ("gzip", "x-gzip"):
        return inflater("gzip")
    if coding == "deflate":
        return inflater("deflate")
    if coding not in _LIBRARIES:
        _say(coding, "llmtally does not know this coding")
        return UNDECODABLE
    try:
        module = _modules[coding]
    except KeyError:
        module = _modules[coding] = _import(coding)
    if module is None:
        _say(coding, f"no library to decode it is installed: install {_INSTALL[coding]}")
        return UNDECODABLE
    if coding == "br":
        return _Brotli(module)
    if module.__name__ == "zstandard":  # a factory of one-frame decompressors, not one itself
        return _Zstd(module.ZstdDecompressor().decompressobj)
    return _Zstd(module.ZstdDecompressor)


def _import(coding: str) -> Any:
    for name in _LIBRARIES[coding]:
        try:
            return importlib.import_module(name)
        except Exception:  # not installed, or broken: the next one, or none
            continue
    return None


def _say(coding: str, why: str) -> None:
    if coding in _said or (len(_said) >= 64 and coding not in _LIBRARIES):  # header values stay few
        return
    _said.add(coding)
    log.warning(
        "llmtally: a response came with Content-Encoding %r and %s; such calls are counted from "
        "their requests, as estimates (this is said once)",
        coding[:40],
        why,
    )


class _Brotli:
    """``brotli`` and ``brotlicffi`` both have ``Decompressor().process``."""

    __slots__ = ("_process",)

    def __init__(self, module: Any) -> None:
        self._process = module.Decompressor().process

    def decompress(self, data: bytes) -> bytes:
        return bytes(self._process(data)) if data else b""


class _Zstd:
    """A zstd body may hold several frames, one after another; each decompressor reads one."""

    __slots__ = ("_new", "_obj")

    def __init__(self, new: Callable[[], Any]) -> None:
        self._new = new
        self._obj = new()

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        obj = self._obj
        if obj.eof:  # the last frame ended with the last chunk: this one starts another
            obj = self._obj = self._new()
        out = obj.decompress(data)
        if not (obj.eof and obj.unused_data):
            return bytes(out)
        parts = [out]
        while obj.eof and obj.unused_data:
            rest = obj.unused_data
            obj = self._obj = self._new()
            parts.append(obj.decompress(rest))
        return b"".join(parts)


class _Stacked:
    __slots__ = ("_decoders",)

    def __init__(self, decoders: list[Any]) -> None:
        self._decoders = decoders

    def decompress(self, data: bytes) -> bytes:
        for d in self._decoders:
            data = d.decompress(data)
        return bytes(data)
