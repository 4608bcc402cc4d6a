"""Amazon Bedrock for real: boto3's bedrock-runtime client (botocore, on urllib3) and anthropic's
``AnthropicBedrock`` (httpx), over loopback HTTP against the fake provider's Bedrock runtime."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import genai_prices
import pytest
from botocore.config import Config

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

CLAUDE = "us.anthropic.claude-sonnet-4-20250514-v1:0"
NOVA = "amazon.nova-pro-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Capital of France?"}]}]
ANSWER = "Paris is the capital of France."


def cached_reply(req: object) -> Reply:
    """1,200 input tokens of which 1,000 read from the cache and 100 written to it; 80 output."""
    return Reply(
        text=ANSWER, prompt_tokens=1200, cached_tokens=1000, cache_write_tokens=100, completion_tokens=80
    )


def catalogue_price(model: str, usage: dict[str, Any]) -> Decimal:
    """What genai-prices' own ``aws`` extractor and calc_price make of the same Converse usage."""
    extracted = genai_prices.extract_usage({"model": model, "usage": usage}, provider_id="aws")
    return genai_prices.calc_price(extracted.usage, model, provider_id="aws").total_price


#: The usage the fake's Converse answer carries for ``cached_reply``.
CONVERSE_USAGE = {
    "inputTokens": 100,
    "outputTokens": 80,
    "cacheReadInputTokens": 1000,
    "cacheWriteInputTokens": 100,
}


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, Any]]:
    fake = FakeProvider(handler=cached_reply)
    with fake.serve() as url:
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=url,
            aws_access_key_id="AKIAFAKEFAKEFAKE",
            aws_secret_access_key="not-a-secret",
            config=Config(retries={"total_max_attempts": 1}),
        )
        yield fake, client


def check_cached(t: llmtally.Tally, model: str, n: int = 1) -> None:
    assert (t.successful_requests, t.failed_requests, t.estimated_requests) == (n, 0, 0)
    assert (t.prompt_tokens, t.cached_tokens, t.cache_write_tokens, t.completion_tokens) == (
        1200 * n,
        1000 * n,
        100 * n,
        80 * n,
    )
    assert t.unpriced_requests == 0 and t.cost == n * catalogue_price(model, CONVERSE_USAGE)
    assert all((c.provider, c.model, c.requested_model) == ("aws", model, model) for c in t.calls)


class TestConverse:
    """converse and converse_stream: Converse's usage, cache reads and writes, priced as genai-prices."""

    @pytest.mark.parametrize("model", [CLAUDE, NOVA])
    def test_converse(self, served: tuple[FakeProvider, Any], model: str) -> None:
        fake, client = served
        with llmtally.track() as t:
            r = client.converse(modelId=model, messages=MESSAGES)
        assert r["output"]["message"]["content"][0]["text"] == ANSWER
        assert r["usage"]["inputTokens"] == 100 and r["usage"]["cacheReadInputTokens"] == 1000
        assert fake.requests[0].path == f"/model/{model.replace(':', '%3A')}/converse"
        check_cached(t, model)
        assert t.calls[0].endpoint == "converse" and t.calls[0].stream is False

    def test_converse_stream(self, served: tuple[FakeProvider, Any]) -> None:
        _, client = served
        with llmtally.track() as t:
            r = client.converse_stream(modelId=CLAUDE, messages=MESSAGES)
            events = list(r["stream"])
        text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
        assert text == ANSWER and "metadata" in events[-1]
        check_cached(t, CLAUDE)
        assert t.calls[0].stream is True

    def test_stream_closed_early_counts_what_was_read(self, served: tuple[FakeProvider, Any]) -> None:
        _, client = served
        with llmtally.track() as t:
            stream = client.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]
            for event in stream:
                if "contentBlockDelta" in event:
                    break
            stream.close()
        assert t.successful_requests == 1 and t.estimated_requests == 1
        assert t.completion_tokens >= 1 and t.cost is not None and t.cost > 0

    def test_tool_use(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(
            tool_calls=[ToolCall("get_weather", {"city": "Paris"})], prompt_tokens=300, completion_tokens=40
        )
        with llmtally.track() as t:
            r = client.converse(modelId=NOVA, messages=MESSAGES)
        assert r["output"]["message"]["content"][0]["toolUse"]["input"] == {"city": "Paris"}
        assert (t.prompt_tokens, t.completion_tokens) == (300, 40)
        assert t.cost == catalogue_price(NOVA, {"inputTokens": 300, "outputTokens": 40})

    def test_one_hour_cache_writes(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(
            prompt_tokens=1000, cache_write_tokens=600, cache_write_1h_tokens=600, completion_tokens=10
        )
        with llmtally.track() as t:
            r = client.converse(modelId="global.anthropic.claude-sonnet-4-5-20250929-v1:0", messages=MESSAGES)
        assert r["usage"]["cacheDetails"] == [{"ttl": "1h", "inputTokens": 600}]
        assert (t.cache_write_tokens, t.calls[0].usage.cache_write_1h_tokens) == (600, 600)  # type: ignore[union-attr]
        # $3/M input, $6/M one-hour cache writes, $15/M output on the global profile.
        assert t.cost == (400 * 3 + 600 * 6 + 10 * 15) * Decimal("1e-6")


class TestInvokeModel:
    """invoke_model and its stream, in each family's own bodies; Bedrock's headers where they carry
    no usage."""

    @pytest.mark.parametrize(
        ("model", "body"),
        [
            ("anthropic.claude-3-5-sonnet-20240620-v1:0", {"anthropic_version": "bedrock-2023-05-31",
             "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
            ("meta.llama3-3-70b-instruct-v1:0", {"prompt": "hi"}),
            ("mistral.mistral-large-2402-v1:0", {"prompt": "<s>[INST] hi [/INST]"}),
            ("amazon.titan-text-express-v1", {"inputText": "hi"}),
            ("amazon.nova-pro-v1:0", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}),
        ],
    )  # fmt: skip
    def test_each_family(self, served: tuple[FakeProvider, Any], model: str, body: dict[str, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(text=ANSWER, prompt_tokens=120, completion_tokens=30)
        with llmtally.track() as t:
            r = client.invoke_model(modelId=model, body=json.dumps(body))
            answer = json.loads(r["body"].read())
            stream = client.invoke_model_with_response_stream(modelId=model, body=json.dumps(body))
            chunks = [json.loads(e["chunk"]["bytes"]) for e in stream["body"]]
        assert answer and chunks and "amazon-bedrock-invocationMetrics" in chunks[-1]
        assert (t.successful_requests, t.estimated_requests) == (2, 0)
        assert (t.prompt_tokens, t.completion_tokens) == (240, 60)
        assert [(c.endpoint, c.stream, c.model) for c in t.calls] == [
            ("invoke_model", False, model),
            ("invoke_model", True, model),
        ]
        assert t.cost == 2 * catalogue_price(model, {"inputTokens": 120, "outputTokens": 30})

    def test_headers_count_a_body_without_usage(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(text=ANSWER, prompt_tokens=57, completion_tokens=9)
        with llmtally.track() as t:
            r = client.invoke_model(modelId="mistral.mistral-large-2402-v1:0", body=b'{"prompt": "hi"}')
        assert "usage" not in json.loads(r["body"].read())
        headers = r["ResponseMetadata"]["HTTPHeaders"]
        assert headers["x-amzn-bedrock-input-token-count"] == "57"
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (57, 9, 0)

    def test_anthropic_stream_keeps_cache_lifetimes(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(
            prompt_tokens=1000, cache_write_tokens=600, cache_write_1h_tokens=600, completion_tokens=10
        )
        body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "messages": []}
        with llmtally.track() as t:
            stream = client.invoke_model_with_response_stream(
                modelId="global.anthropic.claude-sonnet-4-5-20250929-v1:0", body=json.dumps(body)
            )
            for _ in stream["body"]:
                pass
        assert t.calls[0].usage is not None and t.calls[0].usage.cache_write_1h_tokens == 600
        assert t.cost == (400 * 3 + 600 * 6 + 10 * 15) * Decimal("1e-6")


class TestFailures:
    def test_throttled_is_a_failed_call(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        fake.handler = lambda req: Reply(status=429, error="Too many requests")
        with (
            llmtally.track() as t,
            pytest.raises(botocore.exceptions.ClientError, match="ThrottlingException"),
        ):
            client.converse(modelId=CLAUDE, messages=MESSAGES)
        assert (t.successful_requests, t.failed_requests, t.cost) == (0, 1, 0)
        assert t.calls[0].model == CLAUDE and t.calls[0].status == 429

    def test_refused_before_sending(self, served: tuple[FakeProvider, Any]) -> None:
        fake, client = served
        with llmtally.track("agent", max_requests=1) as t:
            client.converse(modelId=CLAUDE, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                client.converse(modelId=CLAUDE, messages=MESSAGES)
            with pytest.raises(llmtally.BudgetExceeded):
                client.converse_stream(modelId=CLAUDE, messages=MESSAGES)
        assert len(fake.requests) == 1 and t.successful_requests == 1

    def test_garbled_event_stream(self, served: tuple[FakeProvider, Any]) -> None:
        """A stream that is not event-stream frames: botocore raises, llmtally counts the call
        without usage, and nothing of llmtally's reaches the caller."""
        fake, client = served
        fake.handler = lambda req: Reply(garbage=b"\x00\x00\x00\x10 this is not a frame at all")
        with llmtally.track() as t, pytest.raises(Exception) as raised:
            for _ in client.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]:
                pass
        assert "llmtally" not in type(raised.value).__module__
        assert t.successful_requests + t.failed_requests == 1 and t.calls[0].usage is not None


class TestAnthropicBedrock:
    """anthropic's AnthropicBedrock sends Messages bodies to InvokeModel over httpx."""

    def test_create_and_stream(self, served: tuple[FakeProvider, Any]) -> None:
        fake, _ = served
        url = fake.url
        client = anthropic.AnthropicBedrock(
            aws_access_key="AKIAFAKEFAKEFAKE",
            aws_secret_key="not-a-secret",
            aws_region="us-east-1",
            base_url=url,
            max_retries=0,
        )
        model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
        with llmtally.track() as t:
            msg = client.messages.create(
                model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            )
            with client.messages.stream(
                model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                stream.until_done()
        assert msg.content[0].text == ANSWER  # type: ignore[union-attr]
        assert [r.path.rsplit("/", 1)[1] for r in fake.requests] == ["invoke", "invoke-with-response-stream"]
        check_cached(t, model, n=2)
