"""The currency and rates a report is shown in, for every command that shows one (report, ui)."""

from __future__ import annotations

import argparse
from typing import Any


def report_money(args: argparse.Namespace) -> tuple[str, Any]:
    """The currency and rates a report is shown in: ``--currency`` / ``--rates``, else configured."""
    from .._runtime import RUNTIME

    currency, rates = RUNTIME.money()
    if args.currency and args.currency.strip().upper() != currency:
        # The configured rates are per the configured currency: not for another one.
        currency, rates = args.currency.strip().upper(), {}
    if args.rates is not None:
        rates = args.rates
    return currency, rates
