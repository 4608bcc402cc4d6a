"""What every wire format gives back, and the helpers they share."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.usage import Usage

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = [
    "MAX_COUNT",
    "Parser",
    "Result",
    "StreamParser",
    "as_int",
    "as_str",
    "bad_count",
    "key_string",
    "loads",
    "loads_body",
    "object_after",
    "odd_count",
]

_DECODER = json.JSONDecoder()
_STRING_VALUE = re.compile(rb'\s*:\s*"([^"\\]{0,256})"')


#: More tokens than any call has (contexts hold millions): a larger count is garbage, and would
#: overflow the ledger's integers once priced (picodollars) or summed.
MAX_COUNT = 10**9
#: The first bad count the parsers met on this thread since ``bad_count()`` last looked.
_seen = threading.local()
_NOTHING = object()


def as_int(value: Any) -> int:
    """A token count from a response: a non-negative int (0 when absent or null).

    An exact integer sent as a float or a string (``12.0``, ``"12"``) is that integer. Anything else
    (negative, fractional, huge, not a number) reads as 0 *and is noted*: whoever drives the parser
    asks ``bad_count()`` afterwards, and counts that call's usage offline, marked estimated, rather
    than as a silent 0.
    """
    if type(value) is int and 0 <= value <= MAX_COUNT:
        return value
    return odd_count(value)


def odd_count(value: Any, stated: bool = False) -> int:
    """``as_int``'s slow path, for counts that are not plain in-range ints. A ``null`` is an absent
    count (0), unless ``stated``: a response that gives its very token count as null."""
    if value is None and not stated:
        return 0
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_COUNT:
        return int(value)
    if type(value) is str and len(value) <= 40 and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())  # short: int() refuses digit strings past 4,300 digits
        if number <= MAX_COUNT:
            return number
    if getattr(_seen, "bad", _NOTHING) is _NOTHING:
        _seen.bad = value
    return 0


def bad_count() -> Any:
    """The first bad count noted on this thread since the last call (then forgotten), or
    ``NOTHING``."""
    bad = getattr(_seen, "bad", _NOTHING)
    if bad is not _NOTHING:
        _seen.bad = _NOTHING
    return bad


NOTHING = _NOTHING


def as_str(value: Any) -> str | None:
    """A string field from a response, or ``None`` for anything else."""
    return value if isinstance(value, str) else None


def loads(data: bytes) -> Any:
    """JSON from the wire; ``None`` for anything that is not a JSON object (garbage, ``[DONE]``)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def loads_body(data: bytes) -> Any:
    """A whole response body: a JSON object, or a JSON array (a stream sent as one array of chunks,
    as Gemini does without ``?alt=sse``); ``None`` for anything else."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, (dict, list)) else None


def key_string(content: bytes, key: bytes, last: bool = False) -> str | None:
    """The string value of the first (or last) ``"key": "value"`` in a JSON document.

    A JSON string cannot hold an unescaped quote, so ``"key"`` followed by a colon is always a key,
    never text inside a value: this finds it without parsing the whole document.
    """
    at = content.rfind(key) if last else content.find(key)
    if at < 0:
        return None
    m = _STRING_VALUE.match(content, at + len(key))
    return m.group(1).decode("utf-8", "replace") if m else None


def object_after(content: bytes, key: bytes) -> Any:
    """The JSON object that is the value of the *last* ``key`` in ``content``, or ``None``.

    Only that object is decoded (the C decoder, from its opening brace), not the document.
    """
    at = content.rfind(key)
    if at < 0:
        return None
    brace = content.find(b"{", at)
    if brace < 0 or content[at + len(key) : brace].strip(b" \t\r\n") != b":":
        return None
    try:
        obj, _ = _DECODER.raw_decode(content[brace:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return obj


class Text(list[str]):
    """The text of a stream, kept only to count it offline if its usage never comes.

    Bounded: every 256 pieces are joined into one (a Bedrock or Anthropic stream sends a delta per
    token or two), and past ``CAP`` characters only the length of what follows is kept
    (``dropped``), so the count is extrapolated from the first ``CAP`` characters' tokens. A stream
    of any length holds at most about ``CAP`` bytes here.
    """

    __slots__ = ("_loose", "dropped", "kept")
    _BLOCK = 256
    CAP = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self._loose = 0
        self.kept = 0
        self.dropped = 0

    def append(self, piece: str) -> None:
        if self.kept >= self.CAP:
            self.dropped += len(piece)
            return
        list.append(self, piece)
        self.kept += len(piece)
        self._loose += 1
        if self._loose >= self._BLOCK:
            block = "".join(self[-self._BLOCK :])
            del self[-self._BLOCK :]
            list.append(self, block)
            self._loose = 0

    def extend(self, pieces: Iterable[str]) -> None:
        for piece in pieces:
            self.append(piece)


@dataclass(slots=True)
class Result:
    """What a response said about itself: served model, usage (``None`` if absent), request id.

    ``text`` collects the streamed output, only so a stream without usage can be counted offline;
    it is dropped as soon as the call is settled and never stored. ``cost`` is the provider's own
    figure for the call (OpenRouter's ``usage.cost``), when it reports one.
    """

    model: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    text: list[str] = field(default_factory=Text)
    cost: Decimal | None = None
    #: How the response says it was served, in the catalogue's price-variant terms
    #: (``(("service_tier", "flex"),)``, ``(("speed", "fast"),)``): it selects the prices.
    context: tuple[tuple[str, str], ...] | None = None
    #: The first usage value that was no token count (``as_int``), if any: the usage is not to be
    #: believed, and the call is counted offline.
    bad: Any = _NOTHING


class StreamParser:
    """Fed each SSE event of one response; ``result`` holds what was learned so far.

    A plain ``StreamParser`` learns nothing (an endpoint that does not stream).

    ``complete`` is false while a stream's usage may still grow (Anthropic sends its final output
    count last); a stream settled before then has its output estimated from what was read.
    """

    __slots__ = ("result",)
    complete = True

    def __init__(self) -> None:
        self.result = Result()

    def event(self, name: str, data: bytes) -> None:
        """One event (``name`` is ``""`` when the server named none)."""


class Parser:
    """One API endpoint's wire format."""

    #: Short name of the endpoint, e.g. ``"chat.completions"``.
    endpoint = ""
    #: Provider whose format this is, the pricing fallback when the host is not recognised.
    provider = ""
    #: Whether a whole body may be a JSON array of chunks (a stream sent without SSE); ``body`` is
    #: then given the list.
    arrays = False
    #: Whether streams (and whole bodies) may be newline-delimited JSON; ``body`` is then given
    #: the list of the lines' objects.
    ndjson = False
    #: Whether streams (and whole bodies) may be AWS event streams (Bedrock).
    eventstream = False
    #: Whether the catalogue's prices apply (False for local models: counted, cost unknown).
    priced = True
    #: Response headers (lower-case) that count the usage when the body does not (Bedrock's).
    headers: tuple[str, ...] = ()

    def body(self, obj: dict[str, Any]) -> Result | None:  # pragma: no cover - interface
        """What a JSON response says, or ``None`` if it is another API's answer on the same path."""
        raise NotImplementedError

    def stream(self, request: bytes = b"") -> StreamParser:  # pragma: no cover - interface
        """A parser for one streamed response; ``request`` is the request body, as sent."""
        raise NotImplementedError

    def fast_body(self, content: bytes) -> Result | None:
        """What a JSON body says, read without parsing all of it, or ``None`` to parse it whole.

        Worth it where usage is a small object at the end of a large body (an embedding, a long
        answer); formats where that is not safe keep the default.
        """
        return None

    def request_text(self, obj: dict[str, Any]) -> tuple[list[str], int]:
        """Input texts of a request and the count of chat messages, for offline estimates."""
        return [], 0

    def headers_usage(self, headers: dict[str, str]) -> Usage | None:
        """The usage the response headers named in ``headers`` report, if the body reported none."""
        return None

    def model_in_path(self, path: str) -> str | None:
        """The requested model, for APIs that name it in the URL rather than the body (Gemini)."""
        return None


def served_as(key: str, value: Any) -> tuple[tuple[str, str], ...] | None:
    """A price context of one (key, value), if the value is a short plain string."""
    if isinstance(value, str) and 0 < len(value) <= 32:
        return ((key, value),)
    return None
