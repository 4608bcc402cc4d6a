"""Scopes: the ``Tally`` that ``track()`` returns, the open scopes, and the switch that suppresses metering.

The open scopes are a tuple in a ContextVar. Entering a scope sets a longer tuple (a ``_Frame``
that also keeps the token of that ``set``) and leaving resets exactly that token, so nesting and
exceptions restore the outer state exactly (LangChain's callback sets its variable without a reset
and loses the outer scope). The token lives in the value, not in the Tally: one Tally entered at
once by many threads or tasks (a decorated function under ``asyncio.gather``, a shared scope object)
resets each context's own token.

asyncio tasks copy the context, so they see the scopes that were open when they were created;
threads get them from ``_capture.threads``.

A Tally's totals are brought up to date when read: its counters are served by ``__getattr__``,
which first settles the queued calls (``pipeline.flush``) and adds the new ones up. Every public
read flushes, so what a Tally shows is always complete.

This module is loaded by ``import llmtally``: builtins only at the top (threading, decimal,
logging, dataclasses would add tens of milliseconds); the rest loads with the first call.
"""

from __future__ import annotations

from _contextvars import ContextVar
from _thread import allocate_lock

from .pipeline import PIPELINE

TYPE_CHECKING = False  # typing imports re (milliseconds); mypy reads it the same way.
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from decimal import Decimal
    from types import TracebackType
    from typing import Any, Generic, ParamSpec, Protocol, TypeVar

    from .._limits import Limits
    from .usage import Call, Totals

    P = ParamSpec("P")
    R = TypeVar("R")
    R_co = TypeVar("R_co", covariant=True)

    class Tracked(Protocol, Generic[P, R_co]):
        """A function decorated with ``track``: the same signature, and its scope as ``.tally``."""

        tally: Tally

        def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    # For type checkers a Tally has every field of Totals (their names come from usage.KINDS);
    # at run time they are served by Tally.__getattr__.
    _TallyFields = Totals
else:
    _TallyFields = object

__all__ = [
    "Suppressed",
    "Tally",
    "current_scopes",
    "is_started",
    "is_suppressed",
    "mark_started",
    "set_starter",
]


class _Frame(tuple):  # type: ignore[type-arg]
    """The open scopes, outermost first, and the token that restores the ones before them.

    Settlement also keeps the scopes' names and merged tags here (``names_and_tags``): every call
    made while these scopes are open shares them.
    """

    token: Any
    names_and_tags: tuple[tuple[str, ...], Mapping[str, object]]


_EMPTY = _Frame()
_scopes: ContextVar[_Frame] = ContextVar("llmtally_scopes", default=_EMPTY)
#: Set inside ``with llmtally.suppress():``: nothing in it is metered.
_suppressed: ContextVar[_Quiet | None] = ContextVar("llmtally_suppressed", default=None)


class _State:
    """Whether the runtime has started; checked on every scope entry, so one attribute read."""

    started = False

    @staticmethod
    def start() -> None:
        """Replaced by the public API layer (``_api``) with the runtime's start."""


_state = _State()


def set_starter(start: Callable[[], None]) -> None:
    """What the first scope entry runs (the runtime's ``start``: hooks, threads, environment)."""
    _state.start = start  # type: ignore[method-assign]


def mark_started(started: bool) -> None:
    _state.started = started


def is_started() -> bool:
    return _state.started


def current_scopes() -> tuple[Tally, ...]:
    """The open scopes, outermost first."""
    return _scopes.get()


def is_suppressed() -> bool:
    return _suppressed.get() is not None


class _Quiet:
    """The value of the suppress switch while on: it keeps the token that turns it back off."""

    __slots__ = ("token",)

    def __init__(self) -> None:
        self.token: Any = None


class Suppressed:
    """``with llmtally.suppress():`` -- calls made inside are not metered, counted or recorded.

    Like a Tally, it keeps no per-entry state of its own: one object can be entered at once by
    many threads or tasks.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        quiet = _Quiet()
        quiet.token = _suppressed.set(quiet)

    def __exit__(self, *exc: object) -> None:
        quiet = _suppressed.get()
        if quiet is not None and quiet.token is not None:
            _suppressed.reset(quiet.token)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


class _Usage:
    """What the Tally needs of ``usage`` (dataclasses, decimal: too heavy for ``import llmtally``),
    loaded on the first read instead of by an import statement on every read."""

    fields: frozenset[str] = frozenset()
    new_totals: type[Totals]
    empty: Totals
    zero: Decimal

    def load(self) -> None:
        from .money import ZERO
        from .usage import TOTAL_NAMES, Totals

        self.zero = ZERO
        self.new_totals = Totals
        #: The totals of a Tally without calls (never added to: a Tally with calls has its own).
        self.empty = Totals()
        self.fields = frozenset((*TOTAL_NAMES, "successful_requests", "calls"))


_usage = _Usage()


class Tally(_TallyFields):
    """What the calls made inside one scope used and cost; also the scope itself.

    ``prompt_tokens`` includes cached input, ``completion_tokens`` includes reasoning, for every
    provider. ``cost`` is the exact ``Decimal`` sum over the calls whose price is known;
    ``unpriced_requests`` counts the others, which ``str(tally)`` names. Safe to read while other
    threads add to it.

    A Tally is a context manager (``with`` / ``async with``) and a decorator: entering it again,
    or calling a function it decorates, adds to the same totals.
    """

    if TYPE_CHECKING:
        #: The exact sum over the priced calls: ``Decimal(0)`` until one is priced, never None.
        cost: Decimal
        calls: list[Call]

    # Class-level defaults: a scope costs no more to open than it must.
    #: Limits (see ``_limits``): None for a scope without any, which is what the call path checks.
    _limits: Limits | None = None
    _sent = 0
    _warned = False
    _totals: Totals | None = None
    _by_model: dict[str, Totals] | None = None
    _models_seen = 0
    _seen = 0  # calls already added into _totals

    def __init__(
        self, name: str | None = None, tags: Mapping[str, object] | None = None, limits: Limits | None = None
    ) -> None:
        self.name = name
        self.tags: dict[str, object] = dict(tags) if tags else {}
        if limits is not None:
            self._limits = limits
        #: Every settled call, appended by ``pipeline.deliver`` (list.append is atomic).
        self._calls: list[Call] = []
        self._lock = allocate_lock()

    # -- the scope -----------------------------------------------------------------------------
    def __enter__(self) -> Tally:
        if not _state.started:
            _state.start()
        stack = _scopes.get()
        # Entered again while open (a recursive decorated function): count each call once.
        frame = _Frame(stack) if self in stack else _Frame((*stack, self))
        frame.token = _scopes.set(frame)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        token = getattr(_scopes.get(), "token", None)
        if token is not None:
            _scopes.reset(token)

    async def __aenter__(self) -> Tally:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

    def decorate(self, func: Callable[P, R]) -> Tracked[P, R]:
        """``func`` wrapped so that each invocation runs inside this scope; ``.tally`` is this Tally."""
        import functools
        import inspect

        if self.name is None:
            self.name = func.__qualname__
        if inspect.iscoroutinefunction(func):
            afunc: Callable[P, Awaitable[Any]] = func

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                # Entered in the task that runs the coroutine, so each invocation has its own token.
                with self:
                    return await afunc(*args, **kwargs)

            async_wrapper.tally = self  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return func(*args, **kwargs)

        wrapper.tally = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def __call__(self, func: Callable[P, R]) -> Tracked[P, R]:
        """Decorate ``func``: each invocation runs inside this scope and adds to its totals."""
        return self.decorate(func)

    # -- reading -------------------------------------------------------------------------------
    if not TYPE_CHECKING:  # type checkers see the fields of Totals instead (see _TallyFields)

        def __getattr__(self, name: str) -> Any:
            # Only for names not found on the instance or class: the counters of Totals.
            if name[:1] == "_":
                raise AttributeError(f"'Tally' object has no attribute {name!r}")
            if not _usage.fields:
                _usage.load()
            if name not in _usage.fields:
                raise AttributeError(f"'Tally' object has no attribute {name!r}")
            totals = self._settled()
            if name == "calls":
                return self._calls
            value = getattr(totals, name)
            if name == "cost" and value is None:
                return _usage.zero
            return value

    def _settled(self) -> Totals:
        """Settle the queued calls and add the new ones to the totals; the totals."""
        if PIPELINE.pending:
            PIPELINE.flush()
        calls = self._calls
        if self._seen == len(calls):
            totals = self._totals
            if totals is not None:
                return totals
            if not _usage.fields:
                _usage.load()
            return _usage.empty
        with self._lock:
            totals = self._totals
            if totals is None:
                if not _usage.fields:
                    _usage.load()
                totals = self._totals = _usage.new_totals()
            end = len(calls)
            add = totals.add
            for i in range(self._seen, end):
                add(calls[i])
            self._seen = end
        return totals

    # -- LangChain compatibility -------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        t = self._settled()
        return t.prompt_tokens + t.completion_tokens

    @property
    def total_cost(self) -> float:
        """The cost as a float, for code written against LangChain's callback. Prefer ``cost``."""
        return float(self.cost)

    @property
    def prompt_tokens_cached(self) -> int:
        return self._settled().cached_tokens

    @property
    def by_model(self) -> dict[str, Totals]:
        """Totals per model (the served model's name), in the order first seen."""
        self._settled()
        return self._models()

    @property
    def unpriced_models(self) -> list[str]:
        self._settled()
        return self._unpriced_models()

    def _unpriced_models(self) -> list[str]:
        return sorted(m for m, t in self._models().items() if t.unpriced_requests)

    def _models(self) -> dict[str, Totals]:
        """The per-model breakdown, brought up to date from the calls (only when asked for)."""
        from .usage import ModelTotals

        with self._lock:
            by_model = self._by_model
            if by_model is None:
                by_model = self._by_model = {}
            calls = self._calls
            end = len(calls)
            for i in range(self._models_seen, end):
                call = calls[i]
                model = call.model or call.requested_model or "unknown"
                totals = by_model.get(model)
                if totals is None:
                    totals = by_model[model] = ModelTotals()
                totals.add(call)
            self._models_seen = end
            return by_model

    # -- display -------------------------------------------------------------------------------
    def _summary(self) -> list[tuple[int, str, str]]:
        """(depth, label, value) lines of the summary, LangChain's labels in LangChain's order."""
        from .money import format_usd
        from .usage import KINDS

        t = self._settled()
        unpriced = self._unpriced_models() if t.unpriced_requests else []
        with self._lock:
            lines = [(0, "Tokens Used", str(t.prompt_tokens + t.completion_tokens))]

            # Each kind under the kind it is part of; the two wholes always, their parts when not 0.
            def parts(within: str | None, depth: int) -> None:
                for kind in KINDS:
                    if kind.within != within:
                        continue
                    value = getattr(t, kind.name)
                    if within is None or value:
                        lines.append((depth, kind.label, str(value)))
                        parts(kind.name, depth + 1)

            parts(None, 1)
            lines.append((0, "Successful Requests", str(t.successful_requests)))
            if t.failed_requests:
                lines.append((0, "Failed Requests", str(t.failed_requests)))
            if t.estimated_requests:
                lines.append(
                    (
                        0,
                        "Estimated Requests",
                        f"{t.estimated_requests} (no usage in the response; tokens counted offline)",
                    )
                )
            if t.unpriced_requests:
                lines.append(
                    (
                        0,
                        "Unpriced Requests",
                        f"{t.unpriced_requests} ({', '.join(unpriced)}: price unknown, not in the total)",
                    )
                )
            cost = t.cost
            lines.append((0, "Total Cost (USD)", f"${format_usd(cost) if cost is not None else '0'}"))
        return lines

    def __str__(self) -> str:
        return "\n".join(f"{'    ' * depth}{label}: {value}" for depth, label, value in self._summary())

    def __repr__(self) -> str:
        from .money import format_usd

        t = self._settled()
        name = f" {self.name!r}" if self.name else ""
        cost = format_usd(t.cost) if t.cost is not None else "0"
        return (
            f"<Tally{name} requests={t.successful_requests} "
            f"tokens={t.prompt_tokens + t.completion_tokens} "
            f"cost=${cost}{' +unpriced' if t.unpriced_requests else ''}>"
        )

    def _repr_html_(self) -> str:
        import html

        rows = [
            f"<tr><td style='padding-left:{depth * 1.5}em;text-align:left'>{html.escape(label)}</td>"
            f"<td style='text-align:right'>{html.escape(value)}</td></tr>"
            for depth, label, value in self._summary()
        ]
        title = f"<caption>{html.escape(self.name)}</caption>" if self.name else ""
        return f"<table class='llmtally'>{title}{''.join(rows)}</table>"
