"""OpenRouter, through the openai SDK as its docs say: cache writes counted, and the cost OpenRouter
reports in ``usage.cost`` is what scopes and budgets count, with llmtally's own price kept beside it
in the record. The fake answers in OpenRouter's dialect at ``/api/v1/chat/completions``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply

from .conftest import catalogue_price

MODEL = "anthropic/claude-sonnet-4.5"
REPORTED = "0.099"


def reply(req: object) -> Reply:
    return Reply(
        prompt_tokens=10_000,
        cached_tokens=2_000,
        cache_write_tokens=4_800,
        completion_tokens=500,
        model=MODEL,
        cost=REPORTED,
    )


def ours() -> Decimal:
    """genai-prices' price for the same usage (its input is the uncached, unwritten part)."""
    return catalogue_price(
        MODEL, "openrouter", input_tokens=10_000, cache_read_tokens=2_000, cache_write_tokens=4_800,
        output_tokens=500,
    )  # fmt: skip


@pytest.fixture
def client() -> Iterator[tuple[FakeProvider, openai.OpenAI]]:
    fake = FakeProvider(handler=reply)
    with fake.serve() as url:
        llmtally.configure(providers={url + "/api": "openrouter"})  # openrouter.ai, on loopback
        try:
            yield fake, openai.OpenAI(base_url=url + "/api/v1", api_key="sk-or-test", max_retries=0)
        finally:
            llmtally.configure(providers={})


def ask(client: openai.OpenAI, *, stream: bool = False) -> None:
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        for _ in client.chat.completions.create(model=MODEL, messages=messages, stream=True):  # type: ignore[arg-type]
            pass
    else:
        client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]


class TestReportedCost:
    @pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
    def test_the_providers_figure_is_counted(
        self, client: tuple[FakeProvider, openai.OpenAI], stream: bool
    ) -> None:
        fake, sdk = client
        with llmtally.track() as t:
            ask(sdk, stream=stream)
        assert fake.requests[0].path == "/api/v1/chat/completions"
        assert (t.prompt_tokens, t.cached_tokens, t.cache_write_tokens, t.completion_tokens) == (
            10_000, 2_000, 4_800, 500,
        )  # fmt: skip
        call = t.calls[0]
        assert t.cost == Decimal(REPORTED) == call.cost and t.unpriced_requests == 0
        assert call.computed_cost == ours() and call.provider == "openrouter"
        assert call.price_source is not None and call.price_source.startswith("reported by the provider")
        assert "reported; priced $" in repr(call)

    def test_budgets_count_the_reported_cost(self, client: tuple[FakeProvider, openai.OpenAI]) -> None:
        fake, sdk = client
        # Ours is below the reported cost: a budget between them is only exceeded by the reported one.
        assert ours() < Decimal(REPORTED)
        limit = (ours() + Decimal(REPORTED)) / 2
        with llmtally.track(max_cost=limit):
            ask(sdk)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(sdk)
        assert len(fake.requests) == 1

    def test_the_record_keeps_both(self, client: tuple[FakeProvider, openai.OpenAI], tmp_path: Path) -> None:
        _, sdk = client
        path = tmp_path / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        try:
            ask(sdk)
            llmtally.flush()
        finally:
            llmtally.configure(ledger="none")
        conn = sqlite3.connect(path)
        (row,) = conn.execute("SELECT cost, computed_cost, provider FROM calls").fetchall()
        conn.close()
        assert row == (REPORTED, str(ours()), "openrouter")
        (total,) = llmtally.report(ledger=f"sqlite:///{path}", since="1d")
        assert total.cost == Decimal(REPORTED)

    def test_no_figure_means_our_price(self, client: tuple[FakeProvider, openai.OpenAI]) -> None:
        fake, sdk = client
        fake.handler = lambda req: Reply(prompt_tokens=10_000, cached_tokens=2_000, cache_write_tokens=4_800,
                                         completion_tokens=500, model=MODEL)  # fmt: skip
        with llmtally.track() as t:
            ask(sdk)
        assert t.cost == ours() and t.calls[0].computed_cost is None
