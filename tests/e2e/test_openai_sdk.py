"""The real ``openai`` SDK over loopback HTTP: every endpoint llmtally meters, counted and priced exactly."""

from __future__ import annotations

import json
import logging
import uuid
from decimal import Decimal
from typing import ClassVar

import openai
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import CHAT, catalogue_price, count_tokens, dead_url, gpt4_cost

JOKE = "Why did the chicken cross the road? To get to the other side."
# Words whose BPE counts differ between cl100k and o200k, so the wrong tokenizer cannot pass.
ODD_TEXT = "Supercalifragilistic naïve résumé: 東京 and ünïcödé tokens, 12345 + 67890!"


def assert_one_ok_call(
    t: llmtally.Tally, *, model: str, endpoint: str, stream: bool = False
) -> llmtally.Call:
    assert (t.successful_requests, t.failed_requests) == (1, 0)
    assert len(t.calls) == 1
    call = t.calls[0]
    assert call.ok and call.status == 200 and call.error is None
    assert call.model == model
    assert call.endpoint == endpoint
    assert call.stream is stream
    assert call.provider == "openai"
    return call


class TestChatCompletions:
    """A chat completion is counted with the usage the server reported, priced, and returned untouched."""

    def test_sync_create(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        with llmtally.track("chat") as t:
            r = oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert r.choices[0].message.content == JOKE
        assert r.usage is not None and (r.usage.prompt_tokens, r.usage.completion_tokens) == (11, 13)
        call = assert_one_ok_call(t, model="gpt-4", endpoint="chat.completions")
        assert call.requested_model == "gpt-4" and call.estimated is False
        assert (t.prompt_tokens, t.completion_tokens, t.total_tokens) == (11, 13, 24)
        assert (t.cached_tokens, t.reasoning_tokens, t.cache_write_tokens) == (0, 0, 0)
        assert t.cost == Decimal("0.00111") == gpt4_cost(11, 13)
        assert call.cost == Decimal("0.00111")
        assert t.total_cost == 0.00111
        assert (t.unpriced_requests, t.estimated_requests) == (0, 0)
        mt = t.by_model["gpt-4"]
        assert (mt.requests, mt.prompt_tokens, mt.completion_tokens, mt.cost) == (
            1,
            11,
            13,
            Decimal("0.00111"),
        )
        assert fake.requests[0].json["messages"] == CHAT

    async def test_async_create(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        async with llmtally.track("chat-async") as t:
            r = await aoai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert r.choices[0].message.content == JOKE
        assert_one_ok_call(t, model="gpt-4", endpoint="chat.completions")
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)
        assert t.cost == Decimal("0.00111")

    def test_tool_calls_reach_the_caller(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(
            Reply(
                tool_calls=[ToolCall("search", {"query": "weather in Paris"}), ToolCall("clock", {})],
                prompt_tokens=40,
                completion_tokens=17,
            )
        )
        tools = [
            {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
            for n in ("search", "clock")
        ]
        with llmtally.track() as t:
            r = oai.chat.completions.create(model="gpt-4", messages=CHAT, tools=tools)
        calls = r.choices[0].message.tool_calls
        assert calls is not None
        assert [c.function.name for c in calls] == ["search", "clock"]
        assert json.loads(calls[0].function.arguments) == {"query": "weather in Paris"}
        assert r.choices[0].finish_reason == "tool_calls"
        assert (t.prompt_tokens, t.completion_tokens) == (40, 17)
        assert t.cost == gpt4_cost(40, 17) == Decimal("0.00222")

    def test_served_model_is_recorded_and_priced(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(model="gpt-4-0613", prompt_tokens=100, completion_tokens=10))
        with llmtally.track() as t:
            r = oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert r.model == "gpt-4-0613"
        call = assert_one_ok_call(t, model="gpt-4-0613", endpoint="chat.completions")
        assert call.requested_model == "gpt-4"
        assert list(t.by_model) == ["gpt-4-0613"]
        assert t.cost == gpt4_cost(100, 10) == Decimal("0.0036")

    def test_several_calls_add_up(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.extend(
            [Reply(prompt_tokens=11, completion_tokens=13), Reply(prompt_tokens=7, completion_tokens=2)]
        )
        fake.add(Reply(model="gpt-4o", prompt_tokens=1000, completion_tokens=100))
        with llmtally.track() as t:
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
            oai.chat.completions.create(model="gpt-4o", messages=CHAT)
        assert t.successful_requests == 3
        assert (t.prompt_tokens, t.completion_tokens) == (1018, 115)
        gpt4o = Decimal("2.5") * 1000 / 1_000_000 + Decimal(10) * 100 / 1_000_000
        assert t.cost == gpt4_cost(18, 15) + gpt4o == Decimal("0.00494")
        assert t.by_model["gpt-4"].requests == 2 and t.by_model["gpt-4o"].requests == 1
        assert t.by_model["gpt-4o"].cost == Decimal("0.0035")


class TestChatStreams:
    """A streamed chat completion is counted once, exactly with include_usage and offline without."""

    def test_stream_with_usage_is_exact(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            stream = oai.chat.completions.create(
                model="gpt-4", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == JOKE
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 13
        call = assert_one_ok_call(t, model="gpt-4", endpoint="chat.completions", stream=True)
        assert call.estimated is False and t.estimated_requests == 0
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)
        assert t.cost == Decimal("0.00111")

    @pytest.mark.parametrize(("model", "encoding"), [("gpt-4", "cl100k_base"), ("gpt-4o", "o200k_base")])
    @pytest.mark.parametrize("chunks", [1, pytest.param(None, id="word-chunks")])
    def test_stream_without_usage_is_counted_offline(
        self, fake: FakeProvider, oai: openai.OpenAI, model: str, encoding: str, chunks: int | None
    ) -> None:
        # chunks=1: the whole text in one delta; None: one delta per word, as a proxy may send them.
        fake.add(Reply(text=ODD_TEXT, chunks=chunks))
        with llmtally.track() as t:
            stream = oai.chat.completions.create(model=model, messages=CHAT, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == ODD_TEXT
        assert "stream_options" not in fake.requests[0].json
        call = assert_one_ok_call(t, model=model, endpoint="chat.completions", stream=True)
        assert call.estimated is True and t.estimated_requests == 1
        expected = count_tokens(ODD_TEXT, encoding)
        assert expected != count_tokens(
            ODD_TEXT, "o200k_base" if encoding == "cl100k_base" else "cl100k_base"
        )
        assert t.completion_tokens == expected
        assert t.prompt_tokens > 0
        # The estimate is priced like any usage.
        assert t.cost == catalogue_price(
            model, "openai", input_tokens=t.prompt_tokens, output_tokens=t.completion_tokens
        )
        assert "Estimated Requests: 1" in str(t)

    async def test_async_stream_with_usage(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        async with llmtally.track() as t:
            stream = await aoai.chat.completions.create(
                model="gpt-4", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == JOKE
        assert_one_ok_call(t, model="gpt-4", endpoint="chat.completions", stream=True)
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (11, 13, Decimal("0.00111"))

    def test_streamed_tool_calls_are_counted_offline(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        args = {"query": "weather in Paris", "units": "metric"}
        fake.add(Reply(tool_calls=[ToolCall("search", args)]))
        with llmtally.track() as t:
            stream = oai.chat.completions.create(model="gpt-4", messages=CHAT, stream=True)
            pieces = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert pieces[0].function is not None and pieces[0].function.name == "search"
        assert json.loads("".join(p.function.arguments or "" for p in pieces if p.function)) == args
        assert t.calls[0].estimated is True
        assert t.completion_tokens == count_tokens("search", "cl100k_base") + count_tokens(
            json.dumps(args), "cl100k_base"
        )

    def test_early_close_settles_the_call(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        words = " ".join(f"word{i}" for i in range(200))
        fake.add(Reply(text=words, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            stream = oai.chat.completions.create(model="gpt-4", messages=CHAT, stream=True)
            got = []
            for chunk in stream:
                got.append(chunk)
                if len(got) == 2:
                    break
            stream.close()
            # Settled on close, inside the scope: no waiting for garbage collection.
            assert len(t.calls) == 1
        assert (t.successful_requests, t.failed_requests) == (1, 0)
        call = t.calls[0]
        assert call.stream is True and call.estimated is True
        assert 0 < t.completion_tokens <= count_tokens(words, "cl100k_base")

    def test_early_exit_from_with_block_settles_the_call(
        self, fake: FakeProvider, oai: openai.OpenAI
    ) -> None:
        fake.add(Reply(text=" ".join(["w"] * 100), prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            with oai.chat.completions.create(
                model="gpt-4", messages=CHAT, stream=True, stream_options={"include_usage": True}
            ) as stream:
                next(iter(stream))
        assert t.successful_requests == 1 and len(t.calls) == 1
        assert t.calls[0].stream is True

    async def test_async_early_close_settles_the_call(
        self, fake: FakeProvider, aoai: openai.AsyncOpenAI
    ) -> None:
        fake.add(Reply(text=" ".join(["w"] * 100)))
        async with llmtally.track() as t:
            stream = await aoai.chat.completions.create(model="gpt-4", messages=CHAT, stream=True)
            n = 0
            async for _ in stream:
                n += 1
                if n == 2:
                    break
            await stream.close()
        assert t.successful_requests == 1 and len(t.calls) == 1
        assert t.calls[0].estimated is True


class TestEmbeddings:
    """An embeddings call counts its prompt tokens; a model without a known price is reported, not guessed."""

    def test_embedding(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(prompt_tokens=7, embedding_dim=16))
        with llmtally.track() as t:
            r = oai.embeddings.create(model="text-embedding-3-small", input=["hello world", "good night"])
        assert [len(d.embedding) for d in r.data] == [16, 16]
        assert r.usage.prompt_tokens == 7
        call = assert_one_ok_call(t, model="text-embedding-3-small", endpoint="embeddings")
        assert call.usage is not None and (call.usage.prompt_tokens, call.usage.completion_tokens) == (7, 0)
        assert (t.prompt_tokens, t.completion_tokens, t.total_tokens) == (7, 0, 7)
        # Served from a host the catalogue does not know, in OpenAI's wire format: priced as
        # OpenAI's model ($0.02/M input tokens).
        assert call.cost == Decimal("0.02") * 7 / 1_000_000
        assert call.cost == catalogue_price("text-embedding-3-small", "openai", input_tokens=7)
        assert t.unpriced_requests == 0 and t.cost == call.cost

    def test_unknown_embedding_model_is_reported(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(prompt_tokens=7, embedding_dim=16))
        with llmtally.track() as t:
            oai.embeddings.create(model="acme-embed-v9", input=["hello world"])
        assert t.calls[0].cost is None
        assert t.unpriced_requests == 1
        assert t.cost == Decimal(0) and isinstance(t.cost, Decimal)
        assert t.unpriced_models == ["acme-embed-v9"]
        assert "Unpriced Requests: 1 (acme-embed-v9: price unknown" in str(t)
        assert str(t).endswith("Total Cost (USD): $0")


class TestResponsesAPI:
    """The Responses API is counted from its body and from response.completed, cached and reasoning too."""

    USAGE: ClassVar[dict[str, int]] = {
        "prompt_tokens": 1200,
        "cached_tokens": 1000,
        "completion_tokens": 300,
        "reasoning_tokens": 250,
    }

    def expected_cost(self) -> Decimal:
        # o4-mini: $1.10/M input, $0.275/M cached input, $4.40/M output (reasoning is output).
        by_hand = (200 * Decimal("1.10") + 1000 * Decimal("0.275") + 300 * Decimal("4.40")) / 1_000_000
        peer = catalogue_price(
            "o4-mini",
            "openai",
            input_tokens=1200,
            cache_read_tokens=1000,
            output_tokens=300,
            output_reasoning_tokens=250,
        )
        assert by_hand == peer
        return by_hand

    def check(self, t: llmtally.Tally, stream: bool) -> None:
        call = assert_one_ok_call(t, model="o4-mini", endpoint="responses", stream=stream)
        assert call.estimated is False
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens, t.reasoning_tokens) == (
            1200,
            1000,
            300,
            250,
        )
        assert t.cost == self.expected_cost() == Decimal("0.001815")
        assert "        Cached Tokens: 1000" in str(t) and "        Reasoning Tokens: 250" in str(t)

    def test_create(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text=JOKE, **self.USAGE))
        with llmtally.track() as t:
            r = oai.responses.create(model="o4-mini", input="tell me a joke")
        assert r.output_text == JOKE
        assert r.usage is not None and r.usage.output_tokens_details.reasoning_tokens == 250
        self.check(t, stream=False)

    def test_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text=JOKE, **self.USAGE))
        with llmtally.track() as t:
            with oai.responses.stream(model="o4-mini", input="tell me a joke") as stream:
                deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
                final = stream.get_final_response()
        assert "".join(deltas) == JOKE == final.output_text
        self.check(t, stream=True)

    async def test_async_create_stream(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        fake.add(Reply(text=JOKE, **self.USAGE))
        async with llmtally.track() as t:
            stream = await aoai.responses.create(model="o4-mini", input="tell me a joke", stream=True)
            types = [e.type async for e in stream]
        assert types[-1] == "response.completed"
        self.check(t, stream=True)


class TestLegacyCompletions:
    """The legacy completions endpoint is metered like chat, plain and streamed."""

    # gpt-3.5-turbo-instruct: $1.50/M input, $2/M output.
    def test_create(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text="Hello there", prompt_tokens=4, completion_tokens=2))
        with llmtally.track() as t:
            r = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hello")
        assert r.choices[0].text == "Hello there"
        assert_one_ok_call(t, model="gpt-3.5-turbo-instruct", endpoint="completions")
        assert (t.prompt_tokens, t.completion_tokens) == (4, 2)
        assert t.cost == (4 * Decimal("1.5") + 2 * Decimal(2)) / 1_000_000 == Decimal("0.00001")

    def test_stream_with_usage(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text="one two three", prompt_tokens=400, completion_tokens=300))
        with llmtally.track() as t:
            stream = oai.completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt="count",
                stream=True,
                stream_options={"include_usage": True},
            )
            text = "".join(c.choices[0].text for c in stream if c.choices)
        assert text == "one two three"
        assert_one_ok_call(t, model="gpt-3.5-turbo-instruct", endpoint="completions", stream=True)
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (400, 300, 0)
        assert t.cost == Decimal("0.0012")

    def test_stream_without_usage(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(text=ODD_TEXT))
        with llmtally.track() as t:
            stream = oai.completions.create(
                model="gpt-3.5-turbo-instruct", prompt="Say something odd", stream=True
            )
            text = "".join(c.choices[0].text for c in stream if c.choices)
        assert text == ODD_TEXT
        assert t.calls[0].estimated is True
        assert t.completion_tokens == count_tokens(ODD_TEXT, "cl100k_base")
        assert t.prompt_tokens == count_tokens("Say something odd", "cl100k_base")


class TestCachedAndReasoningPricing:
    """Cached input is priced at the cache-read rate and reasoning as output, as genai-prices prices them."""

    def test_cached_input(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(prompt_tokens=1000, cached_tokens=600, completion_tokens=200))
        with llmtally.track() as t:
            r = oai.chat.completions.create(model="gpt-4o", messages=CHAT)
        assert r.usage is not None and r.usage.prompt_tokens_details.cached_tokens == 600
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (1000, 600, 200)
        # gpt-4o: $2.50/M fresh input, $1.25/M cached input, $10/M output.
        by_hand = (400 * Decimal("2.5") + 600 * Decimal("1.25") + 200 * Decimal(10)) / 1_000_000
        assert t.cost == by_hand == Decimal("0.00375")
        assert t.cost == catalogue_price(
            "gpt-4o", "openai", input_tokens=1000, cache_read_tokens=600, output_tokens=200
        )

    def test_reasoning_output(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(prompt_tokens=50, completion_tokens=500, reasoning_tokens=400, cached_tokens=20))
        with llmtally.track() as t:
            oai.chat.completions.create(model="o3-mini", messages=CHAT)
        assert (t.prompt_tokens, t.completion_tokens, t.reasoning_tokens, t.cached_tokens) == (
            50,
            500,
            400,
            20,
        )
        # o3-mini: $1.10/M input, $0.55/M cached, $4.40/M output; reasoning is output, counted once.
        by_hand = (30 * Decimal("1.1") + 20 * Decimal("0.55") + 500 * Decimal("4.4")) / 1_000_000
        assert t.cost == by_hand == Decimal("0.002244")
        assert t.cost == catalogue_price(
            "o3-mini",
            "openai",
            input_tokens=50,
            cache_read_tokens=20,
            output_tokens=500,
            output_reasoning_tokens=400,
        )
        assert str(t).splitlines()[:6] == [
            "Tokens Used: 550",
            "    Prompt Tokens: 50",
            "        Cached Tokens: 20",
            "    Completion Tokens: 500",
            "        Reasoning Tokens: 400",
            "Successful Requests: 1",
        ]


class TestErrors:
    """Failed requests count as failed, cost nothing, and the SDK raises its own exception untouched."""

    @pytest.mark.parametrize(
        ("status", "exc"),
        [(429, openai.RateLimitError), (500, openai.InternalServerError), (400, openai.BadRequestError)],
    )
    def test_http_error(
        self, fake: FakeProvider, oai: openai.OpenAI, status: int, exc: type[Exception]
    ) -> None:
        fake.add(Reply(status=status, error=f"scripted failure {status}"))
        with llmtally.track() as t:
            with pytest.raises(exc) as info:
                oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert info.value.status_code == status  # type: ignore[attr-defined]
        assert f"scripted failure {status}" in str(info.value)
        assert (t.successful_requests, t.failed_requests) == (0, 1)
        assert (t.total_tokens, t.unpriced_requests) == (0, 0)
        assert t.cost == Decimal(0)
        call = t.calls[0]
        assert call.ok is False and call.status == status and call.cost == Decimal(0)
        assert call.usage is None and call.model == "gpt-4"
        assert "Failed Requests: 1" in str(t)
        assert t.by_model["gpt-4"].failed_requests == 1

    def test_error_on_a_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(status=429, error="slow down"))
        with llmtally.track() as t:
            with pytest.raises(openai.RateLimitError):
                oai.chat.completions.create(model="gpt-4", messages=CHAT, stream=True)
        assert (t.successful_requests, t.failed_requests, t.cost) == (0, 1, Decimal(0))

    def test_error_then_success(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.extend([Reply(status=500), Reply(prompt_tokens=11, completion_tokens=13)])
        with llmtally.track() as t:
            with pytest.raises(openai.InternalServerError):
                oai.chat.completions.create(model="gpt-4", messages=CHAT)
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert (t.successful_requests, t.failed_requests) == (1, 1)
        assert (t.total_tokens, t.cost) == (24, Decimal("0.00111"))

    def test_connection_failure(self) -> None:
        client = openai.OpenAI(base_url=dead_url() + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            with pytest.raises(openai.APIConnectionError):
                client.chat.completions.create(model="gpt-4", messages=CHAT)
        assert (t.successful_requests, t.failed_requests, t.total_tokens) == (0, 1, 0)
        call = t.calls[0]
        assert call.ok is False and call.status is None and call.cost == Decimal(0)
        assert call.error is not None and "ConnectError" in call.error

    async def test_async_connection_failure(self) -> None:
        client = openai.AsyncOpenAI(base_url=dead_url() + "/v1", api_key="sk-test", max_retries=0)
        async with llmtally.track() as t:
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(model="gpt-4", messages=CHAT)
        await client.close()
        assert (t.successful_requests, t.failed_requests) == (0, 1)


class TestUnknownModel:
    """A model without a price is counted, left out of the cost, named in str(), and warned about."""

    def test_unpriced(self, fake: FakeProvider, oai: openai.OpenAI, caplog: pytest.LogCaptureFixture) -> None:
        model = f"acme-private-{uuid.uuid4().hex[:8]}"
        fake.extend(
            [Reply(prompt_tokens=11, completion_tokens=13), Reply(prompt_tokens=11, completion_tokens=13)]
        )
        caplog.set_level(logging.WARNING, logger="llmtally")
        with llmtally.track() as t:
            oai.chat.completions.create(model=model, messages=CHAT)
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert (t.successful_requests, t.unpriced_requests) == (2, 1)
        assert (t.prompt_tokens, t.completion_tokens) == (22, 26)
        assert t.cost == Decimal("0.00111")  # only gpt-4
        assert t.by_model[model].cost is None and t.by_model[model].unpriced_requests == 1
        assert t.unpriced_models == [model]
        assert f"Unpriced Requests: 1 ({model}: price unknown, not in the total)" in str(t)
        warnings = [r for r in caplog.records if r.name == "llmtally" and r.levelno == logging.WARNING]
        assert any(model in r.getMessage() for r in warnings)


class TestAzure:
    """Azure deployments are recognised by path and priced by the model the response names."""

    def test_azure_deployment(self, fake: FakeProvider, url: str) -> None:
        client = openai.AzureOpenAI(
            azure_endpoint=url, api_key="azure-key", api_version="2024-10-21", max_retries=0
        )
        fake.add(Reply(model="gpt-4o-2024-08-06", text=JOKE, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            r = client.chat.completions.create(model="my-deploy", messages=CHAT)
        client.close()
        assert fake.requests[0].path == "/openai/deployments/my-deploy/chat/completions"
        assert r.choices[0].message.content == JOKE
        call = assert_one_ok_call(t, model="gpt-4o-2024-08-06", endpoint="chat.completions")
        assert call.requested_model == "my-deploy"
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)
        assert t.cost == (11 * Decimal("2.5") + 13 * Decimal(10)) / 1_000_000 == Decimal("0.0001575")
