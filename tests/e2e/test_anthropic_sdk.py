"""The real ``anthropic`` SDK over loopback HTTP: Messages, plain and streamed, with prompt caching."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import catalogue_price, count_tokens, dead_url

MODEL = "claude-sonnet-4-20250514"
MESSAGES = [{"role": "user", "content": "Say hello"}]
HELLO = "Hello! How can I help you today?"


def sonnet4(input_: int = 0, output: int = 0, cache_read: int = 0, cache_write: int = 0) -> Decimal:
    """Claude Sonnet 4 by hand: $3/M input, $15/M output, $0.30/M cache read, $3.75/M cache write (5 min)."""
    return (
        input_ * Decimal(3)
        + output * Decimal(15)
        + cache_read * Decimal("0.3")
        + cache_write * Decimal("3.75")
    ) / 1_000_000


def assert_one_ok_call(t: llmtally.Tally, *, stream: bool = False) -> llmtally.Call:
    assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
    call = t.calls[0]
    assert call.ok and call.status == 200
    assert call.provider == "anthropic" and call.endpoint == "messages"
    assert call.model == MODEL and call.requested_model == MODEL
    assert call.stream is stream and call.estimated is False
    return call


class TestMessages:
    """messages.create is counted with Anthropic's usage and priced; the caller's message is untouched."""

    def test_sync_create(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            msg = ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        assert msg.content[0].type == "text" and msg.content[0].text == HELLO
        assert (msg.usage.input_tokens, msg.usage.output_tokens) == (11, 13)
        assert_one_ok_call(t)
        assert (t.prompt_tokens, t.completion_tokens, t.total_tokens) == (11, 13, 24)
        assert t.cost == sonnet4(11, 13) == Decimal("0.000228")
        assert t.cost == catalogue_price(MODEL, "anthropic", input_tokens=11, output_tokens=13)

    async def test_async_create(self, fake: FakeProvider, aant: anthropic.AsyncAnthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=11, completion_tokens=13))
        async with llmtally.track() as t:
            msg = await aant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        assert msg.content[0].text == HELLO  # type: ignore[union-attr]
        assert_one_ok_call(t)
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (11, 13, Decimal("0.000228"))

    def test_tool_use(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(
            Reply(
                tool_calls=[ToolCall("get_weather", {"city": "Paris"})],
                prompt_tokens=300,
                completion_tokens=40,
            )
        )
        tools = [
            {"name": "get_weather", "description": "w", "input_schema": {"type": "object", "properties": {}}}
        ]
        with llmtally.track() as t:
            msg = ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, tools=tools)
        block = msg.content[0]
        assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
        assert msg.stop_reason == "tool_use"
        assert (t.prompt_tokens, t.completion_tokens) == (300, 40)
        assert t.cost == sonnet4(300, 40) == Decimal("0.0015")


class TestStreams:
    """A streamed message is counted once from message_start and message_delta, exactly."""

    def test_messages_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
        assert text == HELLO
        assert final.content[0].text == HELLO  # type: ignore[union-attr]
        assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 13)
        assert_one_ok_call(t, stream=True)
        # message_start reports 1 output token; the final message_delta's 13 must win, not add up.
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)
        assert t.cost == Decimal("0.000228")

    def test_get_final_message_without_iterating(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=20, completion_tokens=8))
        with llmtally.track() as t:
            with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                final = stream.get_final_message()
        assert final.content[0].text == HELLO  # type: ignore[union-attr]
        assert_one_ok_call(t, stream=True)
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (20, 8, sonnet4(20, 8))

    async def test_async_stream(self, fake: FakeProvider, aant: anthropic.AsyncAnthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=11, completion_tokens=13))
        async with llmtally.track() as t:
            async with aant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
        assert text == HELLO and final.usage.output_tokens == 13
        assert_one_ok_call(t, stream=True)
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (11, 13, Decimal("0.000228"))

    def test_early_close_settles_once(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(text=" ".join(f"w{i}" for i in range(100)), prompt_tokens=50, completion_tokens=100))
        with llmtally.track() as t:
            with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                for i, _ in enumerate(stream.text_stream):
                    if i == 5:
                        break
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
        assert t.calls[0].stream is True
        assert t.prompt_tokens == 50  # message_start's input count is final

    def test_early_close_counts_the_streamed_output(
        self, fake: FakeProvider, ant: anthropic.Anthropic
    ) -> None:
        fake.add(Reply(text=" ".join(f"w{i}" for i in range(100)), prompt_tokens=50, completion_tokens=100))
        seen: list[str] = []
        with llmtally.track() as t:
            with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                for piece in stream.text_stream:
                    seen.append(piece)
                    if len(seen) == 6:
                        break
        # The caller already holds six words, several tokens each; a count of 1 undercounts them.
        assert t.completion_tokens >= count_tokens("".join(seen), "o200k_base") > 1

    def test_raw_event_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(text=HELLO, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            events = list(ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES, stream=True))
        assert events[0].type == "message_start" and events[-1].type == "message_stop"
        assert_one_ok_call(t, stream=True)
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)


class TestPromptCaching:
    """Cache reads and writes are part of prompt_tokens and priced at their own rates."""

    def check(self, t: llmtally.Tally) -> None:
        assert (t.prompt_tokens, t.cached_tokens, t.cache_write_tokens, t.completion_tokens) == (
            1000,
            600,
            300,
            50,
        )
        expected = sonnet4(input_=100, output=50, cache_read=600, cache_write=300)
        assert expected == Decimal("0.002355")
        assert expected == catalogue_price(
            MODEL,
            "anthropic",
            input_tokens=1000,
            cache_read_tokens=600,
            cache_write_tokens=300,
            output_tokens=50,
        )
        assert t.cost == expected
        lines = str(t).splitlines()
        assert lines[:5] == [
            "Tokens Used: 1050",
            "    Prompt Tokens: 1000",
            "        Cached Tokens: 600",
            "        Cache Write Tokens: 300",
            "    Completion Tokens: 50",
        ]
        assert lines[-1] == "Total Cost (USD): $0.002355"

    def test_create(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(prompt_tokens=1000, cached_tokens=600, cache_write_tokens=300, completion_tokens=50))
        with llmtally.track() as t:
            msg = ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        # Anthropic's input_tokens excludes the cache parts.
        assert msg.usage.input_tokens == 100
        assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (600, 300)
        self.check(t)

    def test_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(prompt_tokens=1000, cached_tokens=600, cache_write_tokens=300, completion_tokens=50))
        with llmtally.track() as t:
            with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                stream.until_done()
        assert t.calls[0].stream is True
        self.check(t)

    def test_one_hour_cache_write(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(
            Reply(prompt_tokens=1000, cache_write_tokens=300, cache_write_1h_tokens=200, completion_tokens=50)
        )
        with llmtally.track() as t:
            ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        assert (t.prompt_tokens, t.cache_write_tokens) == (1000, 300)
        assert t.calls[0].usage is not None and t.calls[0].usage.cache_write_1h_tokens == 200
        # 700 fresh input at $3, 100 five-minute writes at $3.75, 200 one-hour writes at $6, 50 out at $15.
        by_hand = (700 * Decimal(3) + 100 * Decimal("3.75") + 200 * Decimal(6) + 50 * Decimal(15)) / 1_000_000
        assert t.cost == by_hand == Decimal("0.004425")
        assert t.cost == catalogue_price(
            MODEL,
            "anthropic",
            input_tokens=1000,
            cache_write_tokens=300,
            cache_write_1h_tokens=200,
            output_tokens=50,
        )


class TestErrors:
    """Anthropic errors count as failed requests at no cost, and the SDK raises its own exception."""

    @pytest.mark.parametrize(
        ("status", "exc"),
        [
            (429, anthropic.RateLimitError),
            (500, anthropic.InternalServerError),
            (529, anthropic.APIStatusError),
        ],
    )
    def test_http_error(
        self, fake: FakeProvider, ant: anthropic.Anthropic, status: int, exc: type[Exception]
    ) -> None:
        fake.add(Reply(status=status, error=f"scripted {status}"))
        with llmtally.track() as t:
            with pytest.raises(exc) as info:
                ant.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        assert info.value.status_code == status  # type: ignore[attr-defined]
        assert f"scripted {status}" in str(info.value)
        assert (t.successful_requests, t.failed_requests, t.total_tokens) == (0, 1, 0)
        assert t.cost == Decimal(0)
        assert t.calls[0].status == status and t.calls[0].ok is False
        assert t.calls[0].provider == "anthropic"

    def test_error_on_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        fake.add(Reply(status=529, error="Overloaded"))
        with llmtally.track() as t:
            with pytest.raises(anthropic.APIStatusError):
                with ant.messages.stream(model=MODEL, max_tokens=100, messages=MESSAGES) as stream:
                    stream.until_done()
        assert (t.successful_requests, t.failed_requests, t.cost) == (0, 1, Decimal(0))

    def test_connection_failure(self) -> None:
        client = anthropic.Anthropic(base_url=dead_url(), api_key="k", max_retries=0)
        with llmtally.track() as t:
            with pytest.raises(anthropic.APIConnectionError):
                client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
        client.close()
        assert (t.successful_requests, t.failed_requests) == (0, 1)
        assert t.calls[0].status is None and t.calls[0].cost == Decimal(0)


class TestVertex:
    """Claude on Vertex AI (``AnthropicVertex``): the model is in the URL, ``:rawPredict`` and
    ``:streamRawPredict``, and the bodies are Anthropic's; counted and priced as Claude."""

    VERTEX_MODEL = "claude-sonnet-4@20250514"

    def client(self, url: str) -> anthropic.AnthropicVertex:
        return anthropic.AnthropicVertex(
            region="us-east5",
            project_id="p",
            access_token="ya29.not-a-token",
            base_url=url + "/v1",
            max_retries=0,
        )

    def test_create_and_stream(self, fake: FakeProvider, url: str) -> None:
        fake.extend([Reply(prompt_tokens=1000, cached_tokens=600, completion_tokens=50)] * 2)
        client = self.client(url)
        with llmtally.track() as t:
            msg = client.messages.create(model=self.VERTEX_MODEL, max_tokens=100, messages=MESSAGES)
            with client.messages.stream(model=self.VERTEX_MODEL, max_tokens=100, messages=MESSAGES) as s:
                s.until_done()
        assert msg.usage.input_tokens == 400 and msg.model == self.VERTEX_MODEL
        assert [r.path.rsplit(":", 1)[1] for r in fake.requests] == ["rawPredict", "streamRawPredict"]
        assert all("model" not in (r.json or {}) for r in fake.requests)  # only the URL names it
        assert [(c.model, c.requested_model, c.stream) for c in t.calls] == [
            (self.VERTEX_MODEL, self.VERTEX_MODEL, False),
            (self.VERTEX_MODEL, self.VERTEX_MODEL, True),
        ]
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (2000, 1200, 100)
        assert t.cost == 2 * sonnet4(input_=400, output=50, cache_read=600) and t.unpriced_requests == 0

    def test_error_is_a_failed_call(self, fake: FakeProvider, url: str) -> None:
        fake.add(Reply(status=429, error="Quota exceeded"))
        with llmtally.track() as t, pytest.raises(anthropic.RateLimitError):
            self.client(url).messages.create(model=self.VERTEX_MODEL, max_tokens=100, messages=MESSAGES)
        assert (t.successful_requests, t.failed_requests) == (0, 1)
        assert t.calls[0].model == self.VERTEX_MODEL and t.calls[0].status == 429
