"""The display currency and the exchange rates the user set: no rate is ever fetched.

A price may be in any ISO 4217 currency (a price file's ``currency = "CNY"``); the catalogue's are
USD. Each call keeps its cost in the price's own currency (``Call.native_cost``) and is counted in
the display currency (``Call.cost``: what tallies, budgets and reports add up), converted at the
rate the user gave::

    llmtally.configure(currency="EUR", rates={"USD": "0.92", "CNY": "0.128"})

A call priced in a currency with no rate is unpriced (counted, its cost unknown, said so), never 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation

__all__ = ["ENV_CURRENCY", "ENV_RATES", "convert", "display", "parse", "rates", "set_currency"]

ENV_CURRENCY = "LLMTALLY_CURRENCY"
ENV_RATES = "LLMTALLY_RATES"
_CODE = re.compile(r"[A-Z]{3}")

#: [(display currency, {currency: display units per one unit of it})], replaced whole.
_state: list[tuple[str, Mapping[str, Decimal]]] = [("USD", {})]


def check_code(code: object, what: str = "currency") -> str:
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        raise ValueError(f"{what} {code!r} is not an ISO 4217 code such as 'USD', 'EUR' or 'CNY'")
    return code


def parse(currency: str, rates: Mapping[str, object] | str) -> tuple[str, dict[str, Decimal]]:
    """Validated (display currency, rates); ``rates`` is a mapping or ``"CNY=0.138,EUR=1.08"``."""
    check_code(currency)
    if isinstance(rates, str):
        pairs = []
        for item in rates.split(","):
            if item.strip():
                name, sep, text = item.partition("=")
                if not sep:
                    raise ValueError(f"rate {item.strip()!r} is not CODE=RATE")
                pairs.append((name.strip(), text.strip()))
        rates = dict(pairs)
    out: dict[str, Decimal] = {}
    for key, value in rates.items():
        code = check_code(key, "rate for")
        try:
            rate = Decimal(str(value)) if not isinstance(value, bool) else Decimal("NaN")
        except InvalidOperation:
            rate = Decimal("NaN")
        if not rate.is_finite() or rate <= 0:
            raise ValueError(
                f"rate for {code} must be a positive number of {currency} per {code}, not {value!r}"
            )
        out[code] = rate
    return currency, out


def set_currency(currency: str, rates: Mapping[str, Decimal]) -> None:
    _state[0] = (currency, dict(rates))


def display() -> str:
    return _state[0][0]


def rates() -> Mapping[str, Decimal]:
    return _state[0][1]


def convert(amount: Decimal, code: str) -> Decimal | None:
    """``amount`` of ``code`` in the display currency, or ``None`` without a rate for ``code``."""
    target, table = _state[0]
    if code == target:
        return amount
    rate = table.get(code)
    return None if rate is None else amount * rate
