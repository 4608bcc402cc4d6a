"""Scopes: ``track()`` and the ``Tally`` it yields.

The open scopes are a tuple in a ContextVar. Entering a scope sets a longer tuple and keeps the
token; leaving resets it, so nesting and exceptions restore the outer state exactly (LangChain's
callback sets its variable without a reset and loses the outer scope).

Calls are settled lazily. On the call path the HTTP hook only queues what it saw (``pending``);
parsing, pricing and adding up happen in ``flush()``, which runs when a Tally is read, when the
queue passes ``FLUSH_AT`` calls, or when a sink needs the calls. A metered call's latency carries
almost nothing, and a batch of calls is settled together, with warm caches. Every public read of a
Tally flushes first, so what it shows is always complete.

asyncio tasks copy the context, so they see the scopes that were open when they were created.
Threads do not: ``instrument()`` hands the scopes to ``threading.Thread`` and to
``ThreadPoolExecutor.submit`` (see ``_threads``).
"""

from __future__ import annotations

from _collections import deque
from _thread import RLock, allocate_lock
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

__all__ = ["FLUSH_AT", "ModelTotals", "Tally", "current_scopes", "flush", "pending", "track"]

if TYPE_CHECKING:
    F = TypeVar("F", bound="Callable[..., Any]")

_scopes: ContextVar[tuple[Tally, ...]] = ContextVar("llmtally_scopes", default=())


#: Calls seen on the wire and not yet settled (see the module docstring); appended on the call path.
pending: deque[Any] = deque()
#: Settle in the call path once this many calls wait: bounds the memory the queue holds.
FLUSH_AT = 64
_flush_lock = RLock()  # re-entrant: a sink may read a Tally while flush() runs it


def flush() -> None:
    """Settle every queued call: parse, price, add to its scopes, hand to the sinks."""
    if not pending:
        return
    with _flush_lock:
        while pending:
            try:
                meter = pending.popleft()
            except IndexError:
                return
            meter.settle()


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
        return int(self.prompt_tokens + self.completion_tokens)

    def add(self, call: Call) -> None:
        u = call.usage
        self.requests += 1
        if not call.ok:
            self.failed_requests += 1
        if u is not None:
            self.prompt_tokens += u.prompt_tokens
            self.completion_tokens += u.completion_tokens
            self.cached_tokens += u.cached_tokens
            self.cache_write_tokens += u.cache_write_tokens
            self.reasoning_tokens += u.reasoning_tokens
        if call.estimated:
            self.estimated_requests += 1
        if call.cost is None:
            if u is not None:
                self.unpriced_requests += 1
        else:
            self.cost = call.cost if self.cost is None else self.cost + call.cost

    def __repr__(self) -> str:
        cost = "unknown" if self.cost is None else f"${_money(self.cost)}"
        return (
            f"ModelTotals(requests={self.requests}, prompt_tokens={self.prompt_tokens}, "
            f"completion_tokens={self.completion_tokens}, cost={cost})"
        )


class _Counter:
    """A Tally field that settles the queued calls before it is read."""

    __slots__ = ("slot",)

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        if pending:
            flush()
        if obj._seen != len(obj._calls):
            obj._sync()
        return getattr(obj, self.slot)


class Tally:
    """What the calls made inside one scope used and cost; also the scope itself.

    ``prompt_tokens`` includes cached input, ``completion_tokens`` includes reasoning, for every
    provider. ``cost`` is the exact ``Decimal`` sum over the calls whose price is known;
    ``unpriced_requests`` counts the others, which ``str(tally)`` names. Safe to read while other
    threads add to it.

    A Tally is a context manager (``with`` / ``async with``) and a decorator: entering it again,
    or calling a function it decorates, adds to the same totals.
    """

    prompt_tokens = _Counter()
    completion_tokens = _Counter()
    cached_tokens = _Counter()
    cache_write_tokens = _Counter()
    reasoning_tokens = _Counter()
    successful_requests = _Counter()
    failed_requests = _Counter()
    unpriced_requests = _Counter()
    estimated_requests = _Counter()
    cost = _Counter()
    calls = _Counter()

    # Counters start as class attributes: a scope costs no more to open than it must, and the
    # first call added gives the instance its own value.
    _prompt_tokens = 0
    _completion_tokens = 0
    _cached_tokens = 0
    _cache_write_tokens = 0
    _reasoning_tokens = 0
    _successful_requests = 0
    _failed_requests = 0
    _unpriced_requests = 0
    _estimated_requests = 0

    # Limits (see _budget): None for a scope without any, which is what the send hook checks.
    _limits: Any = None
    _sent = 0
    _warned = False

    def __init__(
        self, name: str | None = None, tags: Mapping[str, Any] | None = None, limits: Any = None
    ) -> None:
        self.name = name
        if limits is not None:
            self._limits = limits
        self.tags: dict[str, Any] = dict(tags) if tags else {}
        self._cost = _state.zero or _state.load_zero()
        self._by_model: dict[str, ModelTotals] = {}
        self._models_seen = 0
        self._calls: list[Call] = []
        self._seen = 0  # calls already added into the totals
        self._lock = allocate_lock()
        self._tokens: list[Any] = []

    # -- the scope -----------------------------------------------------------------------------
    def __enter__(self) -> Tally:
        if not _state.instrumented:
            from ._capture import ensure_instrumented

            ensure_instrumented()
        stack = _scopes.get()
        # Re-entered while open (a recursive decorated function): count each call once.
        self._tokens.append(_scopes.set((*stack, self)) if self not in stack else None)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = self._tokens.pop()
        if token is not None:
            _scopes.reset(token)

    async def __aenter__(self) -> Tally:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each invocation runs inside this scope and adds to its totals."""
        import functools
        import inspect

        if self.name is None:
            self.name = func.__qualname__
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Entered in the task that runs the coroutine, so each invocation has its token.
                with self:
                    return await func(*args, **kwargs)

            async_wrapper.tally = self  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        wrapper.tally = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    # -- LangChain compatibility -------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return int(self.prompt_tokens + self.completion_tokens)

    @property
    def total_cost(self) -> float:
        """The cost as a float, for code written against LangChain's callback. Prefer ``cost``."""
        return float(self.cost)

    @property
    def prompt_tokens_cached(self) -> int:
        return int(self.cached_tokens)

    @property
    def by_model(self) -> dict[str, ModelTotals]:
        """Totals per model (the served model's name), in the order first seen."""
        self._settled()
        return self._models()

    @property
    def unpriced_models(self) -> list[str]:
        self._settled()
        return self._unpriced_models()

    def _unpriced_models(self) -> list[str]:
        return sorted(m for m, t in self._models().items() if t.unpriced_requests)

    # -- accounting --------------------------------------------------------------------------
    def _add(self, call: Call) -> None:
        # list.append is atomic: settling a call costs one append per scope. The totals are
        # brought up to date when read (_sync), many calls at a time.
        self._calls.append(call)

    def _sync(self) -> None:
        with self._lock:
            calls = self._calls
            end = len(calls)
            for i in range(self._seen, end):
                self._total(calls[i])
            self._seen = end

    def _total(self, call: Call) -> None:
        u = call.usage
        if not call.ok:
            self._failed_requests += 1
        else:
            self._successful_requests += 1
        if u is not None:
            self._prompt_tokens += u.prompt_tokens
            self._completion_tokens += u.completion_tokens
            self._cached_tokens += u.cached_tokens
            self._cache_write_tokens += u.cache_write_tokens
            self._reasoning_tokens += u.reasoning_tokens
        if call.estimated:
            self._estimated_requests += 1
        if call.cost is None:
            if u is not None:
                self._unpriced_requests += 1
        else:
            self._cost += call.cost

    def _models(self) -> dict[str, ModelTotals]:
        """The per-model breakdown, brought up to date from ``calls`` (only when asked for)."""
        with self._lock:
            calls = self._calls
            end = len(calls)
            by_model = self._by_model
            for i in range(self._models_seen, end):
                call = calls[i]
                model = call.model or call.requested_model or "unknown"
                mt = by_model.get(model)
                if mt is None:
                    mt = by_model[model] = ModelTotals()
                mt.add(call)
            self._models_seen = end
            return by_model

    # -- display -----------------------------------------------------------------------------
    def _lines(self, unpriced: list[str]) -> list[str]:
        # Called with self._lock held: only underscore fields here, no flushing properties.
        total = self._prompt_tokens + self._completion_tokens
        lines = [f"Tokens Used: {total}", f"    Prompt Tokens: {self._prompt_tokens}"]
        if self._cached_tokens:
            lines.append(f"        Cached Tokens: {self._cached_tokens}")
        if self._cache_write_tokens:
            lines.append(f"        Cache Write Tokens: {self._cache_write_tokens}")
        lines.append(f"    Completion Tokens: {self._completion_tokens}")
        if self._reasoning_tokens:
            lines.append(f"        Reasoning Tokens: {self._reasoning_tokens}")
        lines.append(f"Successful Requests: {self._successful_requests}")
        if self._failed_requests:
            lines.append(f"Failed Requests: {self._failed_requests}")
        if self._estimated_requests:
            lines.append(
                f"Estimated Requests: {self._estimated_requests} (no usage in the response; "
                "tokens counted offline)"
            )
        if self._unpriced_requests:
            lines.append(
                f"Unpriced Requests: {self._unpriced_requests} ({', '.join(unpriced)}: "
                "price unknown, not in the total)"
            )
        lines.append(f"Total Cost (USD): ${_money(self._cost)}")
        return lines

    def _settled(self) -> None:
        flush()
        if self._seen != len(self._calls):
            self._sync()

    def __str__(self) -> str:
        self._settled()
        unpriced = self._unpriced_models() if self._unpriced_requests else []
        with self._lock:
            return "\n".join(self._lines(unpriced))

    def __repr__(self) -> str:
        self._settled()
        name = f" {self.name!r}" if self.name else ""
        return (
            f"<Tally{name} requests={self._successful_requests} "
            f"tokens={self._prompt_tokens + self._completion_tokens} "
            f"cost=${_money(self._cost)}{' +unpriced' if self._unpriced_requests else ''}>"
        )

    def _repr_html_(self) -> str:
        import html

        self._settled()
        unpriced = self._unpriced_models() if self._unpriced_requests else []
        with self._lock:
            lines = self._lines(unpriced)
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


def track(
    name: str | Callable[..., Any] | None = None,
    *,
    tags: Mapping[str, Any] | None = None,
    max_cost: Any = None,
    max_tokens: int | None = None,
    max_requests: int | None = None,
    on_exceed: str = "raise",
    preflight: bool = False,
) -> Any:
    """A new scope: count every LLM call made while it is open.

    Use it as a context manager (``with`` or ``async with``) or a decorator::

        with llmtally.track("nightly-report") as t:
            client.chat.completions.create(model="gpt-4o", messages=[...])
        print(t)            # Tokens Used / Prompt Tokens / ... / Total Cost (USD)

        @llmtally.track("embed")
        def embed(texts): ...
        embed.tally         # every invocation's calls, added up

    Calls count in every enclosing scope, including calls made by asyncio tasks and by threads
    started inside it.

    Limits stop spending before it happens: with ``max_cost`` (USD, a Decimal or a string),
    ``max_tokens`` or ``max_requests``, a request sent once the scope has reached one is refused
    with ``llmtally.BudgetExceeded`` (``on_exceed="warn"`` logs and sends it); ``preflight=True``
    also refuses a request whose worst case would cross ``max_cost``::

        with llmtally.track("agent", max_cost="0.50"):
            agent.invoke(...)        # BudgetExceeded once the run has spent $0.50
    """
    limits = None
    if max_cost is not None or max_tokens is not None or max_requests is not None:
        from ._budget import Limits

        limits = Limits(max_cost, max_tokens, max_requests, on_exceed, preflight)
    if callable(name):  # bare @track
        return Tally(None, tags, limits)(name)
    return Tally(name, tags, limits)
