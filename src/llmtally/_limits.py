"""Limits that stop a runaway agent before it spends, enforced on the call path, and offline estimates.

``track(..., max_cost=, max_tokens=, max_requests=)`` gives a scope limits. Before a request is
sent, every enclosing scope with limits is checked against what it has spent (queued calls are
settled first); a scope at its limit refuses the request: it is never sent and ``BudgetExceeded``
comes out of the SDK call. With ``on_exceed="warn"`` the request goes out and a warning is logged
instead. With ``preflight=True`` the request's worst case (its input, counted offline, plus its
whole output allowance) is priced too, and a request that could cross the limit is refused.
A scope bound to a shared budget (``llmtally.budget``) also reserves the request's worst case in
the ledger database, atomically, as a lease that ends with the call or with its process
(``ledger.budgets``), and releases it when the call settles.

Several threads or tasks in one scope check at the same time, so spend can pass a limit only by the
calls already in flight when it was reached.

**When a check cannot be made.** Every limit is parsed and checked when the scope is made
(``Limits.__post_init__``): a limit that is not a number, is negative or not finite raises
``ValueError`` / ``TypeError`` there, never at request time. Should the check itself then fail (a
fault of ours), a scope with ``on_exceed="raise"`` refuses the request (``BudgetExceeded`` with
``limit="unchecked"``, naming the error): a limit is there to stop spending, and one that cannot be
checked is not known to hold; in warn mode the request is sent and the failure logged. A shared
budget whose *database* fails is the exception: the request is sent, checked against the scopes'
own limits only, and the failure logged (a database outage must not stop every process on it;
the ledger spools for the same reason), and what was reserved is released when the call settles.

**How a refusal reaches the caller.** The refusal is raised inside the HTTP client's ``send``, deep
in the SDK. SDKs catch ``Exception`` there: the anthropic SDK (and so LangChain's ChatAnthropic)
retries it and re-raises it as ``APIConnectionError``, LiteLLM maps it to its own error types, and
agent frameworks feed exceptions back to the model. ``BudgetExceeded`` therefore derives from
``BaseException``, like ``KeyboardInterrupt`` and ``asyncio.CancelledError``: it passes through
every ``except Exception`` unretried and unwrapped, whatever SDK, framework or HTTP client is in
between, and reaches the caller as itself. One rule for every adapter, no per-SDK shims. The price
is that a bare ``except Exception`` in the caller's own code does not catch it either: catch
``llmtally.BudgetExceeded`` by name.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._core.money import ZERO, format_usd, parse_amount
from ._core.pipeline import PIPELINE
from ._core.refusal import Refusal

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from ._capture.exchange import Exchange
    from ._core.tally import Tally
    from ._core.usage import Call
    from .ledger.budgets import BudgetStore

__all__ = [
    "DEFAULT_OUTPUT_ALLOWANCE",
    "BudgetExceeded",
    "Estimate",
    "Limits",
    "Shared",
    "check",
    "estimate",
    "parse_count",
    "release",
    "unreserve",
]

log = logging.getLogger("llmtally")
# One check at a time: a request count or spend seen under it is not raced by another thread.
_check_lock = threading.Lock()

#: The output allowance assumed for a request that states no max_tokens (the catalogue holds no
#: models' output limits), for preflight checks and shared-budget reservations.
DEFAULT_OUTPUT_ALLOWANCE = 4096

_WHAT = {"cost": "cost limit", "tokens": "token limit", "requests": "request limit"}


class BudgetExceeded(BaseException):
    """A scope's limit was reached; the request was not sent.

    A ``BaseException`` (see the module docstring): it passes through the SDKs' and frameworks'
    ``except Exception`` handlers, unretried, to the caller. Catch it by name.
    """

    # langchain-core's BaseChatModel.agenerate (behind ainvoke / abatch) gathers its runs with
    # return_exceptions=True, sorts them with isinstance(res, Exception), and so reads
    # ``.generations`` and ``.llm_output`` of any other BaseException as if it were a result
    # (langchain-ai/langchain#38469, open). Empty ones let it go on to raise the refusal itself.
    generations: tuple[()] = ()
    llm_output = None

    def __init__(
        self,
        scope: str | None,
        limit: str,
        allowed: Decimal | int,
        spent: Decimal | int,
        extra: str = "",
        *,
        worst: Decimal | None = None,
        of: str = "scope",
    ) -> None:
        self.scope = scope
        self.limit = limit
        self.allowed = allowed
        self.spent = spent
        #: The request's worst case, when it was refused because it *could* go past the limit.
        self.worst = worst
        fmt = (lambda v: f"${v}") if limit == "cost" else str
        name = scope or "(unnamed)"
        if worst is None:
            text = f"{of} {name!r} reached its {_WHAT[limit]}: {fmt(spent)} of {fmt(allowed)}"
        else:
            text = (
                f"{of} {name!r} could pass its {_WHAT[limit]} ({fmt(spent)} spent of {fmt(allowed)}): "
                f"this request could cost up to ${format_usd(worst)}"
            )
        super().__init__(f"llmtally: {text}{extra}; the request was not sent")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole: a task refused in a process pool's worker reaches the caller as itself.
        return (_rebuild_refusal, (type(self), self.args, dict(self.__dict__)))

    @classmethod
    def unchecked(cls, scope: str | None, error: Exception) -> BudgetExceeded:
        """The refusal of a request whose scope's limits could not be checked (``limit="unchecked"``)."""
        self = cls.__new__(cls)
        self.scope, self.limit, self.allowed, self.spent, self.worst = scope, "unchecked", 0, 0, None
        BaseException.__init__(
            self,
            f"llmtally: could not check the limits of scope {scope or '(unnamed)'!r} "
            f"({type(error).__name__}: {error}); the request was not sent",
        )
        return self


def _rebuild_refusal(
    cls: type[BudgetExceeded], args: tuple[Any, ...], state: dict[str, Any]
) -> BudgetExceeded:
    self = cls.__new__(cls)
    BaseException.__init__(self, *args)
    self.__dict__.update(state)
    return self


@dataclass(frozen=True)
class Shared:
    """A budget kept in a ledger database, shared by every process and host that uses it."""

    name: str
    store: BudgetStore
    period: str | None
    #: The lease of a reservation held on the budget (``BudgetStore.reserve``), settled with the call.
    lease: str | None = None


def check_on_exceed(on_exceed: object) -> None:
    if not isinstance(on_exceed, str):
        kind = type(on_exceed).__name__
        raise TypeError(f"on_exceed must be 'raise' or 'warn', not {on_exceed!r} ({kind})")
    if on_exceed not in ("raise", "warn"):
        raise ValueError(f"on_exceed must be 'raise' or 'warn', not {on_exceed!r}")


def check_preflight(preflight: object, max_cost: object) -> None:
    if not isinstance(preflight, bool):
        raise TypeError(f"preflight must be True or False, not {preflight!r} ({type(preflight).__name__})")
    if preflight and max_cost is None:
        raise ValueError("preflight=True prices each request against max_cost: give max_cost too")


def parse_count(value: object, what: str) -> int:
    """A user-given whole number, zero or more: an ``int``, or a string, float or Decimal that is one
    (``"100"`` read from an environment variable, ``1e6``). Anything else raises ``TypeError`` (a
    type that is not a number) or ``ValueError`` (not a whole number, negative, not finite), naming
    ``what`` and the bad value."""
    if type(value) is int:
        number: object = value
    elif isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise TypeError(f"{what} must be a whole number such as 100, not {value!r} ({type(value).__name__})")
    else:
        try:
            exact = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
        except ArithmeticError:
            raise ValueError(f"{what} must be a whole number such as 100, not {value!r}") from None
        if not exact.is_finite() or exact != exact.to_integral_value():
            raise ValueError(f"{what} must be a whole number, zero or more, not {value!r}")
        number = int(exact)
    assert isinstance(number, int)
    if number < 0:
        raise ValueError(f"{what} must be a whole number, zero or more, not {value!r}")
    return number


@dataclass
class Limits:
    """The limits of one scope, checked before each request made inside it."""

    max_cost: Decimal | None = None
    max_tokens: int | None = None
    max_requests: int | None = None
    on_exceed: str = "raise"
    preflight: bool = False
    shared: Shared | None = None

    def __post_init__(self) -> None:
        # Every argument is checked here, when the scope is made: a limit that is not understood
        # raises at once rather than at the first request (where a failed check would have to send
        # it, or refuse everything). Numeric strings count: values often come from the environment.
        if self.max_cost is not None:
            self.max_cost = parse_amount(self.max_cost, "max_cost")
        if self.max_tokens is not None:
            self.max_tokens = parse_count(self.max_tokens, "max_tokens")
        if self.max_requests is not None:
            self.max_requests = parse_count(self.max_requests, "max_requests")
        check_on_exceed(self.on_exceed)
        check_preflight(self.preflight, self.max_cost)


@dataclass(frozen=True)
class Estimate:
    """What a request will use at least (its input) and at most (plus its whole output allowance)."""

    model: str
    input_tokens: int
    max_output_tokens: int
    min_cost: Decimal | None
    max_cost: Decimal | None
    exact_tokenizer: bool


def estimate(
    messages_or_text: str | Sequence[Mapping[str, object]], *, model: str, max_output_tokens: int = 0
) -> Estimate:
    """Count a request's input offline with the model's tokenizer and price its best and worst case.

    ``messages_or_text`` is a string or chat messages (``[{"role": ..., "content": ...}]``); chat
    framing is included. Tokenizers: o200k / cl100k for OpenAI models, Llama 3 and Qwen their own;
    other models are approximated with o200k (``exact_tokenizer`` is then ``False``)::

        >>> llmtally.estimate("Tell me a joke", model="gpt-4", max_output_tokens=50)
    """
    from . import _tokens
    from ._pricing import cost_of
    from .wire.openai import ChatCompletions

    if not isinstance(model, str):
        raise TypeError(f"model must be a model name, not {model!r} ({type(model).__name__})")
    if not model.strip():
        raise ValueError(f"model must be a model name, not {model!r}")
    max_output_tokens = parse_count(max_output_tokens, "max_output_tokens")
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


def _worst_case(ex: Exchange, default_allowance: int = 0) -> Decimal | None:
    """The most a request can cost: its input counted offline plus its whole output allowance."""
    from . import _tokens, wire
    from ._core.usage import Usage
    from ._pricing import price_usage

    obj = wire.loads(ex.request_body())
    if obj is None:
        return None
    parser = ex.parser
    model = parser.model_in_path(ex.path) or obj.get("model")  # Gemini and Bedrock: in the URL
    if not isinstance(model, str):
        return None
    allowance = default_allowance
    for value in _allowances(obj):
        if type(value) is int and value >= 0:
            allowance = value
            break
    texts, count = parser.request_text(obj)
    tokens = _tokens.estimate_chat_input(texts, count, model, _tokens.names_in(obj.get("messages")))
    provider = ex.gateway or wire.provider_for_host(ex.host)
    usage = Usage(prompt_tokens=tokens, completion_tokens=allowance)
    return price_usage(usage, model, provider, f"https://{ex.host}", parser.provider)[0]


def _allowances(obj: dict[str, Any]) -> Iterator[Any]:
    """Where each wire format states its output allowance."""
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        yield obj.get(key)
    for nested, key in (("generationConfig", "maxOutputTokens"), ("inferenceConfig", "maxTokens")):
        inner = obj.get(nested)  # Gemini; Bedrock Converse
        if isinstance(inner, dict):
            yield inner.get(key)


def check(scopes: tuple[Tally, ...], ex: Exchange) -> None:
    """Refuse (or warn about) a request that would go past a limit of an enclosing scope."""
    limited = [(t, t._limits) for t in scopes if t._limits is not None]
    if not limited:
        return
    with _check_lock:
        try:
            _check(limited, ex)
        except BudgetExceeded:
            raise
        except Exception as exc:  # a fault of ours: the limits cannot be known to hold
            _unchecked(limited, exc, ex)
        for tally, _ in limited:
            tally._sent += 1
    shared = [(t, limits) for t, limits in limited if limits.shared is not None]
    if shared:
        try:
            _reserve(shared, ex)
        except BudgetExceeded:
            with _check_lock:  # refused: not sent, so not one of the scopes' requests
                for tally, _ in limited:
                    tally._sent -= 1
            raise
        except Exception:  # the budget's database is down: the work goes on, as with the ledger
            names = ", ".join(repr(limits.shared.name) for _, limits in shared if limits.shared)
            log.exception(
                "llmtally: could not reserve the request's worst case in the shared budget %s; the request "
                "is sent, checked against the scopes' own limits only",
                names,
            )


def _unchecked(limited: list[tuple[Tally, Limits]], exc: Exception, ex: Exchange) -> None:
    """The limit check itself failed (a fault of ours, never bad input: that is refused when the
    scope is made). A scope that refuses (``on_exceed="raise"``) refuses the request: a limit is
    there to stop spending, and one that cannot be checked is not known to hold. Otherwise the
    request is sent, and the failure logged."""
    for tally, limits in limited:
        if limits.on_exceed == "raise":
            log.error("llmtally: could not check the limits of scope %r", tally.name, exc_info=exc)
            raise _refused(tally, BudgetExceeded.unchecked(tally.name, exc), ex) from exc
    log.error("llmtally: could not check the limits (warn mode); the request is sent", exc_info=exc)


def _refused(tally: Tally, problem: BudgetExceeded, ex: Exchange, by: str = "scope") -> BudgetExceeded:
    """Note the refusal on the scope whose limit made it (``Tally.refused``): code that catches the
    exception cannot hide from the scope's owner that a request was refused (the pytest plugin's
    budget marker fails such a test); and in the ledger (``_record``)."""
    tally._refused = problem
    _record(problem, ex, "refused", by)
    return problem


def _record(problem: BudgetExceeded, ex: Exchange, action: str, by: str) -> None:
    """Hand a refusal (or a warning) to the ledger's writer (``PIPELINE.refused``); never raises.
    Nothing is done without a ledger: the record is only made for a sink."""
    if not PIPELINE.refusal_sinks:
        return
    try:
        PIPELINE.refused(_refusal(problem, ex, action, by))
    except Exception:
        log.exception("llmtally: could not record a refused request in the ledger")


def _refusal(problem: BudgetExceeded, ex: Exchange, action: str, by: str) -> Refusal:
    """What the ledger keeps of a refusal: where the request was made, as its call would have been
    recorded (scope path, merged tags, provider, endpoint, requested model), and the limit's figures."""
    from . import wire
    from ._core import currency

    names: list[str] = []
    tags: dict[str, object] = {}
    for scope in ex.scopes:
        names.append(scope.name or "")
        if scope.tags:
            tags.update(scope.tags)
    model = ex.parser.model_in_path(ex.path)
    if model is None:
        try:
            obj = wire.loads(ex.request_body())
        except Exception:
            obj = None
        found = obj.get("model") if isinstance(obj, dict) else None
        model = found if isinstance(found, str) else None
    money = problem.limit == "cost"
    return Refusal(
        refused_by=problem.scope,
        limit=problem.limit,
        allowed=str(problem.allowed),
        spent=str(problem.spent),
        action=action,
        worst=None if problem.worst is None else str(problem.worst),
        by_kind=by,
        currency=currency.display() if money else None,
        scope_path=tuple(names),
        tags=tags,
        provider=ex.gateway or wire.provider_for_host(ex.host) or ex.parser.provider,
        endpoint=ex.parser.endpoint,
        requested_model=model,
    )


def _refuse(tally: Tally, limits: Limits, problem: BudgetExceeded, ex: Exchange, by: str = "scope") -> None:
    if limits.on_exceed == "raise":
        raise _refused(tally, problem, ex, by)
    _record(problem, ex, "warned", by)
    if not tally._warned:
        tally._warned = True
        log.warning("%s", str(problem).replace("; the request was not sent", "; sending anyway (warn mode)"))


def _check(limited: list[tuple[Tally, Limits]], ex: Exchange) -> None:
    PIPELINE.flush()  # spend must include the calls that are queued
    worst: Decimal | None = None
    for tally, limits in limited:
        problem: BudgetExceeded | None = None
        tally._settled()  # also takes in its worker processes' calls (their requests count in _sent)
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
                    worst = _worst_case(ex, DEFAULT_OUTPUT_ALLOWANCE)
                if worst is not None and spent + worst > limits.max_cost:
                    problem = BudgetExceeded(tally.name, "cost", limits.max_cost, spent, worst=worst)
        if problem is not None:
            _refuse(tally, limits, problem, ex)


def _reserve(shared: list[tuple[Tally, Limits]], ex: Exchange) -> None:
    """Reserve the request's worst case in every shared budget, all or none.

    In warn mode a budget without room reserves nothing but is still charged the call's real cost.
    If a budget's database fails, what was reserved so far stays on the exchange, so settlement
    releases it (the request is then sent; see ``Exchange.check_limits``).
    """
    worst = _worst_case(ex, DEFAULT_OUTPUT_ALLOWANCE)
    if worst is None:
        return  # an unpriced model: nothing to reserve, its spend is unknown
    made: list[tuple[Shared, Decimal]] = []
    try:
        for tally, limits in shared:
            budget = limits.shared
            assert budget is not None
            lease = budget.store.reserve(budget.name, worst, budget.period)
            if lease is not None:
                made.append((replace(budget, lease=lease), worst))
                continue
            state = budget.store.get(budget.name)
            spent = state.spent + state.reserved if state else worst
            allowed = state.max_cost if state else 0
            problem = BudgetExceeded(budget.name, "cost", allowed, spent, worst=worst, of="shared budget")
            if limits.on_exceed == "raise":
                unreserve(made)
                made = []
                raise _refused(tally, problem, ex, "budget")
            _refuse(tally, limits, problem, ex, "budget")  # warns
            made.append((budget, ZERO))
    finally:
        if made:
            ex.reservations = made


def unreserve(made: list[tuple[Shared, Decimal]]) -> None:
    """Give reservations back unspent (the request was refused, or not answered)."""
    for budget, _ in made:
        try:
            budget.store.settle(budget.name, ZERO, lease=budget.lease, period=budget.period)
        except Exception:
            log.exception("llmtally: could not release a reservation in the shared budget %r", budget.name)


def release(reservations: list[tuple[Shared, Decimal]], call: Call) -> None:
    """Settle a call's shared-budget reservations: release them and charge the real cost (the
    reservation itself when the cost is unknown, which cannot undercount)."""
    for budget, reserved in reservations:
        actual = call.cost if call.cost is not None else (reserved if call.ok else ZERO)
        try:
            budget.store.settle(budget.name, actual, lease=budget.lease, period=budget.period)
        except Exception:
            log.exception("llmtally: could not settle the shared budget %r", budget.name)
