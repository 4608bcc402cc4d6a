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

__all__ = ["BudgetExceeded", "Estimate", "Limits", "check", "estimate"]

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
        texts, count = ChatCompletions().request_text({"messages": list(messages_or_text)})
        tokens = _tokens.estimate_chat_input(texts, count, model)
    _, exact = _tokens.encoding_name(model)
    low = cost_of(model, input_tokens=tokens, output_tokens=0)
    high = cost_of(model, input_tokens=tokens, output_tokens=max_output_tokens)
    return Estimate(model, tokens, max_output_tokens, low, high, exact)


def _request_worst_case(parser: Any, request: Any) -> Decimal | None:
    """The most a request can cost: its input counted offline plus its whole output allowance."""
    from . import wire

    obj = wire.loads(request.content)
    if obj is None:
        return None
    model = obj.get("model")
    if not isinstance(model, str):
        return None
    allowance = 0
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if isinstance(obj.get(key), int):
            allowance = obj[key]
            break
    from . import _tokens
    from ._pricing import cost_of

    texts, count = parser.request_text(obj)
    tokens = _tokens.estimate_chat_input(texts, count, model)
    return cost_of(model, input_tokens=tokens, output_tokens=allowance)


def check(scopes: tuple[Tally, ...], parser: Any, request: Any) -> None:
    """Refuse (or warn about) a request that would go past a limit of an enclosing scope."""
    limited = [t for t in scopes if t._limits is not None]
    if not limited:
        return
    with _check_lock:
        _check(limited, parser, request)


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
                    worst = _request_worst_case(parser, request)
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
