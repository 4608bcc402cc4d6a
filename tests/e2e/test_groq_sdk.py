"""The ``groq`` SDK, for real, over loopback HTTP: Groq's chat dialect counted exactly and priced as Groq's.

The fake answers Groq's dialect at ``/openai/v1/chat/completions``, where the groq SDK posts: a
default stream (no ``stream_options``) carries its usage only in the last chunk's ``x_groq.usage``.
The fake's host is 127.0.0.1, which does not say "groq", so the tests say it the way a user of a
gateway or proxy would: ``llmtally.configure(providers={base_url: "groq"})``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import groq
import pytest
from groq.types.chat import ChatCompletionMessageParam

import llmtally
from llmtally.testing import FakeProvider, Reply

MODEL = "llama-3.3-70b-versatile"  # a name only Groq's price list knows
GPT_OSS = "openai/gpt-oss-120b"  # a vendor/model name, with a cache-read price on Groq
ANSWER = "Llamas hum in the fields of the Andes"
PATH = "/openai/v1/chat/completions"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about llamas."}]


def big_reply(model: str | None = None) -> Reply:
    """2,900 prompt tokens, 2,048 of them read from Groq's prompt cache; 324 completion tokens."""
    return Reply(text=ANSWER, model=model, prompt_tokens=2900, cached_tokens=2048, completion_tokens=324)


def peer_price(body: dict[str, Any]) -> Decimal:
    """What genai-prices' own ``groq`` extractor and calc_price make of the same body (or last chunk)."""
    extracted = genai_prices.extract_usage(body, provider_id="groq")
    assert extracted.model is not None
    return genai_prices.calc_price(extracted.usage, extracted.model.id, provider_id="groq").total_price


#: llama-3.3-70b-versatile on Groq: $0.59/M input, $0.79/M output, no separate cache-read price.
LLAMA_COST = (2900 * Decimal("0.59") + 324 * Decimal("0.79")) / 1_000_000
#: openai/gpt-oss-120b on Groq: $0.15/M input, $0.075/M cached input, $0.60/M output.
GPT_OSS_COST = (852 * Decimal("0.15") + 2048 * Decimal("0.075") + 324 * Decimal("0.60")) / 1_000_000


@pytest.fixture
def mapped(url: str) -> Iterator[str]:
    """The fake's base URL, configured as Groq's; the mapping is forgotten afterwards."""
    llmtally.configure(providers={url: "groq"})
    try:
        yield url
    finally:
        llmtally.configure(providers={})


@pytest.fixture
def client(mapped: str) -> Iterator[groq.Groq]:
    c = groq.Groq(base_url=mapped, api_key="gsk-test", max_retries=0)
    yield c
    c.close()


@pytest.fixture
async def aclient(mapped: str) -> AsyncIterator[groq.AsyncGroq]:
    c = groq.AsyncGroq(base_url=mapped, api_key="gsk-test", max_retries=0)
    yield c
    await c.close()


def check_call(t: llmtally.Tally, index: int, *, model: str, stream: bool, cost: Decimal) -> None:
    call = t.calls[index]
    assert call.ok and call.status == 200
    assert (call.provider, call.model, call.endpoint) == ("groq", model, "chat.completions")
    assert call.stream is stream and call.estimated is False
    assert call.usage is not None
    assert (call.usage.prompt_tokens, call.usage.cached_tokens, call.usage.completion_tokens) == (
        2900,
        2048,
        324,
    )
    assert call.cost == cost


class TestChat:
    """chat.completions.create, plain and streamed: Groq's usage, exact, at Groq's prices."""

    def test_json(self, fake: FakeProvider, client: groq.Groq) -> None:
        fake.add(big_reply())
        with llmtally.track("groq") as t:
            r = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert r.choices[0].message.content == ANSWER
        assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (2900, 324)
        assert fake.requests[0].path == PATH and fake.requests[0].stream is False
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
        check_call(t, 0, model=MODEL, stream=False, cost=LLAMA_COST)
        assert t.cost == LLAMA_COST == peer_price(r.model_dump()) == Decimal("0.00196696")
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (2900, 2048, 324)
        assert (t.unpriced_requests, t.estimated_requests) == (0, 0)

    def test_default_stream_is_exact_from_x_groq(self, fake: FakeProvider, client: groq.Groq) -> None:
        fake.add(big_reply())
        with llmtally.track() as t:
            chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        # The SDK asked for nothing; the usage came only in the last chunk's x_groq.
        assert "stream_options" not in fake.requests[0].json
        last = chunks[-1]
        assert last.usage is None and last.x_groq is not None and last.x_groq.usage is not None
        assert all(c.x_groq is None or c.x_groq.usage is None for c in chunks[:-1])
        assert (t.successful_requests, len(t.calls)) == (1, 1)
        # Exact, not an estimate: an estimate would be about one token per chunk (a dozen), not 324.
        check_call(t, 0, model=MODEL, stream=True, cost=LLAMA_COST)
        assert t.estimated_requests == 0
        body = {"model": last.model, "usage": last.x_groq.usage.model_dump()}
        assert t.cost == peer_price(body) == LLAMA_COST

    def test_stream_asking_for_usage(self, fake: FakeProvider, client: groq.Groq) -> None:
        # The groq SDK has no stream_options parameter; a caller who wants OpenAI's usage chunk
        # sends it in the body, and the usage then comes in the standard place, not x_groq.
        fake.add(big_reply())
        with llmtally.track() as t:
            stream = client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_body={"stream_options": {"include_usage": True}},
            )
            chunks = list(stream)
        assert fake.requests[0].json["stream_options"] == {"include_usage": True}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 324
        assert all(c.x_groq is None or c.x_groq.usage is None for c in chunks)
        assert len(t.calls) == 1
        check_call(t, 0, model=MODEL, stream=True, cost=LLAMA_COST)

    def test_vendor_model_is_priced_at_groqs_rates(self, fake: FakeProvider, client: groq.Groq) -> None:
        # "openai/gpt-oss-120b" names its vendor; served by Groq it costs what Groq charges,
        # cached input at Groq's cache-read rate.
        fake.add_many(big_reply(), 2)
        with llmtally.track() as t:
            r = client.chat.completions.create(model=GPT_OSS, messages=MESSAGES)
            for _ in client.chat.completions.create(model=GPT_OSS, messages=MESSAGES, stream=True):
                pass
        check_call(t, 0, model=GPT_OSS, stream=False, cost=GPT_OSS_COST)
        check_call(t, 1, model=GPT_OSS, stream=True, cost=GPT_OSS_COST)
        assert GPT_OSS_COST == peer_price(r.model_dump()) == Decimal("0.0004758")
        assert t.cost == 2 * GPT_OSS_COST and t.by_model[GPT_OSS].requests == 2

    def test_unmapped_host_is_counted_but_not_guessed(self, fake: FakeProvider, url: str) -> None:
        # Without the mapping nothing says Groq: the tokens are exact, the price is reported unknown.
        llmtally.configure(providers={})
        fake.add(big_reply())
        c = groq.Groq(base_url=url, api_key="gsk-test", max_retries=0)
        with llmtally.track() as t:
            for _ in c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                pass
        c.close()
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (2900, 2048, 324)
        # Attributed to the wire format's provider, whose catalogue has no such model.
        assert t.calls[0].estimated is False and t.calls[0].provider == "openai"
        assert t.calls[0].cost is None and t.unpriced_models == [MODEL] and t.cost == 0


class TestAsync:
    async def test_json_and_default_stream(self, fake: FakeProvider, aclient: groq.AsyncGroq) -> None:
        fake.add_many(big_reply(), 2)
        async with llmtally.track() as t:
            r = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)
            stream = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert r.choices[0].message.content == ANSWER == text
        assert [q.stream for q in fake.requests] == [False, True]
        assert (t.successful_requests, len(t.calls)) == (2, 2)
        check_call(t, 0, model=MODEL, stream=False, cost=LLAMA_COST)
        check_call(t, 1, model=MODEL, stream=True, cost=LLAMA_COST)
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (5800, 4096, 648)
        assert t.cost == 2 * LLAMA_COST and t.estimated_requests == 0


class TestBudgets:
    """A budget refuses before sending: the groq SDK lets BudgetExceeded through, unretried."""

    def test_refused_before_sending(self, fake: FakeProvider, mapped: str) -> None:
        fake.add_many(big_reply(), 3)
        # max_retries left at the SDK's default: a refusal must not be retried either.
        c = groq.Groq(base_url=mapped, api_key="gsk-test")
        with llmtally.track("agent", max_requests=1) as t:
            c.chat.completions.create(model=MODEL, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                c.chat.completions.create(model=MODEL, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        c.close()
        assert len(fake.requests) == 1 and fake.pending == 2
        assert (t.successful_requests, t.failed_requests) == (1, 0)
        assert t.cost == LLAMA_COST

    async def test_async_stream_refused_before_sending(
        self, fake: FakeProvider, aclient: groq.AsyncGroq
    ) -> None:
        fake.add_many(big_reply(), 2)
        async with llmtally.track(max_cost=LLAMA_COST) as t:
            stream = await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            async for _ in stream:
                pass
            with pytest.raises(llmtally.BudgetExceeded):
                await aclient.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        assert len(fake.requests) == 1
        assert t.successful_requests == 1 and t.cost == LLAMA_COST


def test_the_mapping_in_force_when_the_call_is_made_decides(fake: FakeProvider, url: str) -> None:
    """A call is Groq's if the mapping said so when it was made, whenever the tally is read."""
    fake.add_many(big_reply(), 2)
    c = groq.Groq(base_url=url, api_key="gsk-test", max_retries=0)
    try:
        with llmtally.track() as t:
            c.chat.completions.create(model=MODEL, messages=MESSAGES)  # unmapped
            llmtally.configure(providers={url: "groq"})
            c.chat.completions.create(model=MODEL, messages=MESSAGES)  # Groq's
    finally:
        llmtally.configure(providers={})  # before the tally is read, as a test's cleanup would
        c.close()
    assert [call.cost for call in t.calls] == [None, LLAMA_COST]
    assert t.calls[1].provider == "groq" and t.cost == LLAMA_COST


def test_mapping_from_the_environment(fake: FakeProvider, url: str) -> None:
    """``LLMTALLY_PROVIDERS`` does what ``configure(providers=...)`` does, in a fresh process."""
    fake.add(big_reply())
    code = f"""
import groq, llmtally
c = groq.Groq(base_url={url!r}, api_key="gsk-test", max_retries=0)
with llmtally.track() as t:
    for _ in c.chat.completions.create(model={MODEL!r}, messages={MESSAGES!r}, stream=True):
        pass
call = t.calls[0]
print(call.provider, call.cost, call.estimated, t.completion_tokens)
"""
    env = {**os.environ, "LLMTALLY_PROVIDERS": f"{url}=groq"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["groq", str(LLAMA_COST), "False", "324"]
    assert len(fake.requests) == 1 and fake.requests[0].path == PATH
