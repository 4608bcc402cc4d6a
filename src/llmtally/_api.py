"""The public verbs: ``track()``, ``get_openai_callback()``, ``suppress()``, ``budget()``, ``report()``,
``configure()``, ``flush()``, ``instrument()`` and their kin.

They are thin: each says what the user asked for and hands it to the layer that does it (scopes
in ``_core``, limits in ``_limits``, process state in ``_runtime``, reports in ``_report``). This
module is imported by ``import llmtally``, so it imports only the scope machinery at the top; the
runtime starts on the first scope entered.
"""

from __future__ import annotations

from ._core.scope import Suppressed, set_starter
from ._core.tally import KEEP_CALLS, Tally

TYPE_CHECKING = False  # typing imports re (milliseconds); mypy reads it the same way.
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from datetime import datetime
    from decimal import Decimal
    from typing import Any, Literal, TypeVar, overload

    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ._limits import Estimate
    from ._report import Report

    F = TypeVar("F", bound=Callable[..., Any])
    Amount = Decimal | str | int | float
else:

    def overload(f):  # typing.overload, without importing typing at run time
        return f


__all__ = [
    "budget",
    "configure",
    "estimate",
    "flush",
    "get_openai_callback",
    "instrument",
    "is_instrumented",
    "report",
    "suppress",
    "track",
    "uninstrument",
]


def _start() -> None:
    from ._runtime import RUNTIME

    RUNTIME.start()


set_starter(_start)


@overload
def track(
    name: str | None = None,
    *,
    tags: Mapping[str, object] | None = None,
    max_cost: Amount | None = None,
    max_tokens: int | str | None = None,
    max_requests: int | str | None = None,
    on_exceed: Literal["raise", "warn"] = "raise",
    preflight: bool = False,
    keep_calls: int | bool = KEEP_CALLS,
) -> Tally: ...


@overload
def track(  # noqa: F811 - overloads (typing.overload, under another name at run time)
    name: F,
    *,
    tags: Mapping[str, object] | None = None,
    max_cost: Amount | None = None,
    max_tokens: int | str | None = None,
    max_requests: int | str | None = None,
    on_exceed: Literal["raise", "warn"] = "raise",
    preflight: bool = False,
    keep_calls: int | bool = KEEP_CALLS,
) -> F: ...


def track(  # noqa: F811
    name: str | F | None = None,
    *,
    tags: Mapping[str, object] | None = None,
    max_cost: Amount | None = None,
    max_tokens: int | str | None = None,
    max_requests: int | str | None = None,
    on_exceed: Literal["raise", "warn"] = "raise",
    preflight: bool = False,
    keep_calls: int | bool = KEEP_CALLS,
) -> Tally | F:
    """A new scope: count every LLM call made while it is open.

    Use it as a context manager (``with`` or ``async with``) or a decorator::

        with llmtally.track("nightly-report") as t:
            client.chat.completions.create(model="gpt-4o", messages=[...])
        print(t)            # Tokens Used / Prompt Tokens / ... / Total Cost (USD)

        @llmtally.track("embed")
        def embed(texts): ...
        embed.tally         # every invocation's calls, added up

    Calls count in every enclosing scope, including calls made by asyncio tasks and by threads
    started inside it. One scope object can be entered by many threads and tasks at once (a
    decorated function under ``asyncio.gather`` or in a thread pool): its totals are those of all
    its entries, and none of them stays open in another thread or task.

    The totals count every call, however many. ``t.calls`` keeps the records (``llmtally.Call``)
    of the most recent ``keep_calls`` calls only, 5000 unless given (about 4 MB), and
    ``t.calls_dropped`` counts the older ones, so a scope open for a whole process uses constant
    memory; ``keep_calls=True`` keeps them all, ``keep_calls=False`` none.

    Limits stop spending before it happens: with ``max_cost`` (USD, a Decimal or a string),
    ``max_tokens`` or ``max_requests`` (whole numbers; numeric strings such as ``"100"``, as read from
    an environment variable, count too), a request sent once the scope has reached one is refused
    with ``llmtally.BudgetExceeded`` (``on_exceed="warn"`` logs and sends it); ``preflight=True``
    also refuses a request whose worst case would cross ``max_cost``::

        with llmtally.track("agent", max_cost="0.50"):
            agent.invoke(...)        # BudgetExceeded once the run has spent $0.50

    A limit that is not a number, is negative or is not finite raises ``ValueError`` (``TypeError``
    for a value of the wrong type) here, naming the argument: never at request time.
    """
    limits = None
    if max_cost is not None or max_tokens is not None or max_requests is not None:
        from ._limits import Limits

        limits = Limits(max_cost, max_tokens, max_requests, on_exceed, preflight)  # type: ignore[arg-type]
    elif on_exceed != "raise" or preflight is not False:
        from ._limits import check_on_exceed, check_preflight

        check_on_exceed(on_exceed)
        check_preflight(preflight, None)
    if callable(name):  # bare @track
        return Tally(None, tags, limits, keep_calls).decorate(name)
    return Tally(name, tags, limits, keep_calls)


def get_openai_callback(name: str | None = None) -> Tally:
    """LangChain's ``get_openai_callback``, for every provider: the same as ``track()``.

    Code written for LangChain runs by changing only its import line::

        from llmtally import get_openai_callback

        with get_openai_callback() as cb:
            llm.invoke("Tell me a joke")
        print(cb)
    """
    return Tally(name)


def suppress() -> Suppressed:
    """Leave the calls made inside ``with llmtally.suppress():`` unmetered: not counted in any
    scope, not checked against any limit, not recorded. Carried into threads and tasks like scopes."""
    return Suppressed()


def budget(
    name: str,
    *,
    max_cost: Amount | None = None,
    period: Literal["day", "month"] | None = None,
    ledger: str | None = None,
    on_exceed: Literal["raise", "warn"] = "raise",
) -> Tally:
    """A scope bound to a budget shared by every process and host using the same ledger database.

    ``max_cost`` (USD) and ``period`` (``"day"``, ``"month"`` or ``None``) set the budget when given;
    otherwise the one already stored under ``name`` applies. Each request inside reserves its worst
    case (input counted offline plus its ``max_tokens``, or 4096 output tokens if it states none)
    atomically in the database and is refused with ``BudgetExceeded`` if that does not fit::

        with llmtally.budget("team-search", max_cost="50", period="day"):
            agent.invoke(...)
    """
    from ._core.money import parse_amount
    from ._limits import Limits, Shared, check_on_exceed

    # The arguments first, before any database is opened: bad input is refused however it is stored.
    if not isinstance(name, str):
        raise TypeError(f"budget name must be a string, not {name!r} ({type(name).__name__})")
    if not name.strip():
        raise ValueError(f"budget name must not be empty, not {name!r}")
    if max_cost is not None:
        max_cost = parse_amount(max_cost, "max_cost")
    if period not in (None, "day", "month"):
        raise ValueError(f"period must be 'day', 'month' or None, not {period!r}")
    check_on_exceed(on_exceed)
    if ledger is not None and not isinstance(ledger, str):
        raise TypeError(f"ledger must be a URL string, not {ledger!r} ({type(ledger).__name__})")
    from ._runtime import RUNTIME

    url = RUNTIME.ledger_url(ledger, default=None)
    if not url:
        raise ValueError(
            "a shared budget lives in a ledger: pass ledger= or call llmtally.configure(ledger=)"
        )
    store = RUNTIME.budget_store(url)
    if max_cost is not None:
        store.set(name, max_cost, period)
    elif store.get(name) is None:
        raise ValueError(f"no budget named {name!r} in the ledger; give max_cost= to create it")
    state = store.get(name)
    assert state is not None
    return Tally(name, None, Limits(on_exceed=on_exceed, shared=Shared(name, store, state.period)))


def estimate(
    messages_or_text: str | Sequence[Mapping[str, object]], *, model: str, max_output_tokens: int = 0
) -> Estimate:
    """Count a request's input offline with the model's tokenizer and price its best and worst case.

    ``messages_or_text`` is a string or chat messages (``[{"role": ..., "content": ...}]``); chat
    framing is included. Returns an ``Estimate`` with ``input_tokens``, ``min_cost`` (input only)
    and ``max_cost`` (input plus the whole ``max_output_tokens``)::

        >>> llmtally.estimate("Tell me a joke", model="gpt-4", max_output_tokens=50)
    """
    from ._limits import estimate as _estimate

    return _estimate(messages_or_text, model=model, max_output_tokens=max_output_tokens)


def report(
    *,
    ledger: str | None = None,
    since: str | float | datetime | None = None,
    until: str | float | datetime | None = None,
    by: Sequence[str] = ("model",),
    top: int | None = None,
    currency: str | None = None,
    rates: Mapping[str, object] | str | None = None,
    where: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None,
) -> Report:
    """Totals per group over the ledger's calls in ``[since, until)``, most expensive first.

    ``by``: any of ``model``, ``provider``, ``endpoint``, ``day``, ``hour``, ``scope``, ``currency``,
    ``tag:KEY``. ``top`` keeps the N most expensive groups. ``where`` keeps the calls whose value of a
    group is the one given, as a report by that group shows it: ``"model=gpt-4o"``, a list of such,
    or ``{"tag:team": "search", "model": ["gpt-4o", "o3"]}`` (one group's values are alternatives).
    ``ledger`` defaults to the one configured, then ``LLMTALLY_LEDGER``, then the default SQLite
    file. Costs are in ``currency`` (default: the display currency), others converted at ``rates``
    (default: those configured); the result's ``.currency`` and ``.rates`` say which.
    """
    from ._report import report as _report
    from ._runtime import RUNTIME

    url = RUNTIME.ledger_url(ledger)
    assert url is not None
    if currency is None:
        currency, configured = RUNTIME.money()
        rates = configured if rates is None else rates
    return _report(url, since=since, until=until, by=by, top=top, currency=currency, rates=rates, where=where)


def configure(
    *,
    ledger: str | None = None,
    flush_interval: float | None = None,
    otel: bool | MeterProvider | TracerProvider | tuple[MeterProvider, TracerProvider] | None = None,
    providers: Mapping[str, str] | None = None,
    prices: str | None = None,
    currency: str | None = None,
    rates: Mapping[str, str | float | int] | None = None,
) -> None:
    """Set where llmtally records calls, which provider a gateway serves, and your own prices.

    ``ledger`` is a URL: ``sqlite:///path.db`` (``sqlite://`` for the default file in the user's
    data directory), ``postgresql://user:password@host/dbname`` or ``none``. Once a ledger is set,
    every LLM call the process makes is recorded, whether or not a scope is open. A bad URL, a
    database that cannot be reached, or one that is not an llmtally ledger, raises
    ``llmtally.LedgerError`` and changes nothing::

        llmtally.configure(ledger="sqlite:///llm-calls.db")

    ``otel=True`` exports the GenAI semantic-convention metrics, a cost counter and one client span
    per LLM call to the global OpenTelemetry providers (``otel=meter_provider``,
    ``otel=tracer_provider`` or ``otel=(meter_provider, tracer_provider)`` to choose, ``False`` to
    stop).

    If the ledger later becomes unwritable (server down, disk full), records wait in a local spool
    file (``LLMTALLY_SPOOL_DIR``, else beside the default ledger) and are written when it is back.

    ``providers`` says which provider serves a gateway, proxy or private deployment, so its calls
    are priced as that provider's: a host or base URL (its host and path prefix) to a catalogue
    provider id, replacing any mapping set before (``LLMTALLY_PROVIDERS="host=id,..."`` in the
    environment). An unknown provider or a key that is not a host raises ``ValueError``::

        llmtally.configure(providers={"llm-gateway.internal": "openai",
                                      "https://proxy.example.com/groq": "groq"})

    ``prices`` is a TOML price file (see the README) whose prices win over the catalogue's; it
    replaces the file set before (``""`` for none). ``LLMTALLY_PRICES`` in the environment, else
    ``~/.config/llmtally/prices.toml`` if it exists, is read when nothing is configured. A file that
    cannot be used raises ``ValueError`` naming the file, line and field, and changes nothing.

    ``currency`` is the display currency of tallies, budgets and reports (USD unless set) and
    ``rates`` what one unit of another currency is worth in it (``{"CNY": "0.138"}``; no rate is
    ever fetched): a call priced in a currency without a rate is unpriced, never 0
    (``LLMTALLY_CURRENCY``, ``LLMTALLY_RATES="CNY=0.138,EUR=1.08"`` in the environment).
    """
    from ._runtime import RUNTIME

    RUNTIME.configure(
        ledger=ledger,
        flush_interval=flush_interval,
        otel=otel,
        providers=providers,
        prices=prices,
        currency=currency,
        rates=rates,
    )


def set_price(
    model: str,
    *,
    provider: str | None = None,
    match: str = "model",
    valid_from: str | None = None,
    same_as: str | None = None,
    **units: str | float | int,
) -> None:
    """Your own price for ``model``, in USD per million tokens (web searches, requests: per
    thousand); it wins over the catalogue and over price files::

        llmtally.set_price("ft:gpt-4o-mini:acme::7Hz", input="0.30", output="1.20", cached="0.15")
        llmtally.set_price("llama3.2", provider="ollama", input=0, output=0)  # a local model: free
        llmtally.set_price("my-llama-", match="prefix", input="0.10", output="0.10")

    ``match`` is ``"model"`` (the exact name), ``"prefix"`` or ``"pattern"`` (a regular expression
    matching the whole name). The units are ``input``, ``output``, ``cached``, ``cache_write``,
    ``cache_write_1h``, ``input_audio``, ``cached_audio``, ``output_audio``, ``input_image``,
    ``output_image``, ``citations``, ``web_searches`` and ``requests``. ``same_as="gpt-4o"``
    prices the name as that model instead (an Azure deployment's name, an alias). A bad price
    raises ``ValueError`` naming it.
    """
    from ._core import user_prices

    if match not in ("model", "prefix", "pattern"):
        raise user_prices.PriceFileError(
            f"set_price: match must be 'model', 'prefix' or 'pattern', not {match!r}"
        )
    item: dict[str, object] = {match: model, **units}
    if provider is not None:
        item["provider"] = provider
    if valid_from is not None:
        item["valid_from"] = valid_from
    if same_as is not None:
        item["same_as"] = same_as
    entry = user_prices.parse_entry(item, "set_price", 0)
    user_prices.set_entries(calls=(*user_prices.entries_set_by_calls(), entry))


def flush(timeout: float | None = 30) -> bool:
    """Settle every queued call and, with a ledger, wait until it is written. ``False`` on timeout."""
    from ._runtime import RUNTIME

    return RUNTIME.flush(timeout)


def instrument() -> None:
    """Hook the HTTP clients (httpx, httpx2, requests, aiohttp, urllib3, http.client) so LLM calls are
    metered.

    Idempotent; the first ``track()`` calls it. Undo with ``uninstrument()``.
    """
    from ._runtime import RUNTIME

    RUNTIME.start()


def uninstrument() -> None:
    """Remove every hook ``instrument()`` installed; clients behave exactly as before."""
    from ._runtime import RUNTIME

    RUNTIME.stop()


def is_instrumented() -> bool:
    """Whether the HTTP clients are hooked (``instrument()``, or the first scope, did it)."""
    from ._core.scope import is_started

    return is_started()
