"""The cohere SDK (v2 API), for real, over loopback HTTP: billed units counted and priced."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import cohere
import genai_prices
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply

MODEL = "command-r-plus"
MESSAGES = [{"role": "user", "content": "Write a haiku about tokens."}]


def answer(req: object) -> Reply:
    return Reply(text="Tokens fall like rain", prompt_tokens=17, completion_tokens=65, model=MODEL)


def catalogue_price() -> Decimal:
    return genai_prices.calc_price(
        genai_prices.Usage(input_tokens=17, output_tokens=65), MODEL, provider_id="cohere"
    ).total_price


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(handler=answer)
    with fake.serve() as url:
        yield fake, url


class TestCohere:
    """chat, chat_stream and embed, sync and async."""

    def test_chat_and_stream(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        co = cohere.ClientV2(api_key="co-test", base_url=url)
        with llmtally.track() as t:
            r = co.chat(model=MODEL, messages=MESSAGES)
            text = "".join(
                ev.delta.message.content.text  # type: ignore[union-attr]
                for ev in co.chat_stream(model=MODEL, messages=MESSAGES)
                if ev.type == "content-delta"
            )
        assert r.usage is not None and text == "Tokens fall like rain"
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 34, 130)
        assert t.cost == 2 * catalogue_price() and t.calls[1].stream
        assert {c.requested_model for c in t.calls} == {MODEL}

    def test_embed_is_counted(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        co = cohere.ClientV2(api_key="co-test", base_url=url)
        with llmtally.track() as t:
            co.embed(
                model="embed-english-v3.0",
                texts=["a", "b"],
                input_type="search_document",
                embedding_types=["float"],
            )
        assert t.successful_requests == 1 and t.prompt_tokens == 17

    async def test_async(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        co = cohere.AsyncClientV2(api_key="co-test", base_url=url)
        async with llmtally.track() as t:
            await co.chat(model=MODEL, messages=MESSAGES)
            async for _ in co.chat_stream(model=MODEL, messages=MESSAGES):
                pass
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 34, 130)

    def test_refused_before_sending(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        co = cohere.ClientV2(api_key="co-test", base_url=url)
        with llmtally.track("agent", max_requests=1) as t:
            co.chat(model=MODEL, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                co.chat(model=MODEL, messages=MESSAGES)
        assert len(fake.requests) == 1 and t.successful_requests == 1
