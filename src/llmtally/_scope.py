"""Scopes: ``track()`` and the ``Tally`` it yields.

The open scopes are a tuple in a ContextVar. Entering a scope sets a longer tuple and keeps the
token; leaving resets it in ``finally``, so nesting and exceptions restore the outer state exactly
(LangChain's callback sets its variable without a reset and loses the outer scope).

asyncio tasks copy the context, so they see the scopes that were open when they were created.
Threads do not: ``instrument()`` hands the scopes to ``threading.Thread`` and to
``ThreadPoolExecutor.submit`` (see ``_threads``).
"""

from __future__ import annotations

from _thread import allocate_lock
from contextvars import ContextVar

# typing imports re (milliseconds); mypy reads TYPE_CHECKING = False the same way.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from decimal import Decimal
    from types import TracebackType
    from typing import Any, TypeVar

    from ._usage import Call

# This module is all that ``import llmtally`` loads, so it imports only builtins at the top
# (threading, decimal, logging, dataclasses would add tens of milliseconds); the rest loads with
# the first scope.

__all__ = ["ModelTotals", "Tally", "current_scopes", "record", "track"]

if TYPE_CHECKING:
    F = TypeVar("F", bound="Callable[..., Any]")

_scopes: ContextVar[tuple[Tally, ...]] = ContextVar("llmtally_scopes", default=())


class _State:
    """Process-wide flags read on every scope entry, kept here so the check is one attribute read."""

    instrumented = False
    zero: Decimal | None = None

    def load_zero(self) -> Decimal:
        from decimal import Decimal

        self.zero = Decimal(0)
        return self.zero


_state = _State()


def current_scopes() -> tuple[Tally, ...]:
    """The open scopes, outermost first."""
    return _scopes.get()


class ModelTotals:
    """Totals of one model inside a ``Tally``."""

    __slots__ = (
        "cache_write_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost",
        "estimated_requests",
        "failed_requests",
        "prompt_tokens",
        "reasoning_tokens",
        "requests",
        "unpriced_requests",
    )

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cache_write_tokens = 0
        self.reasoning_tokens = 0
        self.requests = 0
        self.failed_requests = 0
        self.unpriced_requests = 0
        self.estimated_requests = 0
        #: ``None`` while no call of this model could be priced.
        self.cost: Decimal | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __repr__(self) -> str:
        cost = "unknown" if self.cost is None else f"${_money(self.cost)}"
        return (
            f"ModelTotals(requests={self.requests}, prompt_tokens={self.prompt_tokens}, "
            f"completion_tokens={self.completion_tokens}, cost={cost})"
        )


class Tally:
    """What the calls made inside one ``track()`` scope used and cost.

    ``prompt_tokens`` includes cached input, ``completion_tokens`` includes reasoning, for every
    provider. ``cost`` is the exact ``Decimal`` sum over the calls whose price is known;
    ``unpriced_requests`` counts the others, which ``str(tally)`` names. Safe to read while other
    threads add to it.
    """

    # Counters start as class attributes: a scope costs no more to open than it must, and the
    # first call that adds to one gives the instance its own value.
    prompt_tokens = 0
    completion_tokens = 0
    cached_tokens = 0
    cache_write_tokens = 0
    reasoning_tokens = 0
    successful_requests = 0
    failed_requests = 0
    unpriced_requests = 0
    estimated_requests = 0

    def __init__(self, name: str | None = None, tags: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self.tags: dict[str, Any] = dict(tags) if tags else {}
        self.cost = _state.zero or _state.load_zero()
        self.by_model: dict[str, ModelTotals] = {}
        self.calls: list[Call] = []
        self._lock = allocate_lock()

    # -- LangChain compatibility -------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def total_cost(self) -> float:
        """The cost as a float, for code written against LangChain's callback. Prefer ``cost``."""
        return float(self.cost)

    @property
    def prompt_tokens_cached(self) -> int:
        return self.cached_tokens

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(m for m, t in self.by_model.items() if t.unpriced_requests)

    # -- accounting --------------------------------------------------------------------------
    def _add(self, call: Call) -> None:
        u = call.usage
        with self._lock:
            self.calls.append(call)
            model = call.model or call.requested_model or "unknown"
            mt = self.by_model.get(model)
            if mt is None:
                mt = self.by_model[model] = ModelTotals()
            mt.requests += 1
            if not call.ok:
                self.failed_requests += 1
                mt.failed_requests += 1
            else:
                self.successful_requests += 1
            if u is not None:
                self.prompt_tokens += u.prompt_tokens
                self.completion_tokens += u.completion_tokens
                self.cached_tokens += u.cached_tokens
                self.cache_write_tokens += u.cache_write_tokens
                self.reasoning_tokens += u.reasoning_tokens
                mt.prompt_tokens += u.prompt_tokens
                mt.completion_tokens += u.completion_tokens
                mt.cached_tokens += u.cached_tokens
                mt.cache_write_tokens += u.cache_write_tokens
                mt.reasoning_tokens += u.reasoning_tokens
            if call.estimated:
                self.estimated_requests += 1
                mt.estimated_requests += 1
            if call.cost is None:
                if call.usage is not None:
                    self.unpriced_requests += 1
                    mt.unpriced_requests += 1
            else:
                self.cost += call.cost
                mt.cost = call.cost if mt.cost is None else mt.cost + call.cost

    # -- display -----------------------------------------------------------------------------
    def _lines(self) -> list[str]:
        lines = [f"Tokens Used: {self.total_tokens}", f"    Prompt Tokens: {self.prompt_tokens}"]
        if self.cached_tokens:
            lines.append(f"        Cached Tokens: {self.cached_tokens}")
        if self.cache_write_tokens:
            lines.append(f"        Cache Write Tokens: {self.cache_write_tokens}")
        lines.append(f"    Completion Tokens: {self.completion_tokens}")
        if self.reasoning_tokens:
            lines.append(f"        Reasoning Tokens: {self.reasoning_tokens}")
        lines.append(f"Successful Requests: {self.successful_requests}")
        if self.failed_requests:
            lines.append(f"Failed Requests: {self.failed_requests}")
        if self.estimated_requests:
            lines.append(
                f"Estimated Requests: {self.estimated_requests} (no usage in the response; "
                "tokens counted offline)"
            )
        if self.unpriced_requests:
            lines.append(
                f"Unpriced Requests: {self.unpriced_requests} ({', '.join(self.unpriced_models)}: "
                "price unknown, not in the total)"
            )
        lines.append(f"Total Cost (USD): ${_money(self.cost)}")
        return lines

    def __str__(self) -> str:
        with self._lock:
            return "\n".join(self._lines())

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<Tally{name} requests={self.successful_requests} tokens={self.total_tokens} "
            f"cost=${_money(self.cost)}{' +unpriced' if self.unpriced_requests else ''}>"
        )

    def _repr_html_(self) -> str:
        import html

        with self._lock:
            lines = self._lines()
        rows = []
        for line in lines:
            label, _, value = line.partition(": ")
            depth = (len(label) - len(label.lstrip())) // 4
            rows.append(
                f"<tr><td style='padding-left:{depth * 1.5}em;text-align:left'>"
                f"{html.escape(label.strip())}</td>"
                f"<td style='text-align:right'>{html.escape(value)}</td></tr>"
            )
        title = f"<caption>{html.escape(self.name)}</caption>" if self.name else ""
        return f"<table class='llmtally'>{title}{''.join(rows)}</table>"


def _money(d: Decimal) -> str:
    """An exact amount without float noise or exponent: 0.00111, 0, 12.5."""
    if not d:
        return "0"
    s = format(d.normalize(), "f")
    return s


def record(call: Call, scopes: tuple[Tally, ...]) -> None:
    """Add a finished call to every scope that was open when it was sent."""
    for tally in scopes:
        tally._add(call)


class _Track:
    """The object ``track()`` returns: a context manager (sync and async) and a decorator."""

    __slots__ = ("_tags", "_tokens", "last", "name")

    def __init__(self, name: str | None, tags: Mapping[str, Any] | None) -> None:
        self.name = name
        self._tags = tags
        self._tokens: list[Any] = []
        #: The Tally of the latest finished (or current) use.
        self.last: Tally | None = None

    def __enter__(self) -> Tally:
        if not _state.instrumented:
            from ._capture import ensure_instrumented

            ensure_instrumented()
        tally = Tally(self.name, self._tags)
        self._tokens.append(_scopes.set((*_scopes.get(), tally)))
        self.last = tally
        return tally

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        _scopes.reset(self._tokens.pop())

    async def __aenter__(self) -> Tally:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

    def __call__(self, func: F) -> F:
        import functools
        import inspect

        name, tags = self.name or func.__qualname__, self._tags
        outer = self

        # A fresh scope per invocation: concurrent invocations must not share one Tally.
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                scope = _Track(name, tags)
                with scope as tally:
                    outer.last = tally
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            scope = _Track(name, tags)
            with scope as tally:
                outer.last = tally
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def track(name: str | Callable[..., Any] | None = None, *, tags: Mapping[str, Any] | None = None) -> Any:
    """Count every LLM call made while the scope is open.

    Use it as a context manager (``with`` or ``async with``) or a decorator::

        with llmtally.track("nightly-report") as t:
            client.chat.completions.create(model="gpt-4o", messages=[...])
        print(t)            # Tokens Used / Prompt Tokens / ... / Total Cost (USD)

    Calls count in every enclosing scope, including calls made by asyncio tasks and by threads
    started inside it. As a decorator each invocation opens its own scope; the latest is
    ``decorated_track.last``.
    """
    if callable(name):  # bare @track
        return _Track(None, tags)(name)
    return _Track(name, tags)
