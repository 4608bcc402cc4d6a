"""What one call used, what many calls add up to, and the record of one call.

``Usage`` declares every billable unit llmtally meters, once: each field is a *kind* with its
label, where it is part of another kind, its genai-prices usage key and its OpenTelemetry span
attribute. ``KINDS`` is read from it, and the Tally, ``ModelTotals``, the summary, the price plans,
the ledger's columns and rollup, the report and the OpenTelemetry export are all derived from
``KINDS``. Adding a billable unit is one field here (and a ledger migration, ``ledger/_schema``).

Every wire format is normalised to one convention (OpenAI's), so nothing downstream needs to know
which provider answered:

- ``prompt_tokens`` is all input, *including* cache reads and cache writes;
- ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of ``prompt_tokens``, and
  ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written with a one-hour lifetime;
- ``completion_tokens`` is all output, *including* ``reasoning_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "COUNT_NAMES",
    "KINDS",
    "NO_TAGS",
    "TOKEN_NAMES",
    "TOTAL_NAMES",
    "Call",
    "Kind",
    "ModelTotals",
    "Totals",
    "Usage",
]


class Kind(NamedTuple):
    """One billable unit: a field of ``Usage``, a Tally attribute, a ledger column, a report column."""

    name: str
    #: As the summary prints it ("Cached Tokens").
    label: str
    #: A short column heading for reports ("Cached").
    column: str
    #: The kind this one is a part of (``None`` for the two wholes, prompt and completion).
    within: str | None
    #: The genai-prices usage key that prices it.
    price_key: str
    #: The OpenTelemetry span attribute that carries it (GenAI semantic conventions), if any.
    span_attribute: str | None
    #: Whether it counts tokens (``False`` for requests to a server tool, such as web searches).
    tokens: bool = True


def _kind(
    label: str,
    column: str,
    *,
    price: str,
    within: str | None = None,
    span: str | None = None,
    tokens: bool = True,
) -> Any:
    # A dataclass field whose metadata describes the kind; ``KINDS`` is read back from them.
    return field(default=0, metadata={"kind": (label, column, within, price, span, tokens)})


@dataclass(slots=True)
class Usage:
    """Tokens of one call, by kind (see the module docstring for what includes what)."""

    prompt_tokens: int = _kind(
        "Prompt Tokens", "Prompt", price="input_tokens", span="gen_ai.usage.input_tokens"
    )
    completion_tokens: int = _kind(
        "Completion Tokens", "Completion", price="output_tokens", span="gen_ai.usage.output_tokens"
    )
    cached_tokens: int = _kind(
        "Cached Tokens",
        "Cached",
        within="prompt_tokens",
        price="cache_read_tokens",
        span="gen_ai.usage.cache_read.input_tokens",
    )
    cache_write_tokens: int = _kind(
        "Cache Write Tokens",
        "Cache write",
        within="prompt_tokens",
        price="cache_write_tokens",
        span="gen_ai.usage.cache_creation.input_tokens",
    )
    reasoning_tokens: int = _kind(
        "Reasoning Tokens",
        "Reasoning",
        within="completion_tokens",
        price="output_reasoning_tokens",
        span="gen_ai.usage.reasoning.output_tokens",
    )
    #: Anthropic prices one-hour cache writes higher than five-minute ones.
    cache_write_1h_tokens: int = _kind(
        "1h Cache Write Tokens", "Cache write 1h", within="cache_write_tokens", price="cache_write_1h_tokens"
    )
    #: Input audio (gpt-4o-audio, gpt-realtime, Gemini): priced apart from text input.
    input_audio_tokens: int = _kind(
        "Audio Input Tokens",
        "Audio in",
        within="prompt_tokens",
        price="input_audio_tokens",
        span="llmtally.usage.input_audio_tokens",
    )
    #: The part of the cache reads that is audio.
    cached_audio_tokens: int = _kind(
        "Cached Audio Tokens",
        "Cached audio",
        within="cached_tokens",
        price="cache_audio_read_tokens",
        span="llmtally.usage.cached_audio_tokens",
    )
    output_audio_tokens: int = _kind(
        "Audio Output Tokens",
        "Audio out",
        within="completion_tokens",
        price="output_audio_tokens",
        span="llmtally.usage.output_audio_tokens",
    )
    input_image_tokens: int = _kind(
        "Image Input Tokens",
        "Image in",
        within="prompt_tokens",
        price="input_image_tokens",
        span="llmtally.usage.input_image_tokens",
    )
    #: Server-side web searches the model ran (Anthropic's ``server_tool_use``), priced per search.
    web_searches: int = _kind(
        "Web Searches", "Searches", price="web_searches", span="llmtally.usage.web_searches", tokens=False
    )
    #: Images the model drew (Gemini's image models), priced far above text output.
    output_image_tokens: int = _kind(
        "Image Output Tokens",
        "Image out",
        within="completion_tokens",
        price="output_image_tokens",
        span="llmtally.usage.output_image_tokens",
    )
    #: Perplexity's citation tokens: output, priced apart by its deep-research model.
    citation_tokens: int = _kind(
        "Citation Tokens",
        "Citations",
        within="completion_tokens",
        price="output_citation_tokens",
        span="llmtally.usage.citation_tokens",
    )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: Every kind, in ``Usage``'s field order.
KINDS: tuple[Kind, ...] = tuple(Kind(f.name, *f.metadata["kind"]) for f in fields(Usage))
TOKEN_NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
#: The tags of a call made in no tagged scope (read-only, shared).
NO_TAGS: Mapping[str, object] = MappingProxyType({})

#: Request counts every total keeps besides the token kinds and the cost.
COUNT_NAMES = ("requests", "failed_requests", "unpriced_requests", "estimated_requests")


class _Run:
    """The ``llmtally run`` this process belongs to: its id, set once when the process starts metering
    (``Runtime.join_run``), read by every Call made after."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id: str | None = None


#: This process's run.
RUN = _Run()


class Call:
    """One LLM API request as llmtally saw it on the wire.

    Holds counts, model names, timing and cost; never prompt or completion text, keys or headers.
    ``usage`` is ``None`` when it could not be read. ``cost`` is ``None`` when the price is unknown
    (never zero by default); failed requests cost ``Decimal(0)``. When the provider reports its own
    cost for the call (OpenRouter's ``usage.cost``), ``cost`` is that figure, the one scopes and
    budgets count, and ``computed_cost`` what llmtally's prices make of the same usage (``None``
    otherwise, or if unknown). ``scope_path`` names the scopes open when it was sent, outermost first.
    """

    # Slots, and one constructor that sets them all: settling a call builds one of these per
    # request, cold, right after the SDK's own work (no instance dict to grow attribute by attribute).
    __slots__ = (
        "computed_cost",
        "context",
        "cost",
        "currency",
        "endpoint",
        "error",
        "estimated",
        "latency",
        "model",
        "native_cost",
        "native_currency",
        "ok",
        "price_source",
        "provider",
        "request_id",
        "requested_model",
        "run_id",
        "scope_path",
        "span",
        "started_at",
        "status",
        "stream",
        "tags",
        "url_host",
        "usage",
    )

    def __init__(
        self,
        provider: str | None,
        endpoint: str,
        model: str | None,
        *,
        requested_model: str | None = None,
        usage: Usage | None = None,
        cost: Decimal | None = None,
        currency: str = "USD",
        status: int | None = None,
        ok: bool = True,
        error: str | None = None,
        stream: bool = False,
        estimated: bool = False,
        started_at: float = 0.0,
        latency: float = 0.0,
        request_id: str | None = None,
        url_host: str | None = None,
        price_source: str | None = None,
        scope_path: tuple[str, ...] = (),
        tags: Mapping[str, object] = NO_TAGS,
        span: object = None,
        computed_cost: Decimal | None = None,
        context: tuple[tuple[str, str], ...] | None = None,
        native_cost: Decimal | None = None,
        native_currency: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.model = model
        self.requested_model = requested_model
        self.usage = usage
        self.cost = cost
        self.currency = currency
        self.status = status
        self.ok = ok
        self.error = error
        self.stream = stream
        self.estimated = estimated
        self.started_at = started_at
        self.latency = latency
        self.request_id = request_id
        self.url_host = url_host
        self.price_source = price_source
        self.scope_path = scope_path
        self.tags = tags
        #: The OpenTelemetry span current when the request was sent (only with ``configure(otel=...)``).
        self.span = span
        self.computed_cost = computed_cost
        #: How the response says it was served, where that changes the price: the service tier,
        #: the speed (``(("service_tier", "flex"),)``); ``None`` when it says nothing.
        self.context = context
        #: The cost in the price's own currency, when that is not the display currency (``cost``).
        self.native_cost = native_cost
        self.native_currency = native_currency
        #: The ``llmtally run`` this call was made under (the same id in every process of the run's
        #: tree), else ``None``: the process's, set once at start (``RUN``), copied here.
        self.run_id = RUN.id if run_id is None else run_id

    @property
    def priced(self) -> bool:
        return self.cost is not None

    def __repr__(self) -> str:
        u = self.usage
        tokens = f"{u.prompt_tokens}+{u.completion_tokens}" if u else "?"
        from .money import format_usd

        cost = "unknown" if self.cost is None else f"${format_usd(self.cost)}"
        if self.computed_cost is not None and self.computed_cost != self.cost:
            cost += f" (reported; priced ${format_usd(self.computed_cost)})"
        est = " estimated" if self.estimated else ""
        return (
            f"<Call {self.provider}/{self.model} {self.endpoint} status={self.status} "
            f"tokens={tokens}{est} cost={cost} latency={self.latency * 1000:.1f}ms>"
        )


@dataclass(slots=True, eq=False)
class Totals(Usage):
    """What a set of calls used and cost: every token kind, request counts and the cost.

    ``cost`` is the exact sum over the calls of known price, ``None`` until one is added;
    ``unpriced_requests`` counts the others (their cost is unknown, never taken as zero). The
    per-model totals of a Tally and the rows of a report are Totals.
    """

    requests: int = 0
    failed_requests: int = 0
    unpriced_requests: int = 0
    estimated_requests: int = 0
    cost: Decimal | None = None

    @property
    def successful_requests(self) -> int:
        return self.requests - self.failed_requests

    def add(self, call: Call) -> None:  # replaced below by code generated from KINDS
        raise NotImplementedError

    def __repr__(self) -> str:
        from .money import format_usd

        cost = "unknown" if self.cost is None else f"${format_usd(self.cost)}"
        return (
            f"{type(self).__name__}(requests={self.requests}, prompt_tokens={self.prompt_tokens}, "
            f"completion_tokens={self.completion_tokens}, cost={cost})"
        )


class ModelTotals(Totals):
    """Totals of one model inside a ``Tally`` (``tally.by_model``)."""

    __slots__ = ()


#: Everything a Totals holds, in one order: the counts, the token kinds, the cost.
TOTAL_NAMES: tuple[str, ...] = (*COUNT_NAMES, *TOKEN_NAMES, "cost")


def _compile_add() -> Any:
    """``Totals.add`` as straight-line code over the kinds: it runs once per call and scope, and a
    loop of getattr/setattr over names would cost several times as much."""
    lines = [
        "def add(self, call):",
        "    self.requests += 1",
        "    if not call.ok:",
        "        self.failed_requests += 1",
        "    if call.estimated:",
        "        self.estimated_requests += 1",
        "    u = call.usage",
        "    if u is not None:",
        *(f"        self.{name} += u.{name}" for name in TOKEN_NAMES),
        "    cost = call.cost",
        "    if cost is None:",
        "        self.unpriced_requests += 1",
        "    else:",
        "        self.cost = cost if self.cost is None else self.cost + cost",
    ]
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<llmtally Totals.add>", "exec"), namespace)
    add = namespace["add"]
    add.__doc__ = "Add one call: a request, its tokens of every kind and its cost (if known)."
    return add


Totals.add = _compile_add()  # type: ignore[method-assign]
