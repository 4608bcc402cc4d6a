"""Limits that stop a runaway agent before it spends, and offline estimates of a request.

``track(..., max_cost=, max_tokens=, max_requests=)`` gives a scope limits. Before a request is
sent, every enclosing scope with limits is checked against what it has spent (queued calls are
settled first); a scope at its limit refuses the request: it is never sent and ``BudgetExceeded``
is raised from the SDK call, as the SDK's own errors are. With ``on_exceed="warn"`` the request goes
out and a warning is logged instead. With ``preflight=True`` the request's worst case (its input,
counted offline, plus its whole output allowance) is priced too, and a request that could cross the
limit is refused.

Several threads or tasks in one scope check at the same time, so spend can pass a limit only by the
calls already in flight when it was reached.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import _scope

if TYPE_CHECKING:
    from ._scope import Tally

__all__ = ["BudgetExceeded", "Estimate", "Limits", "budget", "check", "estimate"]

log = logging.getLogger("llmtally")
# One check at a time: a request count or spend seen under it is not raced by another thread.
_check_lock = threading.Lock()


class BudgetExceeded(Exception):
    """A scope's limit was reached; the request was not sent."""

    def __init__(self, scope: str | None, limit: str, allowed: Any, spent: Any, extra: str = "") -> None:
        self.scope = scope
        self.limit = limit
        self.allowed = allowed
        self.spent = spent
        what = {"cost": "cost limit", "tokens": "token limit", "requests": "request limit"}[limit]
        fmt = (lambda v: f"${v}") if limit == "cost" else str
        super().__init__(
            f"llmtally: scope {scope or '(unnamed)'!r} reached its {what}: {fmt(spent)} of {fmt(allowed)}"
            f"{extra}; the request was not sent"
        )


@dataclass
class Limits:
    max_cost: Decimal | None = None
    max_tokens: int | None = None
    max_requests: int | None = None
    on_exceed: str = "raise"
    preflight: bool = False
    #: A shared budget (name, store, period): reserved in the ledger database before each request.
    shared: Any = None

    def __post_init__(self) -> None:
        if self.on_exceed not in ("raise", "warn"):
            raise ValueError(f"on_exceed must be 'raise' or 'warn', not {self.on_exceed!r}")
        if self.max_cost is not None:
            self.max_cost = Decimal(str(self.max_cost))


@dataclass(frozen=True)
class Estimate:
    """What a request will use at least (its input) and at most (plus its whole output allowance)."""

    model: str
    input_tokens: int
    max_output_tokens: int
    min_cost: Decimal | None
    max_cost: Decimal | None
    exact_tokenizer: bool


def estimate(messages_or_text: Any, *, model: str, max_output_tokens: int = 0) -> Estimate:
    """Count a request's input offline with the model's tokenizer and price its best and worst case.

    ``messages_or_text`` is a string or chat messages (``[{"role": ..., "content": ...}]``); chat
    framing is included. Tokenizers: o200k / cl100k for OpenAI models, Llama 3 and Qwen their own;
    other models are approximated with o200k (``exact_tokenizer`` is then ``False``)::

        >>> llmtally.estimate("Tell me a joke", model="gpt-4", max_output_tokens=50)
    """
    from . import _tokens
    from ._pricing import cost_of
    from .wire.openai import ChatCompletions

    if isinstance(messages_or_text, str):
        tokens = _tokens.count(messages_or_text, model)
    else:
        messages = list(messages_or_text)
        texts, count = ChatCompletions().request_text({"messages": messages})
        tokens = _tokens.estimate_chat_input(texts, count, model, _tokens.names_in(messages))
    _, exact = _tokens.encoding_name(model)
    low = cost_of(model, input_tokens=tokens, output_tokens=0)
    high = cost_of(model, input_tokens=tokens, output_tokens=max_output_tokens)
    return Estimate(model, tokens, max_output_tokens, low, high, exact)


#: The output allowance assumed for a request that states no max_tokens (the catalogue holds no
#: models' output limits), for preflight checks and shared-budget reservations.
DEFAULT_OUTPUT_ALLOWANCE = 4096


def _request_worst_case(parser: Any, request: Any, default_allowance: int = 0) -> Decimal | None:
    """The most a request can cost: its input counted offline plus its whole output allowance."""
    from . import wire

    obj = wire.loads(request.content)
    if obj is None:
        return None
    model = obj.get("model")
    if not isinstance(model, str):
        return None
    allowance = default_allowance
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(obj.get(key), int):
            allowance = obj[key]
            break
    from . import _tokens
    from ._pricing import cost_of

    texts, count = parser.request_text(obj)
    tokens = _tokens.estimate_chat_input(texts, count, model, _tokens.names_in(obj.get("messages")))
    return cost_of(model, input_tokens=tokens, output_tokens=allowance)


def check(scopes: tuple[Tally, ...], parser: Any, request: Any, meter: Any = None) -> None:
    """Refuse (or warn about) a request that would go past a limit of an enclosing scope."""
    limited = [t for t in scopes if t._limits is not None]
    if not limited:
        return
    with _check_lock:
        _check(limited, parser, request)
    shared = [t for t in limited if t._limits.shared is not None]
    if shared:
        _reserve(shared, parser, request, meter)


def _reserve(shared: list[Tally], parser: Any, request: Any, meter: Any) -> None:
    """Reserve the request's worst case in every shared budget, all or none."""
    worst = _request_worst_case(parser, request, DEFAULT_OUTPUT_ALLOWANCE)
    if worst is None:
        return  # an unpriced model: nothing to reserve, its spend is unknown
    made: list[tuple[Any, Decimal]] = []
    for tally in shared:
        name, store, period = tally._limits.shared
        if store.reserve(name, worst, period):
            made.append((tally._limits.shared, worst))
            continue
        for (n, st, _), amount in made:
            st.settle(n, amount, Decimal(0))
        state = store.get(name)
        spent = state.spent + state.reserved if state else worst
        allowed = state.max_cost if state else 0
        problem = BudgetExceeded(name, "cost", allowed, spent, f" (this request could cost up to ${worst})")
        if tally._limits.on_exceed == "raise":
            raise problem
        log.warning("%s", str(problem).replace("; the request was not sent", "; sending anyway (warn mode)"))
    if meter is not None and made:
        meter.reservations = made


def _check(limited: list[Tally], parser: Any, request: Any) -> None:
    _scope.flush()  # spend must include the calls that are queued
    worst: Decimal | None = None
    for tally in limited:
        limits = tally._limits
        assert limits is not None
        problem: BudgetExceeded | None = None
        if limits.max_requests is not None and tally._sent >= limits.max_requests:
            problem = BudgetExceeded(tally.name, "requests", limits.max_requests, tally._sent)
        elif limits.max_tokens is not None and tally.total_tokens >= limits.max_tokens:
            problem = BudgetExceeded(tally.name, "tokens", limits.max_tokens, tally.total_tokens)
        elif limits.max_cost is not None:
            spent = tally.cost
            if spent >= limits.max_cost:
                problem = BudgetExceeded(tally.name, "cost", limits.max_cost, spent)
            elif limits.preflight:
                if worst is None:
                    worst = _request_worst_case(parser, request, DEFAULT_OUTPUT_ALLOWANCE)
                if worst is not None and spent + worst > limits.max_cost:
                    problem = BudgetExceeded(
                        tally.name,
                        "cost",
                        limits.max_cost,
                        spent,
                        f" (this request could cost up to ${worst})",
                    )
        if problem is not None:
            if limits.on_exceed == "raise":
                raise problem
            if not tally._warned:
                tally._warned = True
                log.warning(
                    "%s", str(problem).replace("; the request was not sent", "; sending anyway (warn mode)")
                )
    for tally in limited:
        tally._sent += 1


def budget(
    name: str,
    *,
    max_cost: Any = None,
    period: str | None = None,
    ledger: str | None = None,
    on_exceed: str = "raise",
) -> Tally:
    """A scope bound to a budget shared by every process and host using the same ledger database.

    ``max_cost`` (USD) and ``period`` (``"day"``, ``"month"`` or ``None``) set the budget when given;
    otherwise the one already stored under ``name`` applies. Each request inside reserves its worst
    case (input counted offline plus its ``max_tokens``, or 4096 output tokens if it states none)
    atomically in the database and is refused with ``BudgetExceeded`` if that does not fit::

        with llmtally.budget("team-search", max_cost="50", period="day"):
            agent.invoke(...)
    """
    import os

    from ._config import current_ledger_url
    from ._scope import Tally
    from .ledger.budgets import BudgetStore

    url = ledger or current_ledger_url() or os.environ.get("LLMTALLY_LEDGER")
    if not url:
        raise ValueError(
            "a shared budget lives in a ledger: pass ledger= or call llmtally.configure(ledger=)"
        )
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = BudgetStore(url)
    if max_cost is not None:
        store.set(name, max_cost, period)
    elif store.get(name) is None:
        raise ValueError(f"no budget named {name!r} in the ledger; give max_cost= to create it")
    state = store.get(name)
    assert state is not None
    limits = Limits(on_exceed=on_exceed, shared=(name, store, state.period))
    return Tally(name, None, limits)


_stores: dict[str, Any] = {}
