"""The ``mistralai`` SDK, for real, over loopback HTTP: chat, streams and embeddings, priced as Mistral's.

``Mistral(server_url=...)`` posts OpenAI-shaped bodies to ``/v1/chat/completions`` and
``/v1/embeddings``, and the fake answers them. Mistral's own API always ends a stream with a usage
chunk, although the SDK never sends ``stream_options``; the fake does that only when told
(``Reply(include_usage=True)``), so the streamed replies here say so.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from mistralai.client import Mistral

import llmtally
from llmtally.testing import FakeProvider, Reply

MODEL = "mistral-large-2512"
EMBED = "mistral-embed"
MESSAGES: Any = [{"role": "user", "content": "Name a French cheese."}]
ANSWER = "Comté, aged for eighteen months"


def cached_reply(stream: bool = False) -> Reply:
    """2,900 prompt tokens, 2,048 of them cached; 324 completion tokens."""
    return Reply(
        text=ANSWER,
        prompt_tokens=2900,
        cached_tokens=2048,
        completion_tokens=324,
        include_usage=True if stream else None,
    )


def peer_price(body: dict[str, Any], model: str | None = None) -> Decimal:
    """What genai-prices' own ``mistral`` extractor and calc_price make of the same body."""
    extracted = genai_prices.extract_usage(body, provider_id="mistral")
    name = model or (extracted.model.id if extracted.model else None)
    assert name is not None
    return genai_prices.calc_price(extracted.usage, name, provider_id="mistral").total_price


#: mistral-large-2512: $0.50/M input, $0.05/M cached input, $1.50/M output.
LARGE_COST = (852 * Decimal("0.5") + 2048 * Decimal("0.05") + 324 * Decimal("1.5")) / 1_000_000
#: mistral-embed: $0.10/M input.
EMBED_COST = 7 * Decimal("0.1") / 1_000_000


@pytest.fixture
def client(url: str) -> Iterator[Mistral]:
    with Mistral(api_key="mistral-test", server_url=url) as c:
        yield c


@pytest.fixture
async def aclient(url: str) -> AsyncIterator[Mistral]:
    async with Mistral(api_key="mistral-test", server_url=url) as c:
        yield c


def check_chat(t: llmtally.Tally, index: int, *, stream: bool) -> None:
    call = t.calls[index]
    assert call.ok and call.status == 200
    assert (call.provider, call.model, call.requested_model, call.endpoint) == (
        "mistral",
        MODEL,
        MODEL,
        "chat.completions",
    )
    assert call.stream is stream and call.estimated is False
    assert call.usage is not None
    assert (call.usage.prompt_tokens, call.usage.cached_tokens, call.usage.completion_tokens) == (
        2900,
        2048,
        324,
    )
    assert call.cost == LARGE_COST


class TestChat:
    """chat.complete and chat.stream: Mistral's usage, exact, at Mistral's prices (the model name says so)."""

    def test_complete(self, fake: FakeProvider, client: Mistral) -> None:
        fake.add(cached_reply())
        with llmtally.track("mistral") as t:
            r = client.chat.complete(model=MODEL, messages=MESSAGES)
        message = r.choices[0].message
        assert message is not None and message.content == ANSWER
        assert r.usage.prompt_tokens == 2900 and r.usage.completion_tokens == 324
        assert fake.requests[0].path == "/v1/chat/completions" and fake.requests[0].stream is False
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
        check_chat(t, 0, stream=False)
        assert t.cost == LARGE_COST == peer_price(r.model_dump()) == Decimal("0.0010144")
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (2900, 2048, 324)
        assert (t.unpriced_requests, t.estimated_requests) == (0, 0)

    def test_stream(self, fake: FakeProvider, client: Mistral) -> None:
        fake.add(cached_reply(stream=True))
        with llmtally.track() as t:
            events = list(client.chat.stream(model=MODEL, messages=MESSAGES))
        text = "".join(str(e.data.choices[0].delta.content or "") for e in events if e.data.choices)
        assert text == ANSWER
        assert "stream_options" not in fake.requests[0].json and fake.requests[0].stream is True
        usage = events[-1].data.usage
        assert usage is not None and usage.completion_tokens == 324
        assert (t.successful_requests, len(t.calls)) == (1, 1)
        check_chat(t, 0, stream=True)
        body = {"model": events[-1].data.model, "usage": usage.model_dump()}
        assert t.cost == peer_price(body) == LARGE_COST

    def test_several_calls_add_up(self, fake: FakeProvider, client: Mistral) -> None:
        fake.extend(
            [cached_reply(), cached_reply(stream=True), Reply(prompt_tokens=100, completion_tokens=10)]
        )
        with llmtally.track() as t:
            client.chat.complete(model=MODEL, messages=MESSAGES)
            for _ in client.chat.stream(model=MODEL, messages=MESSAGES):
                pass
            client.chat.complete(model="codestral-2508", messages=MESSAGES)
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (3, 5900, 658)
        codestral = (100 * Decimal("0.3") + 10 * Decimal("0.9")) / 1_000_000
        assert t.by_model["codestral-2508"].cost == codestral
        assert t.cost == 2 * LARGE_COST + codestral
        assert [c.provider for c in t.calls] == ["mistral"] * 3


class TestAsync:
    async def test_complete_and_stream_async(self, fake: FakeProvider, aclient: Mistral) -> None:
        fake.extend([cached_reply(), cached_reply(stream=True)])
        async with llmtally.track() as t:
            r = await aclient.chat.complete_async(model=MODEL, messages=MESSAGES)
            stream = await aclient.chat.stream_async(model=MODEL, messages=MESSAGES)
            text = "".join(
                [str(e.data.choices[0].delta.content or "") async for e in stream if e.data.choices]
            )
        message = r.choices[0].message
        assert message is not None and message.content == ANSWER == text
        assert [q.stream for q in fake.requests] == [False, True]
        assert (t.successful_requests, len(t.calls)) == (2, 2)
        check_chat(t, 0, stream=False)
        check_chat(t, 1, stream=True)
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (5800, 4096, 648)
        assert t.cost == 2 * LARGE_COST and t.estimated_requests == 0


#: An embeddings body as Mistral's API sends it (``id`` included, which the SDK requires).
def mistral_embedding_body(n: int) -> bytes:
    data = [{"object": "embedding", "embedding": [0.25, -0.5, 0.125], "index": i} for i in range(n)]
    usage = {"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0, "prompt_audio_seconds": None}
    body = {"id": "embd-5f0c1e", "object": "list", "data": data, "model": EMBED, "usage": usage}
    return json.dumps(body).encode()


class TestEmbeddings:
    def check(self, t: llmtally.Tally) -> None:
        assert (t.successful_requests, len(t.calls)) == (1, 1)
        call = t.calls[0]
        assert (call.provider, call.model, call.endpoint, call.estimated) == (
            "mistral",
            EMBED,
            "embeddings",
            False,
        )
        assert (t.prompt_tokens, t.completion_tokens) == (7, 0)
        assert call.cost == t.cost == EMBED_COST == Decimal("0.0000007")
        assert EMBED_COST == peer_price({"usage": {"prompt_tokens": 7, "completion_tokens": 0}}, EMBED)

    def test_create_with_mistrals_own_body(self, fake: FakeProvider, client: Mistral) -> None:
        fake.add(Reply(garbage=mistral_embedding_body(2)))  # sent verbatim
        with llmtally.track() as t:
            r = client.embeddings.create(model=EMBED, inputs=["Comté", "Beaufort d'été"])
        assert len(r.data) == 2 and r.usage.prompt_tokens == 7
        assert fake.requests[0].path == "/v1/embeddings"
        assert fake.requests[0].json == {"model": EMBED, "input": ["Comté", "Beaufort d'été"]}
        self.check(t)

    async def test_create_async(self, fake: FakeProvider, aclient: Mistral) -> None:
        fake.add(Reply(garbage=mistral_embedding_body(1)))
        async with llmtally.track() as t:
            r = await aclient.embeddings.create_async(model=EMBED, inputs=["Comté"])
        assert len(r.data) == 1
        self.check(t)

    def test_create_against_the_fake(self, fake: FakeProvider, client: Mistral) -> None:
        fake.add(Reply(prompt_tokens=7))
        with llmtally.track() as t:
            r = client.embeddings.create(model=EMBED, inputs=["Comté", "Beaufort"])
        assert len(r.data) == 2
        self.check(t)


class TestProviderMapping:
    """A model Mistral serves whose name does not say Mistral is priced once the host is mapped."""

    def test_unnamed_model_priced_once_mapped(self, fake: FakeProvider, client: Mistral, url: str) -> None:
        model = "zai-glm-5-3"  # on Mistral's price list, but no Mistral name
        expected = (852 * Decimal("1.4") + 2048 * Decimal("0.14") + 324 * Decimal("4.4")) / 1_000_000
        fake.add_many(cached_reply(), 2)
        with llmtally.track() as before:
            client.chat.complete(model=model, messages=MESSAGES)
        assert before.calls[0].cost is None and before.unpriced_models == [model]
        llmtally.configure(providers={url: "mistral"})
        try:
            with llmtally.track() as after:
                r = client.chat.complete(model=model, messages=MESSAGES)
            assert after.calls[0].provider == "mistral" and after.unpriced_requests == 0
            assert after.cost == expected == peer_price(r.model_dump()) == Decimal("0.00290512")
        finally:
            llmtally.configure(providers={})


class TestBudgets:
    """A budget refuses before sending; the mistralai SDK lets BudgetExceeded through as itself."""

    def test_refused_before_sending(self, fake: FakeProvider, client: Mistral) -> None:
        fake.add_many(cached_reply(), 3)
        with llmtally.track("agent", max_requests=1) as t:
            client.chat.complete(model=MODEL, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                client.chat.complete(model=MODEL, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                client.embeddings.create(model=EMBED, inputs=["Comté"])
        assert len(fake.requests) == 1 and fake.pending == 2
        assert (t.successful_requests, t.failed_requests) == (1, 0) and t.cost == LARGE_COST

    async def test_async_stream_refused_before_sending(self, fake: FakeProvider, aclient: Mistral) -> None:
        fake.add_many(cached_reply(stream=True), 2)
        async with llmtally.track(max_cost=LARGE_COST) as t:
            stream = await aclient.chat.stream_async(model=MODEL, messages=MESSAGES)
            async for _ in stream:
                pass
            with pytest.raises(llmtally.BudgetExceeded):
                await aclient.chat.stream_async(model=MODEL, messages=MESSAGES)
        assert len(fake.requests) == 1 and fake.pending == 1
        assert t.successful_requests == 1 and t.cost == LARGE_COST
