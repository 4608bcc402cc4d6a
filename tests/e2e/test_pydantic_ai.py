"""pydantic-ai agents, for real, over loopback HTTP: OpenAIChatModel and AnthropicModel runs counted
exactly, tool-calling runs adding up to the fake's replies, and budgets stopping an agent mid-run.

pydantic-ai computes its own cost from genai-prices (``result.usage.cost``); it is one more peer
figure for llmtally's, beside genai-prices' ``calc_price`` on the usage the fake reported.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import catalogue_price

GPT = "gpt-4o"
CLAUDE = "claude-sonnet-4-6"
ANSWER = "Paris is the capital of France."
PROMPT = "What is the capital of France?"


def openai_model(url: str) -> OpenAIChatModel:
    return OpenAIChatModel(GPT, provider=OpenAIProvider(base_url=url + "/v1", api_key="sk-test"))


def anthropic_model(url: str) -> AnthropicModel:
    return AnthropicModel(CLAUDE, provider=AnthropicProvider(base_url=url, api_key="sk-ant-test"))


def make_model(kind: str, url: str) -> Any:
    return openai_model(url) if kind == "openai" else anthropic_model(url)


#: The endpoint, provider and model each kind of model calls.
SERVED = {"openai": ("chat.completions", "openai", GPT), "anthropic": ("messages", "anthropic", CLAUDE)}


def cached_reply() -> Reply:
    """1,200 input tokens: 1,000 read from the cache, 100 written to it; 80 output tokens."""
    return Reply(
        text=ANSWER, prompt_tokens=1200, cached_tokens=1000, cache_write_tokens=100, completion_tokens=80
    )


def cached_cost(kind: str) -> Decimal:
    """The price of ``cached_reply`` by hand, checked against genai-prices' calc_price."""
    if kind == "openai":
        # gpt-4o: $2.50/M input, $1.25/M cached input, $10/M output; no cache-write price, so the
        # 100 tokens written are plain input.
        by_hand = (200 * Decimal("2.5") + 1000 * Decimal("1.25") + 80 * Decimal(10)) / 1_000_000
        peer = catalogue_price(
            GPT, "openai", input_tokens=1200, cache_read_tokens=1000, cache_write_tokens=100, output_tokens=80
        )
    else:
        # claude-sonnet-4-6: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
        by_hand = (
            100 * Decimal(3) + 1000 * Decimal("0.3") + 100 * Decimal("3.75") + 80 * Decimal(15)
        ) / 1_000_000
        peer = catalogue_price(
            CLAUDE,
            "anthropic",
            input_tokens=1200,
            cache_read_tokens=1000,
            cache_write_tokens=100,
            output_tokens=80,
        )
    assert by_hand == peer
    return by_hand


def check_one_cached_call(t: llmtally.Tally, kind: str, fake: FakeProvider) -> llmtally.Call:
    assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
    call = t.calls[0]
    endpoint, provider, model = SERVED[kind]
    assert (call.endpoint, call.provider, call.model) == (endpoint, provider, model)
    assert call.ok and call.estimated is False
    assert call.stream is fake.requests[0].stream
    assert (t.prompt_tokens, t.cached_tokens, t.cache_write_tokens, t.completion_tokens) == (
        1200,
        1000,
        100,
        80,
    )
    assert t.cost == call.cost == cached_cost(kind)
    assert t.unpriced_requests == 0
    return call


class TestRuns:
    """run_sync, run, run_stream and run_stream_sync: one request each, counted once, exactly."""

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    def test_run_sync(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.add(cached_reply())
        agent = Agent(make_model(kind, url))
        with llmtally.track("agent") as t:
            result = agent.run_sync(PROMPT)
        assert result.output == ANSWER
        check_one_cached_call(t, kind, fake)
        assert result.usage.requests == 1 and result.usage.cost == t.cost
        assert fake.requests[0].model == SERVED[kind][2]

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    async def test_run(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.add(cached_reply())
        agent = Agent(make_model(kind, url))
        async with llmtally.track() as t:
            result = await agent.run(PROMPT)
        assert result.output == ANSWER
        check_one_cached_call(t, kind, fake)
        assert result.usage.cost == t.cost

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    async def test_run_stream(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.add(cached_reply())
        agent = Agent(make_model(kind, url))
        async with llmtally.track() as t:
            async with agent.run_stream(PROMPT) as run:
                text = "".join([piece async for piece in run.stream_text(delta=True)])
        assert text == ANSWER
        assert fake.requests[0].stream is True
        call = check_one_cached_call(t, kind, fake)
        assert call.stream is True
        assert run.usage.cost == t.cost

    def test_run_stream_sync(self, fake: FakeProvider, url: str) -> None:
        fake.add(cached_reply())
        agent = Agent(openai_model(url))
        with llmtally.track() as t:
            run = agent.run_stream_sync(PROMPT)
            text = "".join(run.stream_text(delta=True))
        assert text == ANSWER
        # pydantic-ai asks for the usage chunk, so the stream is exact, not an estimate.
        assert fake.requests[0].json["stream_options"] == {"include_usage": True}
        assert check_one_cached_call(t, "openai", fake).stream is True


#: The two replies of a tool-calling run: a tool call, then the answer.
TOOL_TURN = Reply(tool_calls=[ToolCall("weather", {"city": "Paris"})], prompt_tokens=40, completion_tokens=17)
FINAL_TURN = Reply(text="It is sunny in Paris.", prompt_tokens=60, completion_tokens=5)


def weather_agent(model: Any, seen: list[str]) -> Agent[None, str]:
    agent = Agent(model)

    @agent.tool_plain
    def weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"sunny in {city}"

    return agent


def turn_cost(kind: str, prompt: int, completion: int) -> Decimal:
    _, provider, model = SERVED[kind]
    return catalogue_price(model, provider, input_tokens=prompt, output_tokens=completion)


class TestToolCalling:
    """A run that calls a tool is two requests; its total is the sum of the fake's two replies."""

    def check(self, t: llmtally.Tally, kind: str, fake: FakeProvider, seen: list[str]) -> None:
        assert seen == ["Paris"]
        assert len(fake.requests) == 2 and fake.pending == 0
        assert "sunny in Paris" in fake.requests[1].body.decode()  # the tool's result went back
        assert (t.successful_requests, len(t.calls)) == (2, 2)
        assert [(c.usage.prompt_tokens, c.usage.completion_tokens) for c in t.calls if c.usage] == [
            (40, 17),
            (60, 5),
        ]
        assert {(c.provider, c.model) for c in t.calls} == {SERVED[kind][1:]}
        assert (t.prompt_tokens, t.completion_tokens) == (100, 22)
        expected = turn_cost(kind, 40, 17) + turn_cost(kind, 60, 5)
        assert [c.cost for c in t.calls] == [turn_cost(kind, 40, 17), turn_cost(kind, 60, 5)]
        assert t.cost == expected and t.estimated_requests == 0

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    def test_run_sync(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.extend([TOOL_TURN, FINAL_TURN])
        seen: list[str] = []
        with llmtally.track() as t:
            result = weather_agent(make_model(kind, url), seen).run_sync("Weather in Paris?")
        assert result.output == "It is sunny in Paris."
        self.check(t, kind, fake, seen)
        assert result.usage.requests == 2 and result.usage.tool_calls == 1
        assert (result.usage.input_tokens, result.usage.output_tokens) == (100, 22)
        assert result.usage.cost == t.cost

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    async def test_run_stream(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.extend([TOOL_TURN, FINAL_TURN])
        seen: list[str] = []
        async with llmtally.track() as t:
            async with weather_agent(make_model(kind, url), seen).run_stream("Weather in Paris?") as run:
                output = await run.get_output()
        assert output == "It is sunny in Paris."
        assert [q.stream for q in fake.requests] == [True, True]
        self.check(t, kind, fake, seen)


class TestBudgets:
    """``track(max_requests=1)`` lets the agent's first request go and refuses its second, unsent;
    BudgetExceeded reaches the caller as itself (a BaseException: pydantic-ai neither retries nor
    wraps it)."""

    @pytest.mark.parametrize("kind", ["openai", "anthropic"])
    def test_second_request_refused(self, fake: FakeProvider, url: str, kind: str) -> None:
        fake.extend([TOOL_TURN, FINAL_TURN])
        seen: list[str] = []
        agent = weather_agent(make_model(kind, url), seen)
        with llmtally.track("agent", max_requests=1) as t:
            with pytest.raises(llmtally.BudgetExceeded) as refused:
                agent.run_sync("Weather in Paris?")
        assert type(refused.value) is llmtally.BudgetExceeded
        assert seen == ["Paris"]  # the tool ran; the request carrying its result was not sent
        assert len(fake.requests) == 1 and fake.pending == 1
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
        assert t.cost == turn_cost(kind, 40, 17)

    async def test_run_stream_refused(self, fake: FakeProvider, url: str) -> None:
        fake.extend([TOOL_TURN, FINAL_TURN])
        seen: list[str] = []
        agent = weather_agent(openai_model(url), seen)
        async with llmtally.track(max_requests=1) as t:
            with pytest.raises(llmtally.BudgetExceeded) as refused:
                async with agent.run_stream("Weather in Paris?") as run:
                    await run.get_output()
        assert type(refused.value) is llmtally.BudgetExceeded
        assert len(fake.requests) == 1 and seen == ["Paris"]
        assert t.successful_requests == 1 and t.cost == turn_cost("openai", 40, 17)

    def test_parallel_sub_agents_refused_as_itself(self, fake: FakeProvider, url: str) -> None:
        # Two tool calls in one turn run concurrently; each runs a sub-agent whose request is
        # refused. Two BaseExceptions from concurrent tasks must not come back as an exception group.
        fake.add(
            Reply(
                tool_calls=[
                    ToolCall("research", {"topic": "cheese"}),
                    ToolCall("research", {"topic": "wine"}),
                ],
                prompt_tokens=40,
                completion_tokens=17,
            )
        )
        model = openai_model(url)
        sub_agent = Agent(model)
        agent = Agent(model)
        started: list[str] = []

        @agent.tool_plain
        async def research(topic: str) -> str:
            """Research a topic with a sub-agent."""
            started.append(topic)
            return (await sub_agent.run(topic)).output

        with llmtally.track(max_requests=1) as t:
            with pytest.raises(llmtally.BudgetExceeded) as refused:
                agent.run_sync("Plan a French dinner.")
        assert type(refused.value) is llmtally.BudgetExceeded
        assert sorted(started) == ["cheese", "wine"]
        assert len(fake.requests) == 1
        assert (t.successful_requests, len(t.calls)) == (1, 1) and t.cost == turn_cost("openai", 40, 17)
