"""LangChain's ChatOpenAI and agents over loopback HTTP, and ``get_openai_callback`` as a drop-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

import llmtally
from llmtally import get_openai_callback
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import count_tokens, gpt4_cost

JOKE = "Why did the chicken cross the road? To get to the other side."


@pytest.fixture
def llm(url: str) -> ChatOpenAI:
    return ChatOpenAI(model="gpt-4", base_url=url + "/v1", api_key="sk-test", max_retries=0)  # type: ignore[arg-type]


@pytest.fixture
async def allm(url: str) -> AsyncIterator[ChatOpenAI]:
    # langchain-openai caches one default async client per base URL, bound to the first event loop
    # that used it; each async test brings its own.
    client = openai.DefaultAsyncHttpxClient()
    yield ChatOpenAI(
        model="gpt-4",
        base_url=url + "/v1",
        api_key="sk-test",
        max_retries=0,
        http_async_client=client,  # type: ignore[arg-type]
    )
    await client.aclose()


class TestChatOpenAI:
    """ChatOpenAI calls are counted exactly; the AIMessage the caller gets is the server's answer."""

    def test_invoke(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            msg = llm.invoke("Tell me a joke")
        assert isinstance(msg, AIMessage) and msg.content == JOKE
        assert msg.usage_metadata is not None and msg.usage_metadata["total_tokens"] == 24
        assert (t.prompt_tokens, t.completion_tokens, t.successful_requests) == (11, 13, 1)
        assert t.cost == Decimal("0.00111")
        assert t.calls[0].model == "gpt-4" and t.calls[0].stream is False

    async def test_ainvoke(self, fake: FakeProvider, allm: ChatOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        async with llmtally.track() as t:
            msg = await allm.ainvoke("Tell me a joke")
        assert msg.content == JOKE
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (11, 13, Decimal("0.00111"))

    def test_stream_with_usage(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        with llmtally.track() as t:
            chunks = list(llm.stream("Tell me a joke", stream_usage=True))
        assert all(isinstance(c, AIMessageChunk) for c in chunks)
        assert "".join(str(c.content) for c in chunks) == JOKE
        assert fake.requests[0].json["stream_options"] == {"include_usage": True}
        assert t.calls[0].stream is True and t.calls[0].estimated is False
        assert (t.prompt_tokens, t.completion_tokens, t.cost) == (11, 13, Decimal("0.00111"))

    def test_stream_without_usage_is_estimated(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        fake.add(Reply(text=JOKE, chunks=1))
        with llmtally.track() as t:
            text = "".join(str(c.content) for c in llm.stream("Tell me a joke"))
        assert text == JOKE
        # langchain-openai leaves include_usage off when base_url is set.
        assert "stream_options" not in fake.requests[0].json
        assert t.calls[0].estimated is True and t.estimated_requests == 1
        assert t.completion_tokens == count_tokens(JOKE, "cl100k_base")
        assert t.prompt_tokens > 0
        assert t.cost == gpt4_cost(t.prompt_tokens, t.completion_tokens)

    def test_batch_of_three_in_a_thread_pool(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        fake.add_many(Reply(text="ok", prompt_tokens=11, completion_tokens=13), 3)
        with llmtally.track() as t:
            out = llm.batch(["a", "b", "c"])
        assert [m.content for m in out] == ["ok", "ok", "ok"]
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (3, 33, 39)
        assert t.cost == 3 * Decimal("0.00111") == Decimal("0.00333")

    async def test_abatch(self, fake: FakeProvider, allm: ChatOpenAI) -> None:
        fake.add_many(Reply(text="ok", prompt_tokens=11, completion_tokens=13), 3)
        async with llmtally.track() as t:
            await allm.abatch(["a", "b", "c"])
        assert (t.successful_requests, t.total_tokens, t.cost) == (3, 72, Decimal("0.00333"))


class TestAgent:
    """A LangChain agent's model calls are all counted: two tool rounds and the answer."""

    def test_create_agent_two_tool_calls(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        ran: list[tuple[str, Any]] = []

        @tool
        def add(a: int, b: int) -> int:
            """Add two integers."""
            ran.append(("add", (a, b)))
            return a + b

        @tool
        def multiply(a: int, b: int) -> int:
            """Multiply two integers."""
            ran.append(("multiply", (a, b)))
            return a * b

        from langchain.agents import create_agent

        fake.extend(
            [
                Reply(
                    tool_calls=[ToolCall("add", {"a": 2, "b": 3})], prompt_tokens=120, completion_tokens=20
                ),
                Reply(
                    tool_calls=[ToolCall("multiply", {"a": 5, "b": 7})],
                    prompt_tokens=160,
                    completion_tokens=22,
                ),
                Reply(text="The answer is 35.", prompt_tokens=200, completion_tokens=8),
            ]
        )
        agent = create_agent(llm, [add, multiply])
        with llmtally.track("agent") as t:
            result = agent.invoke({"messages": [{"role": "user", "content": "What is (2+3)*7?"}]})
        assert ran == [("add", (2, 3)), ("multiply", (5, 7))]
        messages = result["messages"]
        assert messages[-1].content == "The answer is 35."
        assert [m.content for m in messages if isinstance(m, ToolMessage)] == ["5", "35"]
        assert len(fake.requests) == 3
        assert t.successful_requests == 3
        assert (t.prompt_tokens, t.completion_tokens, t.total_tokens) == (480, 50, 530)
        assert t.cost == gpt4_cost(480, 50) == Decimal("0.0174")
        assert [c.scope_path for c in t.calls] == [("agent",)] * 3


class TestGetOpenAICallback:
    """llmtally's get_openai_callback is a drop-in for LangChain's: same attributes, same printout."""

    def test_drop_in(self, fake: FakeProvider, llm: ChatOpenAI) -> None:
        fake.add(Reply(text=JOKE, prompt_tokens=11, completion_tokens=13))
        with get_openai_callback() as cb:
            llm.invoke("Tell me a joke")
        assert str(cb) == (
            "Tokens Used: 24\n"
            "    Prompt Tokens: 11\n"
            "    Completion Tokens: 13\n"
            "Successful Requests: 1\n"
            "Total Cost (USD): $0.00111"
        )
        assert (cb.total_tokens, cb.prompt_tokens, cb.completion_tokens) == (24, 11, 13)
        assert cb.successful_requests == 1
        assert cb.total_cost == 0.00111
        assert cb.prompt_tokens_cached == 0
