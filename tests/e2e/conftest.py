"""End-to-end fixtures: the real SDKs over real loopback HTTP against ``llmtally.testing.FakeProvider``.

One loopback server serves each test module (starting one costs a thread and a socket); the
``fake`` fixture hands it to a test with an empty script and request log. Every client is built
with ``max_retries=0`` so an error reply is one request, and one counted call.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import anthropic
import genai_prices
import openai
import pytest
import quicktok

from llmtally.testing import FakeProvider

#: gpt-4 as priced by hand: $30 per million input tokens, $60 per million output tokens.
GPT4_INPUT = Decimal(30) / 1_000_000
GPT4_OUTPUT = Decimal(60) / 1_000_000

CHAT = [{"role": "user", "content": "tell me a joke"}]


def gpt4_cost(prompt: int, completion: int) -> Decimal:
    """gpt-4's price of a call, computed independently of llmtally and genai-prices."""
    return prompt * GPT4_INPUT + completion * GPT4_OUTPUT


def catalogue_price(model: str, provider: str, **usage: int) -> Decimal:
    """The peer computation: genai-prices' own ``calc_price`` (keys as in ``genai_prices.Usage``)."""
    return genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider).total_price


def count_tokens(text: str, encoding: str) -> int:
    """Tokens of ``text`` with a real BPE, independently of llmtally's tokenizer table."""
    return len(quicktok.get_encoding(encoding).encode_ordinary(text))


def dead_url() -> str:
    """A loopback URL with nothing listening: a port that was just bound and released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider()
    with provider.serve() as url:
        yield provider, url


@pytest.fixture
def fake(server: tuple[FakeProvider, str]) -> Iterator[FakeProvider]:
    provider, _ = server
    provider.reset()
    provider.handler = None
    yield provider
    provider.reset()
    provider.handler = None


@pytest.fixture
def url(server: tuple[FakeProvider, str], fake: FakeProvider) -> str:
    return server[1]


@pytest.fixture(scope="module")
def oai(server: tuple[FakeProvider, str]) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server[1] + "/v1", api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def aoai(server: tuple[FakeProvider, str]) -> AsyncIterator[openai.AsyncOpenAI]:
    # Async clients belong to one event loop: one per test.
    client = openai.AsyncOpenAI(base_url=server[1] + "/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def ant(server: tuple[FakeProvider, str]) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server[1], api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
async def aant(server: tuple[FakeProvider, str]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server[1], api_key="sk-ant-test", max_retries=0)
    yield client
    await client.close()
