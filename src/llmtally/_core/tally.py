"""The ``Tally``: what the calls made inside one scope used and cost, and the scope itself.

A Tally is a context manager (``with`` / ``async with``, see ``scope.enter`` / ``scope.leave``) and
a decorator. Its totals are brought up to date when read: its counters are served by
``__getattr__``, which first settles the queued calls (``pipeline.flush``) and adds the new ones up
(``usage.Totals``). Every public read flushes, so what a Tally shows is always complete.

Its memory is bounded whether or not it is ever read (``llmtally run`` keeps one open for a whole
process): ``pipeline.deliver`` appends each call to ``_calls``, and once that list passes
``_trim_at`` it calls ``_trim``, which adds the calls up and forgets all but the most recent
``keep_calls`` of them. The totals, the per-model totals and the currencies seen stay exact.

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

    from .._limits import BudgetExceeded, Limits
    from .relay import Relay
    from .usage import Call, Totals

    F = TypeVar("F", bound=Callable[..., Any])

    # For type checkers a Tally has every field of Totals (their names come from usage.KINDS);
    # at run time they are served by Tally.__getattr__.
    _TallyFields = Totals
else:
    _TallyFields = object

__all__ = ["KEEP_CALLS", "Tally"]

#: How many of its most recent calls a Tally keeps as records (``Tally.calls``) unless told
#: otherwise: a ``Call`` takes about 0.8 KB, so about 4 MB, whatever the number of calls.
KEEP_CALLS = 5000
#: Kept when every call is asked for: past any list a process could hold.
_ALL = 1 << 62


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
        self.fields = frozenset((*TOTAL_NAMES, "successful_requests"))


_usage = _Usage()


class Tally(_TallyFields):
    """What the calls made inside one scope used and cost; also the scope itself.

    ``prompt_tokens`` includes cached input, ``completion_tokens`` includes reasoning, for every
    provider. ``cost`` is the exact ``Decimal`` sum over the calls whose price is known;
    ``unpriced_requests`` counts the others, which ``str(tally)`` names. Safe to read while other
    threads add to it.

    A Tally is a context manager (``with`` / ``async with``) and a decorator: entering it again,
    or calling a function it decorates, adds to the same totals. One Tally can be entered at once
    by many threads and tasks (a decorated function under ``asyncio.gather`` or in a thread pool):
    each entry is undone in its own thread or task, and the totals are those of all the entries.

    ``calls`` holds the records of the most recent ``keep_calls`` calls (``KEEP_CALLS``, 5000,
    unless given; ``True`` for all of them, ``False`` for none) and ``calls_dropped`` counts the
    older ones it no longer holds; the totals, ``by_model`` and ``str(tally)`` count every call.
    """

    if TYPE_CHECKING:
        #: The exact sum over the priced calls: ``Decimal(0)`` until one is priced, never None.
        cost: Decimal

    # Class-level defaults: a scope costs no more to open than it must.
    #: Limits (see ``_limits``): None for a scope without any, which is what the call path checks.
    _limits: Limits | None = None
    _sent = 0
    _warned = False
    _refused: BudgetExceeded | None = None
    _totals: Totals | None = None
    _by_model: dict[str, Totals] | None = None
    _models_seen = 0  # calls of _calls already added into _by_model
    _seen = 0  # calls of _calls already added into _totals
    #: Records kept, and the length of ``_calls`` past which ``pipeline.deliver`` trims it: an
    #: eighth more (at least 16), so that forgetting the oldest costs O(1) a call.
    _keep = KEEP_CALLS
    _trim_at = KEEP_CALLS + KEEP_CALLS // 8
    _dropped = 0  # calls trimmed from the front of _calls
    #: The native currencies of the trimmed calls (the summary names their rates).
    _currencies: frozenset[str] | set[str] = frozenset()
    _records: tuple[int, list[Call]] | None = None  # what ``calls`` last returned, and for which call
    #: Where the calls this scope's worker processes make arrive (see ``relay``); None until work
    #: leaves this process from inside the scope.
    _relay: Relay | None = None

    def __init__(
        self,
        name: str | None = None,
        tags: Mapping[str, object] | None = None,
        limits: Limits | None = None,
        keep_calls: int | bool = KEEP_CALLS,
    ) -> None:
        self.name = name
        self.tags: dict[str, object] = dict(tags) if tags else {}
        if limits is not None:
            self._limits = limits
        if keep_calls is not KEEP_CALLS:  # the default is the class attributes' already
            self._keep_calls(keep_calls)
        #: The settled calls not yet trimmed, appended by ``pipeline.deliver`` (list.append is
        #: atomic); only ``_trim`` removes any, under ``_lock``, which every read by index holds.
        self._calls: list[Call] = []
        self._lock = allocate_lock()

    def _keep_calls(self, keep: object) -> None:
        if keep is True:
            self._keep = self._trim_at = _ALL
        elif keep is False:
            self._keep, self._trim_at = 0, 16
        elif isinstance(keep, int) and keep >= 0:
            self._keep, self._trim_at = keep, keep + max(keep >> 3, 16)
        else:
            raise ValueError(f"keep_calls must be True, False or a whole number of calls >= 0, not {keep!r}")

    # -- the scope -----------------------------------------------------------------------------
    # Metering never breaks the caller's code: a fault in opening or closing the scope is logged.
    def __enter__(self) -> Tally:
        try:
            if not _state.started:
                _state.start()
            enter(self)
        except Exception:
            _log_failure("open", self)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            leave(self)
        except Exception:
            _log_failure("close", self)

    async def __aenter__(self) -> Tally:
        return self.__enter__()

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(et, ev, tb)

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
            value = getattr(self._settled(), name)
            if name == "cost" and value is None:
                return _usage.zero
            return value

    def _settled(self) -> Totals:
        """Settle the queued calls and add the new ones to the totals; the totals."""
        if PIPELINE.pending:
            PIPELINE.flush()
        if self._relay is not None:
            self._relay.pull(self)
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

    def _trim(self) -> None:
        """Add the calls up and forget all but the most recent ``_keep`` (``pipeline.deliver`` calls
        it when ``_calls`` passes ``_trim_at``). Never raises: it runs inside settlement."""
        try:
            with self._lock:
                calls = self._calls
                end = len(calls)
                drop = end - self._keep
                if drop <= 0:  # another thread trimmed it first
                    return
                totals = self._totals
                if totals is None:
                    if not _usage.fields:
                        _usage.load()
                    totals = self._totals = _usage.new_totals()
                add = totals.add
                for i in range(self._seen, end):
                    add(calls[i])
                self._seen = end
                seen = self._models_seen
                if seen < drop:  # by_model must count the forgotten calls too
                    self._add_to_models(calls, seen, drop)
                    seen = self._models_seen = drop
                currencies = {c.native_currency for c in calls[:drop] if c.native_currency}
                if currencies:
                    self._currencies = currencies.union(self._currencies)
                # Calls appended meanwhile (by another thread) go after ``end``: every index shifts
                # by ``drop``.
                del calls[:drop]
                self._seen = end - drop
                self._models_seen = seen - drop
                self._dropped += drop
        except Exception:
            _log_failure("add up the calls of", self)

    @property
    def calls(self) -> list[Call]:
        """The records of the most recent calls, oldest first: at most ``keep_calls`` of them (see
        ``calls_dropped``). A new list; read again, it is the same list until a call is added."""
        self._settled()
        with self._lock:
            calls = self._calls
            total = self._dropped + len(calls)
            cached = self._records
            if cached is not None and cached[0] == total:
                return cached[1]
            keep = self._keep
            records = calls[-keep:] if keep else []
            self._records = (total, records)
            return records

    @property
    def calls_dropped(self) -> int:
        """How many calls ``calls`` no longer holds (the oldest, past ``keep_calls``); they are still
        in every total."""
        self._settled()
        with self._lock:
            return self._dropped + max(len(self._calls) - self._keep, 0)

    @property
    def refused(self) -> BudgetExceeded | None:
        """The last request this scope's own limits refused (the ``BudgetExceeded`` raised), or None:
        still known when the code inside caught the exception."""
        return self._refused

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
        with self._lock:
            calls = self._calls
            end = len(calls)
            by_model = self._add_to_models(calls, self._models_seen, end)
            self._models_seen = end
            return by_model

    def _add_to_models(self, calls: list[Call], start: int, end: int) -> dict[str, Totals]:
        """Add ``calls[start:end]`` to the per-model totals; under ``_lock``."""
        from .usage import ModelTotals

        by_model = self._by_model
        if by_model is None:
            by_model = self._by_model = {}
        for i in range(start, end):
            call = calls[i]
            model = call.model or call.requested_model or "unknown"
            totals = by_model.get(model)
            if totals is None:
                totals = by_model[model] = ModelTotals()
            totals.add(call)
        return by_model

    # -- display -------------------------------------------------------------------------------
    def _summary(self) -> list[tuple[int, str, str]]:
        """(depth, label, value) lines of the summary, LangChain's labels in LangChain's order."""
        from .money import format_usd
        from .text import printable
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
                        # Model names are what servers sent: shown, never acted on by a terminal.
                        f"{t.unpriced_requests} ({', '.join(map(printable, unpriced))}: price unknown, "
                        "not in the total)",
                    )
                )
            cost = t.cost
            from . import currency

            shown = currency.display()
            amount = format_usd(cost) if cost is not None else "0"
            lines.append(
                (0, f"Total Cost ({shown})", f"${amount}" if shown == "USD" else f"{amount} {shown}")
            )
            converted = sorted(
                self._currencies.union(c.native_currency for c in self._calls if c.native_currency)
            )
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


def _log_failure(doing: str, tally: Tally) -> None:
    import logging

    logging.getLogger("llmtally").exception(
        "llmtally: could not %s the scope %r; the caller's code goes on", doing, tally.name
    )


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
