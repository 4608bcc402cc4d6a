"""What the person is looking at: a window of time and filters, read from the page's query string.

The page keeps its whole state in its URL (``?since=7d&model=gpt-4o&tag=team=search&stack=scope``),
so a view can be bookmarked and shared, and every API call carries the same query string: the
numbers of a view are the numbers of the ``llmtally report`` command ``View.command()`` prints.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._report import parse_time
from ..ledger._read import Where, check_group, parse_where

__all__ = ["FILTER_PARAMS", "STACKS", "View", "parse_view"]

#: Query parameters that filter, and the report group each stands for (``tag`` is ``KEY=VALUE``).
FILTER_PARAMS = {
    "provider": "provider",
    "model": "model",
    "scope": "scope",
    "endpoint": "endpoint",
    "currency": "currency",
}
#: What the spend-over-time chart can be stacked by (``tag:KEY`` too).
STACKS = ("model", "provider", "scope", "endpoint")
#: The default window: the last seven days.
DEFAULT_SINCE = "7d"


@dataclass(frozen=True)
class View:
    since: str | None
    until: str | None
    where: Where
    stack: str
    #: Set when the window is now-relative (``7d``): it moves with the clock, so it is read at
    #: ``now`` once per request and every query of the request uses the same instants.
    start: float | None
    end: float | None
    now: float

    def command(
        self,
        by: Sequence[str] = ("model",),
        *,
        ledger: str | None = None,
        currency: str | None = None,
        rates: Mapping[str, object] | None = None,
    ) -> str:
        """The ``llmtally report`` command that gives this view's numbers (the window as instants):
        on ``ledger`` (its password hidden), in ``currency`` at ``rates``, when given."""
        parts = ["llmtally", "report"]
        if ledger is not None:
            from ..ledger import redact_url

            parts += ["--ledger", redact_url(ledger)]
        if currency is not None:
            parts += ["--currency", currency]
        if rates:
            parts += ["--rates", ",".join(f"{code}={rate}" for code, rate in sorted(rates.items()))]
        if self.start is not None:
            parts += ["--since", _iso(self.start)]
        if self.end is not None:
            parts += ["--until", _iso(self.end)]
        for group in by:
            parts += ["--by", group]
        for key, values in self.where:
            for value in values:
                parts += ["--where", f"{key}={value}"]
        return shlex.join(parts)


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_view(params: Mapping[str, Sequence[str]], now: float | None = None) -> View:
    """A view from query parameters (each name to its values); ``ValueError`` naming a bad one."""

    def one(name: str) -> str | None:
        values = [v for v in params.get(name, ()) if v.strip()]
        return values[-1].strip() if values else None

    now = time.time() if now is None else now
    since = one("since")
    if since is None and "since" not in params:
        since = DEFAULT_SINCE
    if since == "all":
        since = None
    until = one("until")
    pairs: list[tuple[str, str]] = []
    for name, group in FILTER_PARAMS.items():
        pairs += [(group, v) for v in params.get(name, ()) if v != ""]
    for tag in params.get("tag", ()):
        if not tag:
            continue
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a tag filter is KEY=VALUE, not {tag!r}")
        pairs.append((f"tag:{key.strip()}", value))
    where = parse_where(pairs)
    stack = one("stack") or "model"
    if stack not in STACKS:
        if not stack.startswith("tag:"):
            raise ValueError(f"stack by one of {', '.join(STACKS)} or tag:KEY, not {stack!r}")
        check_group(stack)
    start, end = parse_time(since, now=now), parse_time(until, now=now)
    if start is not None and end is not None and end <= start:
        raise ValueError("the window ends before it starts (until is not after since)")
    return View(since, until, where, stack, start, end, now)
