"""Your own prices: a TOML price file and ``set_price``, which win over the catalogue.

A fine-tune, a negotiated discount, a self-hosted model or a model released last week is priced
by what the user says::

    # prices.toml: prices in USD per million tokens (web searches: per thousand)
    [[price]]
    model = "ft:gpt-4o-mini:acme::7Hz"       # an exact name; or prefix = "...", or pattern = "regex"
    provider = "openai"                       # optional: only calls priced as this provider's
    input = "0.30"
    output = "1.20"
    cached = "0.15"
    valid_from = "2026-01-01"                 # optional: calls before this date use the catalogue
    currency = "USD"                          # optional: any ISO 4217 code (rates: configure())

    [[price]]
    model = "prod-gpt4o-eastus"               # an Azure deployment name, say
    same_as = "gpt-4o"                        # priced as that model is (instead of prices)

Units: ``input``, ``output``, ``cached``, ``cache_write``, ``cache_write_1h``, ``input_audio``,
``cached_audio``, ``output_audio``, ``input_image``, ``output_image``, ``citations`` (per million
tokens), ``web_searches`` and ``requests`` (per thousand); genai-prices' own keys (``input_mtok``,
...) are accepted too. A file is validated whole when it is loaded: an error names the file, the
line and the field, and nothing of that file is used (the prices in force stay as they were).
Later entries win over earlier ones, and ``set_price`` over files.

This module is stdlib-only: it parses and matches; ``_pricing`` turns an entry into a price plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "ENV_PRICES",
    "UNITS",
    "PriceEntry",
    "PriceFileError",
    "default_path",
    "entries",
    "entries_set_by_calls",
    "load",
    "match",
    "parse_entry",
    "set_entries",
    "version",
]

ENV_PRICES = "LLMTALLY_PRICES"

#: The file's unit names -> genai-prices price keys.
UNITS: dict[str, str] = {
    "input": "input_mtok",
    "output": "output_mtok",
    "cached": "cache_read_mtok",
    "cache_write": "cache_write_mtok",
    "cache_write_1h": "cache_write_1h_mtok",
    "input_audio": "input_audio_mtok",
    "cached_audio": "cache_audio_read_mtok",
    "output_audio": "output_audio_mtok",
    "input_image": "input_image_mtok",
    "output_image": "output_image_mtok",
    "citations": "output_citation_mtok",
    "web_searches": "web_searches_kcount",
    "requests": "requests_kcount",
}
_KEYS = {*UNITS, *UNITS.values()}
_MATCHERS = ("model", "prefix", "pattern")
_OTHER = {"provider", "valid_from", "currency", "same_as"}


class PriceFileError(ValueError):
    """A price file (or ``set_price`` call) that cannot be used; the message names where and why."""


@dataclass(frozen=True)
class PriceEntry:
    """One price: which models it applies to, its price per genai-prices price key, and its origin."""

    kind: str  # "model", "prefix" or "pattern"
    name: str
    prices: tuple[tuple[str, Decimal], ...]
    source: str  # "prices.toml line 4", or "set_price"
    provider: str | None = None
    valid_from: date | None = None
    regex: re.Pattern[str] | None = field(default=None, compare=False)
    #: Priced as this model is, instead of by ``prices`` (an Azure deployment's model).
    same_as: str | None = None
    #: The ISO 4217 currency of ``prices``.
    currency: str = "USD"

    def matches(self, model: str, provider: str | None) -> bool:
        if self.provider is not None and self.provider != provider:
            return False
        if self.kind == "model":
            return model == self.name
        if self.kind == "prefix":
            return model.startswith(self.name)
        return self.regex is not None and self.regex.fullmatch(model) is not None


#: [file entries, set_price entries]: replaced whole, never mutated in place.
_state: list[tuple[tuple[PriceEntry, ...], tuple[PriceEntry, ...]]] = [((), ())]
#: Bumped with every change, so that what was looked up under the old prices is looked up again.
_version = [0]


def version() -> int:
    return _version[0]


def entries_set_by_calls() -> tuple[PriceEntry, ...]:
    """The entries ``set_price`` made, in order."""
    return _state[0][1]


def entries() -> tuple[PriceEntry, ...]:
    """Every user price in force, in the order they apply (the last match wins)."""
    files, calls = _state[0]
    return files + calls


def set_entries(
    files: tuple[PriceEntry, ...] | None = None, calls: tuple[PriceEntry, ...] | None = None
) -> None:
    old_files, old_calls = _state[0]
    _state[0] = (old_files if files is None else files, old_calls if calls is None else calls)
    _version[0] += 1


def match(model: str, provider: str | None, on: date) -> PriceEntry | None:
    """The user's price for ``model`` (as served by ``provider``) on the date ``on``, if any."""
    found = None
    for entry in entries():
        if entry.matches(model, provider) and (entry.valid_from is None or on >= entry.valid_from):
            found = entry
    return found


def load(path: str) -> tuple[PriceEntry, ...]:
    """The entries of a TOML price file; ``PriceFileError`` names the file, line and field."""
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PriceFileError(f"{path}: cannot read the price file: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: not a TOML price file: {exc}") from None
    unknown = set(doc) - {"price"}
    if unknown:
        raise PriceFileError(
            f"{path}: unknown table {sorted(unknown)[0]!r}; a price file has [[price]] entries"
        )
    items = doc.get("price", [])
    if not isinstance(items, list):
        raise PriceFileError(f"{path}: 'price' must be an array of tables: [[price]]")
    text_lines = raw.decode("utf-8").splitlines()
    starts = _entry_lines(text_lines)
    out = []
    for i, item in enumerate(items):
        start = starts[i] if i < len(starts) else 0
        out.append(parse_entry(item, path, start, _field_line(text_lines, start)))
    return tuple(out)


def parse_entry(item: Any, path: str, line: int, field_line: Any = None) -> PriceEntry:
    """One entry from its table (a dict); errors say ``path line N, field 'x': ...``."""

    def fail(key: str | None, problem: str) -> PriceFileError:
        where = f"{path} line {field_line(key) if (field_line and key) else line}"
        return PriceFileError(f"{where}{f', field {key!r}' if key else ''}: {problem}")

    if not isinstance(item, dict):
        raise fail(None, "a price entry must be a table")
    for key in item:
        if key not in _KEYS and key not in _MATCHERS and key not in _OTHER:
            raise fail(key, f"unknown field; the units are {', '.join(UNITS)}")
    given = [m for m in _MATCHERS if m in item]
    if len(given) != 1:
        raise fail(None, "give exactly one of model, prefix or pattern")
    kind = given[0]
    name = item[kind]
    if not isinstance(name, str) or not name:
        raise fail(kind, "must be a non-empty string")
    regex = None
    if kind == "pattern":
        try:
            regex = re.compile(name)
        except re.error as exc:
            raise fail(kind, f"not a regular expression: {exc}") from None
    provider = item.get("provider")
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise fail("provider", "must be a provider id such as 'openai'")
    currency = item.get("currency", "USD")
    if not isinstance(currency, str) or re.fullmatch(r"[A-Z]{3}", currency) is None:
        raise fail("currency", f"{currency!r} is not an ISO 4217 code such as 'USD' or 'CNY'")
    valid_from = item.get("valid_from")
    if valid_from is not None:
        if isinstance(valid_from, str):
            try:
                valid_from = date.fromisoformat(valid_from)
            except ValueError:
                raise fail("valid_from", "must be a date, 2026-01-31") from None
        if not isinstance(valid_from, date):
            raise fail("valid_from", "must be a date, 2026-01-31")
    prices: list[tuple[str, Decimal]] = []
    for key, value in item.items():
        if key not in _KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise fail(key, 'must be a number or a decimal string such as "0.30"')
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            raise fail(key, f"{value!r} is not a number") from None
        if not amount.is_finite() or amount < 0:
            raise fail(key, f"{value!r} is not a price (a finite number, 0 or more)")
        prices.append((UNITS.get(key) or key, amount))
    same_as = item.get("same_as")
    if same_as is not None:
        if not isinstance(same_as, str) or not same_as:
            raise fail("same_as", "must be a model name such as 'gpt-4o'")
        if prices:
            raise fail("same_as", "give prices or same_as, not both")
    elif not prices:
        raise fail(None, f"no price given; give at least one of {', '.join(UNITS)}, or same_as")
    source = f"{path} line {line}"
    return PriceEntry(kind, name, tuple(prices), source, provider, valid_from, regex, same_as, currency)


_HEADER = re.compile(r"\s*\[\[\s*price\s*\]\]")


def _entry_lines(lines: list[str]) -> list[int]:
    """The line of each ``[[price]]`` header, in order."""
    return [i + 1 for i, line in enumerate(lines) if "[[" in line and _HEADER.match(line)]


def _field_line(lines: list[str], start: int) -> Any:
    """A function: a field's line within the entry that starts at line ``start`` (looked up only
    for an error message)."""

    def find(key: str) -> int:
        for i in range(start, len(lines)):  # from the line after the [[price]] header
            if re.match(r"\s*\[", lines[i]):
                break  # the next table
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                return i + 1
        return start

    return find


def default_path() -> str:
    """Where a price file is read from when none is configured: ``$XDG_CONFIG_HOME/llmtally/prices.toml``
    (``~/.config/llmtally/prices.toml``)."""
    import os

    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "llmtally", "prices.toml")
