"""The ``Tally``: what the calls made inside one scope used and cost, and the scope itself.

A Tally is a context manager (``with`` / ``async with``, see ``scope.enter`` / ``scope.leave``) and
a decorator. Its totals are brought up to date when read: its counters are served by
``__getattr__``, which first settles the queued calls (``pipeline.flush``) and adds the new ones up
(``usage.Totals``). Every public read flushes, so what a Tally shows is always complete.

This module is loaded by ``import llmtally``: builtins only at the top (threading, decimal,
logging, dataclasses would add tens of milliseconds); the rest loads with the first read.
"""

from __future__ import annotations

from _thread import allocate_lock

from .pipeline import PIPELINE
from .scope import _state, enter, leave

TYPE_CHECKING = False  # typing imports re (milliseconds); mypy reads it the same way.
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from decimal import Decimal
    from types import TracebackType
    from typing import Any, TypeVar

    from .._limits import Limits
    from .usage import Call, Totals

    F = TypeVar("F", bound=Callable[..., Any])

    # For type checkers a Tally has every field of Totals (their names come from usage.KINDS);
    # at run time they are served by Tally.__getattr__.
    _TallyFields = Totals
else:
    _TallyFields = object

__all__ = ["Tally"]


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
        enter(self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        leave(self)

    async def __aenter__(self) -> Tally:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        leave(self)

    def decorate(self, func: F) -> F:
        """``func`` wrapped so that each invocation runs inside this scope; ``.tally`` is this Tally.

        A generator function (sync or async) runs inside the scope only while it runs: each step
        enters it, and the caller's code between the steps is not counted.
        """
        import functools
        import inspect

        if self.name is None:
            self.name = func.__qualname__
        if inspect.isasyncgenfunction(func):
            wrapper: Any = _async_generator(self, func)
        elif inspect.isgeneratorfunction(func):
            wrapper = _generator(self, func)
        elif inspect.iscoroutinefunction(func):

            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                # Entered in the task that runs the coroutine: each invocation in its own context.
                with self:
                    return await func(*args, **kwargs)

        else:

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return func(*args, **kwargs)

        wrapper = functools.wraps(func)(wrapper)
        wrapper.tally = self
        return wrapper  # type: ignore[no-any-return]

    def __call__(self, func: F) -> F:
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
                    if kind.within != within or not kind.tokens:
                        continue
                    value = getattr(t, kind.name)
                    if within is None or value:
                        lines.append((depth, kind.label, str(value)))
                        parts(kind.name, depth + 1)

            parts(None, 1)
            lines.append((0, "Successful Requests", str(t.successful_requests)))
            for kind in KINDS:  # server-tool requests, when there were any
                if not kind.tokens and getattr(t, kind.name):
                    lines.append((0, kind.label, str(getattr(t, kind.name))))
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
            from . import currency

            shown = currency.display()
            amount = format_usd(cost) if cost is not None else "0"
            lines.append(
                (0, f"Total Cost ({shown})", f"${amount}" if shown == "USD" else f"{amount} {shown}")
            )
            converted = sorted({c.native_currency for c in self._calls if c.native_currency})
            if converted:  # say the rates used
                table = currency.rates()
                said = [f"1 {code} = {table[code]} {shown}" for code in converted if code in table]
                missing = [code for code in converted if code not in table]
                text = ", ".join(said + [f"no rate for {code}: unpriced" for code in missing])
                lines.append((0, "Rates", text))
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


def _generator(tally: Tally, func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        gen = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            with tally:
                try:
                    if thrown is None:
                        item = gen.send(sent)
                    else:
                        item, thrown = gen.throw(thrown), None
                except StopIteration as stop:
                    return stop.value
            try:
                sent = yield item
            except GeneratorExit:
                with tally:
                    gen.close()
                raise
            except BaseException as exc:
                thrown = exc

    return wrapper


def _async_generator(tally: Tally, func: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        agen = func(*args, **kwargs)
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            with tally:
                try:
                    if thrown is None:
                        item = await agen.asend(sent)
                    else:
                        item, thrown = await agen.athrow(thrown), None
                except StopAsyncIteration:
                    return
            try:
                sent = yield item
            except GeneratorExit:
                with tally:
                    await agen.aclose()
                raise
            except BaseException as exc:
                thrown = exc

    return wrapper
