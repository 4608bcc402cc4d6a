"""Prices from the genai-prices catalogue, resolved once per model and computed in Decimal.

genai-prices' ``calc_price`` resolves the model and walks its unit registry on every call (tens to
hundreds of microseconds). A metered call needs a price in about a microsecond, so this module asks
the catalogue once per (provider, host, model), turns each of the model's price sets into a small
*plan* -- (usage field, price, per, the more specific priced units it must subtract) -- and applies
the plan with a few Decimal multiplications. The arithmetic is the catalogue's own (leaf values,
tier cliffs by total input), so the result is the Decimal ``calc_price`` returns; a benchmark and a
test check that on many (model, usage) pairs.

The catalogue is the bundled snapshot: nothing is fetched at run time.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._core import user_prices
from ._core.usage import KINDS, Usage

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["cost_of", "describe", "price_usage", "reset_caches", "resolve", "similar_models", "warm"]


log = logging.getLogger("llmtally")

# genai-prices usage key -> its position in _FIELDS: every kind (usage.KINDS), then the request
# itself. Keys not listed count 0 for us, which is what the catalogue assumes when unreported.
_USAGE_INDEX = {**{k.price_key: i for i, k in enumerate(KINDS)}, "requests": len(KINDS)}
_ZERO_INDEX = len(KINDS) + 1
#: The expression of each position over a Usage ``u``, for the compiled plans.
_FIELDS = (*(f"u.{k.name}" for k in KINDS), "1")


@dataclass(frozen=True, slots=True)
class _Step:
    """One priced unit: count = usage - (leaf counts of its priced descendants); cost = price*count/per.

    ``scaled`` is the price as an integer in units of 10**-exponent of the whole plan, so a call is
    priced with integer arithmetic and one Decimal at the end: the same exact value as the
    catalogue's Decimal sum, about ten times faster. ``tiers`` are (threshold, scaled price) cliffs
    chosen by total input tokens, highest first.
    """

    index: int
    scaled: int
    tiers: tuple[tuple[int, int], ...]
    subtract: tuple[int, ...]  # indices of earlier steps (more specific units)


@dataclass(frozen=True, slots=True)
class _Plan:
    steps: tuple[_Step, ...]
    exponent: int
    #: The steps compiled into one arithmetic expression over a Usage (see ``_compile``).
    fn: Callable[[Usage], int]


@dataclass(frozen=True, slots=True)
class Resolved:
    """A model found in the catalogue."""

    provider_id: str
    model_id: str
    info: Any  # genai_prices.types.ModelInfo
    source: str
    #: The currency of the prices (the catalogue's are USD; a price file's may be any).
    currency: str = "USD"


_lock = threading.Lock()
if hasattr(os, "register_at_fork"):  # a fork while another thread held it must not hang the child
    os.register_at_fork(after_in_child=_lock._at_fork_reinit)  # type: ignore[attr-defined]
_resolved: dict[tuple[str | None, str | None, str | None, str], Resolved | None] = {}
_plans: dict[int, _Plan] = {}
#: (model, provider, api_url, fallback[, context]) -> the plan of a price that does not change in time.
_fixed: dict[tuple[Any, ...], tuple[_Plan, Resolved]] = {}
_warned: set[str] = set()
#: The user's prices are looked up only when there are some.
_user_state = user_prices._state
_NO_USER: tuple[tuple[()], tuple[()]] = ((), ())


def _snapshot() -> Any:
    """The catalogue in force: the one ``llmtally prices update`` kept, else genai-prices' bundled one."""
    from genai_prices import data_snapshot

    from . import _catalogue

    return _catalogue.snapshot() or data_snapshot.get_snapshot()


def _bundled() -> Any:
    from genai_prices import data_snapshot

    return data_snapshot._bundled_snapshot()


def provider_ids() -> frozenset[str]:
    """The catalogue's provider ids (``openai``, ``groq``, ``aws``, ...)."""
    return frozenset(p.id for p in _snapshot().providers)


def warm() -> threading.Thread:
    """Load the catalogue in a background thread, so the first priced call does not wait for it."""

    def load() -> None:
        try:
            _snapshot()
        except Exception:  # pragma: no cover - logged, pricing retries on demand
            log.exception("llmtally: could not load the genai-prices catalogue")

    thread = threading.Thread(target=load, name="llmtally-warm-prices", daemon=True)
    thread.start()
    return thread


def resolve(
    model: str, provider: str | None = None, api_url: str | None = None, fallback: str | None = None
) -> Resolved | None:
    """The catalogue entry for ``model``, or ``None`` if unknown. Cached, including misses.

    Tried in order: the host's ``provider``; the provider whose API pattern matches ``api_url``;
    ``fallback``, the provider whose wire format the server speaks (an OpenAI-compatible proxy
    serving ``text-embedding-3-small`` is serving OpenAI's model); then the model name alone.
    """
    key = (provider, api_url, fallback, model)
    try:
        return _resolved[key]
    except KeyError:
        pass
    found = _lookup(model, provider, api_url, fallback)
    with _lock:
        _resolved[key] = found
    return found


def _lookup(model: str, provider: str | None, api_url: str | None, fallback: str | None) -> Resolved | None:
    snap = _snapshot()
    attempts: list[tuple[str | None, str | None]] = []
    if provider is not None:
        attempts.append((provider, None))
    if api_url is not None:
        attempts.append((None, api_url))
    if fallback is not None and fallback != provider:
        attempts.append((fallback, None))
    # An OpenAI-compatible server we do not recognise (a proxy, a local gateway): price by model name,
    # and a gateway's "vendor/model" name (OpenRouter's, LiteLLM's) by its vendor's price.
    attempts.append((None, None))
    if "/" in model:
        attempts.append(("litellm", None))  # genai-prices' lookup that splits off the vendor
    for provider_id, url in attempts:
        try:
            prov, info = snap.find_provider_model(model, None, provider_id, url)
        except LookupError:
            continue
        return _found(snap, prov, info)
    if provider is None and api_url is None and fallback is None:
        # No host, no wire format (``cost_of``, ``llmtally cost``): the provider that lists the model.
        home = _home_provider(snap, model)
        if home is not None:
            return _found(snap, *home)
    if model.startswith("custom-model/") and model.count("/") >= 2:
        # A Bedrock custom model (custom-model/BASE/ID, from its ARN): its base model's price.
        base = _lookup(model.split("/")[1], provider, api_url, fallback)
        if base is not None:
            return Resolved(base.provider_id, base.model_id, base.info, f"{base.source}, the base of {model}")
    if model.startswith("ft:") and model.count(":") >= 2:
        # An OpenAI fine-tune the catalogue does not list, ft:BASE:org:name:id: its base model's
        # price, said so (fine-tuned inference may cost more: set_price says otherwise).
        base = _lookup(model.split(":")[1], provider, api_url, fallback)
        if base is not None:
            return Resolved(base.provider_id, base.model_id, base.info, f"{base.source}, the base of {model}")
    return None


def _found(snap: Any, prov: Any, info: Any) -> Resolved:
    import genai_prices

    if snap.from_auto_update or snap is not _bundled():
        source = f"genai-prices catalogue of {snap.timestamp:%Y-%m-%d}: {prov.id}/{info.id}"
    else:
        source = f"genai-prices {genai_prices.__version__}: {prov.id}/{info.id}"
    return Resolved(prov.id, info.id, info, source)


def _home_provider(snap: Any, model: str) -> tuple[Any, Any] | None:
    """The provider a model is from, among those whose price lists name it: the one other providers
    take their prices from (OpenAI's for Azure's ``text-embedding-3-small``), else the only one, else
    any when they all charge the same. ``None`` when resellers charge differently: the price depends
    on where the call goes, so it takes a provider to know it."""
    listed = [(p, info) for p in snap.providers for info in [p.find_model(model)] if info is not None]
    if len(listed) > 1:
        upstream = {p for prov in snap.providers for p in (prov.fallback_model_providers or ())}
        homes = [(prov, info) for prov, info in listed if prov.id in upstream]
        if homes:
            listed = homes
    if not listed:
        return None
    if len({str(info.prices) for _, info in listed}) > 1:
        return None
    return listed[0]


def _plan(model_price: Any) -> _Plan:
    key = id(model_price)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    from genai_prices.types import TieredPrices
    from genai_prices.units import _get_registry

    registry = _get_registry()
    priced = []
    for price_key, value in model_price.__dict__.items():
        if price_key.startswith("_") or value is None:
            continue
        try:
            unit = registry.unit_for_price_key(price_key)
        except KeyError:
            continue
        priced.append((unit, value))
    # Most specific units first, as the catalogue computes leaf values.
    priced.sort(key=lambda uv: (-len(uv[0].dimensions), uv[0].usage_key))

    def decimals(value: Any) -> list[Decimal]:
        if isinstance(value, TieredPrices):
            return [value.base, *(t.price for t in value.tiers)]
        return [value]

    # price / per == scaled * 10**-exponent for every price of the model, all integers.
    exponent = 0
    for unit, value in priced:
        per_digits = len(str(unit.per)) - 1
        if unit.per != 10**per_digits:
            raise ValueError(f"per={unit.per} is not a power of ten")
        for d in decimals(value):
            exponent = max(exponent, per_digits - int(d.as_tuple().exponent))

    def scale(d: Decimal, per: int) -> int:
        scaled = d * 10**exponent / per
        if scaled != scaled.to_integral_value():  # pragma: no cover - exponent covers every digit
            raise ValueError(f"cannot scale price {d}")
        return int(scaled)

    steps: list[_Step] = []
    for i, (unit, value) in enumerate(priced):
        subtract = tuple(j for j in range(i) if unit.dimensions.items() <= priced[j][0].dimensions.items())
        if isinstance(value, TieredPrices):
            base = scale(value.base, unit.per)
            tiers = tuple((t.start, scale(t.price, unit.per)) for t in reversed(value.tiers))
        else:
            base, tiers = scale(value, unit.per), ()
        steps.append(_Step(_USAGE_INDEX.get(unit.usage_key, _ZERO_INDEX), base, tiers, subtract))
    plan = _Plan(tuple(steps), exponent, _compile(steps))
    with _lock:
        _plans[key] = plan
    return plan


def _compile(steps: list[_Step]) -> Callable[[Usage], int]:
    """One function per price set: leaf counts and the scaled total as straight-line integer code.

    A metered call runs cold (the SDK has just evicted our code from the CPU caches), so one small
    generated function beats a loop over step objects by several times. The source is built only
    from integers this module computed and fixed attribute names.
    """
    lines = ["def plan(u):"]
    terms = []
    for i, step in enumerate(steps):
        if step.index == _ZERO_INDEX:
            lines.append(f"    c{i} = 0")
            continue
        minus = "".join(f" - c{j}" for j in step.subtract)
        lines.append(f"    c{i} = {_FIELDS[step.index]}{minus}")
        if minus:
            lines.append(f"    if c{i} < 0: raise ValueError('inconsistent usage: a part exceeds its whole')")
        price = str(step.scaled)
        for start, tier_price in reversed(step.tiers):  # lowest cliff first, highest wins last
            price = f"({tier_price} if u.prompt_tokens > {start} else {price})"
        terms.append(f"c{i} * {price}")
    lines.append(f"    return {' + '.join(terms) or '0'}")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines), "<llmtally price plan>", "exec"), namespace)
    fn: Callable[[Usage], int] = namespace["plan"]
    return fn


def _apply(plan: _Plan, usage: Usage) -> Decimal:
    return _decimal(plan.fn(usage), plan.exponent)


def _decimal(scaled: int, exponent: int) -> Decimal:
    # Strip the scaling's trailing zeros in integers: Decimal('0.00111'), not Decimal('0.0011100').
    while exponent and not scaled % 10:
        scaled //= 10
        exponent -= 1
    return Decimal(scaled).scaleb(-exponent) if exponent else Decimal(scaled)


def _model_price(info: Any, at: float | datetime | None) -> Any:
    prices = info.prices
    if not isinstance(prices, list):
        return prices
    if at is None:
        ts = datetime.now(tz=UTC)
    elif isinstance(at, datetime):
        ts = at
    else:
        ts = datetime.fromtimestamp(at, tz=UTC)
    return info.get_prices(ts)


def price_usage(
    usage: Usage,
    model: str | None,
    provider: str | None = None,
    api_url: str | None = None,
    fallback: str | None = None,
    at: float | datetime | None = None,
    context: tuple[tuple[str, str], ...] | None = None,
) -> tuple[Decimal | None, Resolved | None]:
    """(cost, catalogue entry) for one call; ``(None, None)`` when the model's price is unknown.

    ``context`` is what the response said of how it was served, as the catalogue's price variants
    name it (``(("service_tier", "flex"),)``, ``(("speed", "fast"),)``): it selects those prices.
    """
    if not model:
        return None, None
    if _user_state[0] != _NO_USER:
        mine = _user_price(model, provider or fallback, at)
        if mine is not None:
            try:
                return _apply(mine[0], usage), mine[1]
            except ValueError as exc:
                log.warning("llmtally: cannot price %s usage %r: %s", model, usage, exc)
                return None, None
    key: tuple[Any, ...] = (
        (model, provider, api_url, fallback, context) if context else (model, provider, api_url, fallback)
    )
    fast = _fixed.get(key)
    if fast is not None:  # a model whose price does not depend on the time: one cached plan
        plan, entry = fast
        try:
            return _decimal(plan.fn(usage), plan.exponent), entry
        except ValueError as exc:
            log.warning("llmtally: cannot price %s usage %r: %s", model, usage, exc)
            return None, None
    if context:
        return _price_in_context(usage, model, provider, api_url, fallback, at, context, key)
    found = resolve(model, provider, api_url, fallback)
    if found is not None and not isinstance(found.info.prices, list):
        plan = _plan(found.info.prices)
        with _lock:
            _fixed[key] = (plan, found)
    if found is None:
        _warn_unknown(model, provider)
        return None, None
    try:
        return _apply(_plan(_model_price(found.info, at)), usage), found
    except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
        log.warning("llmtally: cannot price %s usage %r: %s", model, usage, exc)
        return None, None


#: (id of the standard price set, ids of the variants that apply) -> (merged price set, its plan).
_variant_plans: dict[tuple[int, tuple[int, ...]], tuple[Any, _Plan]] = {}


def _price_in_context(
    usage: Usage,
    model: str,
    provider: str | None,
    api_url: str | None,
    fallback: str | None,
    at: float | datetime | None,
    context: tuple[tuple[str, str], ...],
    key: tuple[Any, ...],
) -> tuple[Decimal | None, Resolved | None]:
    found = resolve(model, provider, api_url, fallback)
    if found is None:
        _warn_unknown(model, provider)
        return None, None
    info = found.info
    ts = _timestamp(at)
    standard = _model_price(info, ts)
    wanted = dict(context)
    matching = [
        v for v in info.price_variants or () if all(wanted.get(k) == value for k, value in v.when.items())
    ]
    variants = tuple(v for v in matching if v.constraint is None or v.constraint.active(ts))
    try:
        if not variants:  # a context this model's prices do not vary by: its standard prices
            plan = _plan(standard)
        else:
            variant_key = (id(standard), tuple(id(v) for v in variants))
            cached = _variant_plans.get(variant_key)
            if cached is None:
                merged = info.get_prices(ts, wanted)
                cached = (merged, _plan(merged))
                with _lock:
                    _variant_plans[variant_key] = cached
            plan = cached[1]
        if not isinstance(info.prices, list) and all(v.constraint is None for v in matching):
            with _lock:  # the same for every call in this context: the fast path from now on
                _fixed[key] = (plan, found)
        return _apply(plan, usage), found
    except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
        log.warning("llmtally: cannot price %s usage %r: %s", model, usage, exc)
        return None, None


#: (model, provider, day, version of the user's prices) -> (plan, entry as found), or None.
_user_found: dict[tuple[Any, ...], tuple[_Plan, Resolved] | None] = {}


def _user_price(
    model: str, provider: str | None, at: float | datetime | None
) -> tuple[_Plan, Resolved] | None:
    """The user's own price for ``model`` (a price file, ``set_price``), which wins over the catalogue."""
    day = _timestamp(at).date()
    key = (model, provider, day, user_prices.version())
    try:
        return _user_found[key]
    except KeyError:
        pass
    entry = user_prices.match(model, provider, day)
    found = None
    if entry is not None and entry.same_as is not None:
        target = resolve(entry.same_as, entry.provider or provider)
        if target is not None:
            source = f"{target.source}, as {entry.source} says {model} is {entry.same_as}"
            plan = _plan(_model_price(target.info, at))
            found = (plan, Resolved(target.provider_id, target.model_id, target.info, source))
    elif entry is not None:
        plan, info = _entry_plan(entry)
        resolved = Resolved(entry.provider or provider or "user", model, info, entry.source, entry.currency)
        found = (plan, resolved)
    with _lock:
        if len(_user_found) > 65_536:
            _user_found.clear()
        _user_found[key] = found
    return found


#: A user's price entry -> (its plan, a catalogue-like model entry holding its price set).
_entry_plans: dict[user_prices.PriceEntry, tuple[_Plan, Any]] = {}


def _entry_plan(entry: user_prices.PriceEntry) -> tuple[_Plan, Any]:
    cached = _entry_plans.get(entry)
    if cached is None:
        from types import SimpleNamespace

        from genai_prices.types import ModelPrice

        model_price = ModelPrice(**dict(entry.prices))
        info = SimpleNamespace(id=entry.name, prices=model_price, price_variants=None)
        cached = (_plan(model_price), info)  # the plan is cached by id(): info keeps the set alive
        with _lock:
            _entry_plans[entry] = cached
    return cached


def _timestamp(at: float | datetime | None) -> datetime:
    if at is None:
        return datetime.now(tz=UTC)
    return at if isinstance(at, datetime) else datetime.fromtimestamp(at, tz=UTC)


def _warn_unknown(model: str, provider: str | None) -> None:
    key = f"{provider or '?'}/{model}"
    if key in _warned:
        return
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "llmtally: no price known for model %r%s; its tokens are counted, its cost is unknown "
        "and left out of totals",
        model,
        f" (provider {provider!r})" if provider else "",
    )


def cost_of(
    model: str,
    *,
    provider: str | None = None,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    input_audio_tokens: int = 0,
    cached_audio_tokens: int = 0,
    output_audio_tokens: int = 0,
    input_image_tokens: int = 0,
    web_searches: int = 0,
    output_image_tokens: int = 0,
    citation_tokens: int = 0,
    at: datetime | None = None,
    context: Mapping[str, str] | None = None,
) -> Decimal | None:
    """The price in USD of one call's usage, or ``None`` if the model's price is unknown.

    ``input_tokens`` is all input including ``cached_tokens`` and ``cache_write_tokens``, of which
    ``cache_write_1h_tokens`` were written with a one-hour lifetime, and the ``input_audio_tokens``
    and ``input_image_tokens``; ``cached_audio_tokens`` are the audio part of ``cached_tokens``;
    ``output_tokens`` includes ``reasoning_tokens``, ``output_audio_tokens``, ``output_image_tokens``
    (drawn images) and ``citation_tokens`` (Perplexity's). ``web_searches``
    are server-side searches, priced per search. ``context`` is how the call was served where that
    changes the price (``{"service_tier": "flex"}``, ``{"speed": "fast"}``). ``at`` picks the price
    in force then (now by default)::

        >>> llmtally.cost_of("gpt-4", input_tokens=11, output_tokens=13)
        Decimal('0.00111')
    """
    # Positional, in Usage's field order: cheaper than keywords, in cost_of's one hot line.
    usage = Usage(
        input_tokens,
        output_tokens,
        cached_tokens,
        cache_write_tokens,
        reasoning_tokens,
        cache_write_1h_tokens,
        input_audio_tokens,
        cached_audio_tokens,
        output_audio_tokens,
        input_image_tokens,
        web_searches,
        output_image_tokens,
        citation_tokens,
    )
    ctx = tuple(sorted(context.items())) if context else None
    return price_usage(usage, model, provider=provider, at=at, context=ctx)[0]


def describe(model: str, provider: str | None = None, at: datetime | None = None) -> list[str] | None:
    """What ``llmtally price`` prints: the price in force for ``model``, unit by unit (tiers and
    variants too), and where it comes from; ``None`` if no price is known."""
    ts = _timestamp(at)
    mine = _user_price(model, provider, ts) if user_prices.entries() else None
    if mine is not None:
        found = mine[1]
        model_price = found.info.prices
        lines = [f"{model}: your price ({found.source})"]
    else:
        resolved = resolve(model, provider)
        if resolved is None:
            return None
        found = resolved
        model_price = _model_price(found.info, ts)
        lines = [f"{model}: {found.provider_id}/{found.model_id} ({found.source}, in force {ts.date()})"]
    lines += [f"  {part}" for part in str(model_price).split(", ")]
    for variant in getattr(found.info, "price_variants", None) or ():
        if str(variant.prices):  # a variant that changes nothing says nothing
            when = ", ".join(f"{k}={v}" for k, v in variant.when.items())
            lines.append(f"  when {when}: {variant.prices}")
    return lines


def similar_models(model: str, provider: str | None = None, n: int = 3) -> list[str]:
    """Catalogue model ids (and your own price names) close to ``model``: the "did you mean"."""
    import difflib

    names = {e.name for e in user_prices.entries() if e.kind == "model"}
    for prov in _snapshot().providers:
        if provider is None or prov.id == provider:
            names.update(m.id for m in prov.models)
    squashed = {name.replace("-", "").replace(".", "").lower(): name for name in names}
    key = model.replace("-", "").replace(".", "").lower()
    hits = [squashed[k] for k in difflib.get_close_matches(key, list(squashed), n=n, cutoff=0.75)]
    return hits or difflib.get_close_matches(model, sorted(names), n=n)


def reset_caches() -> None:
    """Forget every lookup and plan: after the catalogue in force changed (``prices update``)."""
    with _lock:
        for cache in (_resolved, _fixed, _variant_plans, _user_found, _entry_plans, _plans):
            cache.clear()
        _warned.clear()
