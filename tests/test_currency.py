"""Prices in any currency: each call keeps its cost as priced, tallies and budgets count it in the
display currency at the rate the user set, say the rates, and a currency without a rate is unpriced."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import llmtally
from llmtally._core import currency, user_prices
from llmtally.testing import FakeProvider, Reply

M = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    yield
    currency.set_currency("USD", {})
    user_prices.set_entries(files=(), calls=())


def call(model: str) -> llmtally.Tally:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=1000, completion_tokens=200, model=model))
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return t


def qwen_in_cny(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("[[price]]\nmodel = 'qwen-max'\ncurrency = 'CNY'\ninput = '2.4'\noutput = '9.6'\n")
    llmtally.configure(prices=str(path))


NATIVE = (1000 * Decimal("2.4") + 200 * Decimal("9.6")) / M  # CNY


def test_converted_at_the_rate_given_and_said(tmp_path: Path) -> None:
    qwen_in_cny(tmp_path)
    llmtally.configure(rates={"CNY": "0.138"})
    t = call("qwen-max")
    c = t.calls[0]
    assert (c.native_cost, c.native_currency, c.currency) == (NATIVE, "CNY", "USD")
    assert t.cost == NATIVE * Decimal("0.138") and t.unpriced_requests == 0
    assert "Rates: 1 CNY = 0.138 USD" in str(t)


def test_no_rate_is_unpriced_not_zero(tmp_path: Path) -> None:
    qwen_in_cny(tmp_path)
    t = call("qwen-max")
    assert t.unpriced_requests == 1 and t.calls[0].cost is None and t.calls[0].native_cost == NATIVE
    assert "no rate for CNY: unpriced" in str(t)
    assert t.calls[0].price_source is not None and "no rate from CNY to USD" in t.calls[0].price_source


def test_another_display_currency(tmp_path: Path) -> None:
    llmtally.configure(currency="EUR", rates={"USD": "0.92"})
    t = call("gpt-4o")
    usd = llmtally.cost_of("gpt-4o", input_tokens=1000, output_tokens=200)
    assert usd is not None and t.cost == usd * Decimal("0.92") and t.calls[0].currency == "EUR"
    summary = str(t)
    assert "Total Cost (EUR): 0.00414 EUR" in summary and "1 USD = 0.92 EUR" in summary


def test_recorded_in_the_ledger(tmp_path: Path) -> None:
    qwen_in_cny(tmp_path)
    llmtally.configure(rates={"CNY": "0.138"}, ledger=f"sqlite:///{tmp_path / 'l.db'}")
    try:
        call("qwen-max")
        llmtally.flush()
    finally:
        llmtally.configure(ledger="none")
    conn = sqlite3.connect(tmp_path / "l.db")
    (row,) = conn.execute("SELECT cost, currency, native_cost, native_currency FROM calls").fetchall()
    conn.close()
    assert row == (str(NATIVE * Decimal("0.138")), "USD", str(NATIVE), "CNY")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"currency": "euro"}, "not an ISO 4217 code"),
        ({"rates": {"cny": "0.1"}}, "rate for 'cny'"),
        ({"rates": {"CNY": "-1"}}, "must be a positive number"),
        ({"rates": {"CNY": "abc"}}, "must be a positive number"),
    ],
)
def test_bad_currency_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llmtally.configure(**kwargs)  # type: ignore[arg-type]
    assert currency.display() == "USD" and not currency.rates()


def test_a_price_file_currency_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("[[price]]\nmodel = 'x'\ncurrency = 'yuan'\ninput = '1'\n")
    with pytest.raises(ValueError, match=r"line 3, field 'currency': 'yuan' is not an ISO 4217"):
        llmtally.configure(prices=str(path))
