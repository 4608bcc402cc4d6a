"""Money: exact ``Decimal`` amounts, their text, and integer picodollars for sums in SQL.

Every amount llmtally computes, stores or prints goes through here, so there is one rounding rule
(picodollars, half to even; catalogue prices are exact at that scale) and one way to print an
amount (no float noise, no exponent).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

__all__ = ["PICO", "ZERO", "format_usd", "from_pico", "parse_amount", "to_pico"]

ZERO = Decimal(0)
#: One picodollar (10**-12 USD): the ledger's integer unit.
PICO = Decimal("1e-12")


def format_usd(amount: Decimal) -> str:
    """An exact amount without float noise or exponent: ``0.00111``, ``0``, ``12.5``."""
    if not amount:
        return "0"
    return format(amount.normalize(), "f")


def to_pico(amount: Decimal) -> int:
    """An amount in integer picodollars (half to even below a picodollar)."""
    return int(amount.scaleb(12).to_integral_value(ROUND_HALF_EVEN))


def from_pico(pico: int) -> Decimal:
    """The exact amount of an integer number of picodollars, without trailing zeros."""
    return (Decimal(pico) * PICO).normalize() if pico else ZERO


def parse_amount(value: object, what: str) -> Decimal:
    """A user-given amount of USD: a Decimal, an int, a string such as ``"0.50"``, or a float,
    taken as the decimal it prints as (``0.1`` is one tenth, not the binary fraction nearest it).

    NaN, infinities and negative amounts raise ``ValueError``, other types (``True``, a list)
    ``TypeError``, naming ``what`` and the bad value.
    """
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise TypeError(
            f"{what} must be an amount in USD such as '0.50', not {value!r} ({type(value).__name__})"
        )
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{what} must be an amount in USD such as '0.50', not {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must be a finite amount of USD, zero or more, not {value!r}")
    return amount
