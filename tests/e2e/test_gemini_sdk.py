"""The google-genai SDK (Gemini API), for real, over loopback HTTP against the fake provider."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import genai_prices
import pytest
from google import genai
from google.genai import types

import llmtally
from llmtally.testing import FakeProvider, Reply

MODEL = "gemini-2.5-flash"


def thinking_reply(req: object) -> Reply:
    """1,200 prompt tokens of which 1,000 cached; 80 candidate tokens and 300 thoughts."""
    return Reply(
        text="Paris is the capital of France.",
        prompt_tokens=1200,
        completion_tokens=380,
        cached_tokens=1000,
        reasoning_tokens=300,
        model=MODEL,
    )


def catalogue_price() -> Decimal:
    """What genai-prices' own extractor and calc_price make of the same usageMetadata."""
    body = {"usageMetadata": {"promptTokenCount": 1200, "cachedContentTokenCount": 1000,
                              "candidatesTokenCount": 80, "thoughtsTokenCount": 300}}  # fmt: skip
    usage = genai_prices.extract_usage(body, provider_id="google").usage
    return genai_prices.calc_price(usage, MODEL, provider_id="google").total_price


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, genai.Client]]:
    fake = FakeProvider(handler=thinking_reply)
    with fake.serve() as url:
        yield fake, genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))


class TestGenerateContent:
    """generate_content and generate_content_stream, thoughts and cached content counted and priced."""

    def test_generate_content(self, served: tuple[FakeProvider, genai.Client]) -> None:
        _, client = served
        with llmtally.track() as t:
            r = client.models.generate_content(model=MODEL, contents="Capital of France?")
        assert r.text == "Paris is the capital of France." and r.usage_metadata is not None
        assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens, t.reasoning_tokens) == (
            1200,
            1000,
            380,
            300,
        )
        assert t.cost == catalogue_price() and t.unpriced_requests == 0
        call = t.calls[0]
        assert (call.provider, call.model, call.requested_model) == ("google", MODEL, MODEL)
        assert "AIza" not in repr(call) and "AIza" not in str(call.error)

    def test_stream(self, served: tuple[FakeProvider, genai.Client]) -> None:
        fake, client = served
        with llmtally.track() as t:
            text = "".join(
                c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="Capital?")
            )
        assert text == "Paris is the capital of France."
        assert fake.requests[0].query.get("alt") == "sse"
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (1200, 380, 0)
        assert t.calls[0].stream and t.cost == catalogue_price()

    def test_error_is_a_failed_request(self, served: tuple[FakeProvider, genai.Client]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(status=429, error="quota")
        with llmtally.track() as t, pytest.raises(Exception, match=r"quota|RESOURCE_EXHAUSTED|429"):
            client.models.generate_content(
                model=MODEL,
                contents="x",
                config=types.GenerateContentConfig(http_options=types.HttpOptions(retry_options=None)),
            )
        assert t.failed_requests >= 1 and t.successful_requests == 0 and t.cost == 0

    def test_refused_before_sending(self, served: tuple[FakeProvider, genai.Client]) -> None:
        fake, client = served
        with llmtally.track("agent", max_requests=1) as t:
            client.models.generate_content(model=MODEL, contents="x")
            with pytest.raises(llmtally.BudgetExceeded):
                client.models.generate_content(model=MODEL, contents="x")
        assert len(fake.requests) == 1 and t.successful_requests == 1


class TestAsync:
    """google-genai's async client runs on aiohttp when it is installed: metered the same."""

    async def test_generate_content_async(self) -> None:
        fake = FakeProvider(handler=thinking_reply)
        with fake.serve() as url:
            client = genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))
            async with llmtally.track() as t:
                r = await client.aio.models.generate_content(model=MODEL, contents="Capital of France?")
                chunks = [
                    c
                    async for c in await client.aio.models.generate_content_stream(model=MODEL, contents="x")
                ]
            await client.aio.aclose()
        assert r.text == "Paris is the capital of France." and chunks
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 2400, 760)
        assert t.cost == 2 * catalogue_price()


EMBED_MODEL = "gemini-embedding-001"


def embedding_price(tokens: int, model: str = EMBED_MODEL) -> Decimal:
    usage = genai_prices.Usage(input_tokens=tokens)
    return genai_prices.calc_price(usage, model, provider_id="google").total_price


class TestEmbeddings:
    """embed_content: :batchEmbedContents on the Gemini API; :embedContent, :batchEmbedContents and
    :predict on Vertex AI (express mode, an API key); each counted once and priced."""

    def test_gemini_api_batch(self) -> None:
        fake = FakeProvider([Reply(prompt_tokens=12)])
        with fake.serve() as url:
            client = genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))
            with llmtally.track() as t:
                r = client.models.embed_content(model=EMBED_MODEL, contents=["one two", "three four five"])
        assert fake.requests[0].path.endswith(f"/models/{EMBED_MODEL}:batchEmbedContents")
        assert r.embeddings is not None and len(r.embeddings) == 2
        assert (t.requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (1, 12, 0, 0)
        call = t.calls[0]
        assert (call.provider, call.endpoint, call.model) == ("google", "embeddings", EMBED_MODEL)
        assert t.cost == embedding_price(12) and t.cost > 0

    def test_without_usage_is_counted_offline(self) -> None:
        fake = FakeProvider([Reply(include_usage=False)])
        with fake.serve() as url:
            client = genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))
            with llmtally.track() as t:
                client.models.embed_content(model=EMBED_MODEL, contents="the quick brown fox jumps")
        assert t.requests == 1 and t.estimated_requests == 1
        assert 4 <= t.prompt_tokens <= 8 and t.cost == embedding_price(t.prompt_tokens)

    @pytest.mark.parametrize(
        ("model", "contents", "verb"),
        [
            (EMBED_MODEL, "one two three", ":embedContent"),
            (EMBED_MODEL, ["one two", "three"], ":batchEmbedContents"),
            ("text-embedding-005", ["one two", "three"], ":predict"),
        ],
    )
    async def test_vertex(self, model: str, contents: str | list[str], verb: str) -> None:
        fake = FakeProvider()
        with fake.serve() as url:
            client = genai.Client(
                vertexai=True, api_key="AQ-not-a-real-key", http_options=types.HttpOptions(base_url=url)
            )
            with llmtally.track() as t:
                r = client.models.embed_content(model=model, contents=contents)
            async with llmtally.track() as async_t:
                await client.aio.models.embed_content(model=model, contents=contents)
            await client.aio.aclose()
        assert [r.path for r in fake.requests] == [f"/v1beta1/publishers/google/models/{model}{verb}"] * 2
        assert r.embeddings is not None and len(r.embeddings) == (1 if isinstance(contents, str) else 2)
        assert (t.requests, t.prompt_tokens, t.estimated_requests) == (1, 3, 0)
        assert t.calls[0].model == model and t.calls[0].endpoint == "embeddings"
        assert (async_t.requests, async_t.prompt_tokens) == (1, 3)

    def test_refused_before_sending(self) -> None:
        fake = FakeProvider()
        with fake.serve() as url:
            client = genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))
            with llmtally.track(max_requests=0), pytest.raises(llmtally.BudgetExceeded):
                client.models.embed_content(model=EMBED_MODEL, contents="x")
        assert fake.requests == []
