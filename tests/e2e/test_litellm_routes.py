"""LiteLLM's ``gemini/`` and ``bedrock/`` routes (its own HTTP calls over httpx, not the providers'
SDKs), for real against the fake provider: counted and priced as the SDKs' calls are."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: its bundled prices

from decimal import Decimal
from typing import Any

import litellm
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply

pytestmark = pytest.mark.filterwarnings("ignore:Items? '.*ReadOnly:UserWarning")
if hasattr(litellm, "telemetry"):
    litellm.telemetry = False

MESSAGES = [{"role": "user", "content": "Capital of France?"}]
AWS = {
    "aws_access_key_id": "AKIAFAKEFAKEFAKE",
    "aws_secret_access_key": "not-a-secret",
    "aws_region_name": "us-east-1",
}


def reply(req: object) -> Reply:
    return Reply(text="Paris.", prompt_tokens=1200, cached_tokens=1000, completion_tokens=80)


@pytest.fixture
def url() -> Any:
    fake = FakeProvider(handler=reply)
    with fake.serve() as base:
        yield base


def drain(response: Any) -> None:
    for _ in response:
        pass


def check(t: llmtally.Tally, provider: str, model: str, cost: Decimal, n: int = 2) -> None:
    assert (t.successful_requests, t.estimated_requests, t.unpriced_requests) == (n, 0, 0)
    assert (t.prompt_tokens, t.cached_tokens, t.completion_tokens) == (1200 * n, 1000 * n, 80 * n)
    assert [c.stream for c in t.calls] == [False, True][:n]
    assert all((c.provider, c.model) == (provider, model) for c in t.calls)
    assert t.cost == n * cost


class TestGeminiRoute:
    def test_completion_and_stream(self, url: str) -> None:
        kw: dict[str, Any] = {
            "model": "gemini/gemini-2.5-flash",
            "messages": MESSAGES,
            "api_base": url + "/v1beta",
        }
        with llmtally.track() as t:
            r = litellm.completion(**kw, api_key="AIza-not-a-key")
            drain(litellm.completion(**kw, api_key="AIza-not-a-key", stream=True))
        assert r.usage.prompt_tokens == 1200
        # gemini-2.5-flash: $0.30/M input, $0.03/M cached, $2.50/M output.
        check(
            t,
            "google",
            "gemini-2.5-flash",
            (200 * Decimal("0.3") + 1000 * Decimal("0.03") + 80 * Decimal("2.5")) / 10**6,
        )
        assert all("AIza" not in repr(c) for c in t.calls)

    async def test_async(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        import aiohttp

        kw: dict[str, Any] = {
            "model": "gemini/gemini-2.5-flash",
            "messages": MESSAGES,
            "api_base": url + "/v1beta",
        }
        # LiteLLM's async httpx client runs on its aiohttp transport: two hooked clients, one call.
        sent: list[str] = []
        request = aiohttp.ClientSession._request

        async def spy(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
            sent.append(str(str_or_url))
            return await request(self, method, str_or_url, **kwargs)

        monkeypatch.setattr(aiohttp.ClientSession, "_request", spy)
        async with llmtally.track() as t:
            await litellm.acompletion(**kw, api_key="AIza-not-a-key")
        assert len(sent) == 1 and ":generateContent" in sent[0]
        assert (t.requests, t.successful_requests, t.prompt_tokens, t.completion_tokens) == (1, 1, 1200, 80)


class TestBedrockRoute:
    MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
    # Claude Sonnet 4: $3/M input, $0.30/M cache reads, $15/M output.
    COST = (200 * 3 + 1000 * Decimal("0.3") + 80 * 15) / Decimal(10**6)

    def test_converse_and_stream(self, url: str) -> None:
        kw: dict[str, Any] = {
            "model": "bedrock/" + self.MODEL,
            "messages": MESSAGES,
            "aws_bedrock_runtime_endpoint": url,
        }
        with llmtally.track() as t:
            r = litellm.completion(**kw, **AWS)
            drain(litellm.completion(**kw, **AWS, stream=True))
        assert r.usage.prompt_tokens == 1200
        check(t, "aws", self.MODEL, self.COST)
        assert [c.endpoint for c in t.calls] == ["converse", "converse"]

    def test_invoke_route(self, url: str) -> None:
        model = "anthropic.claude-sonnet-4-20250514-v1:0"
        kw: dict[str, Any] = {
            "model": "bedrock/invoke/" + model,
            "messages": MESSAGES,
            "aws_bedrock_runtime_endpoint": url,
        }
        with llmtally.track() as t:
            litellm.completion(**kw, **AWS)
            drain(litellm.completion(**kw, **AWS, stream=True))
        check(t, "aws", model, self.COST)
        assert [c.endpoint for c in t.calls] == ["invoke_model", "invoke_model"]

    async def test_async_and_refused(self, url: str) -> None:
        kw: dict[str, Any] = {
            "model": "bedrock/" + self.MODEL,
            "messages": MESSAGES,
            "aws_bedrock_runtime_endpoint": url,
        }
        async with llmtally.track("agent", max_requests=1) as t:
            await litellm.acompletion(**kw, **AWS)
            with pytest.raises(llmtally.BudgetExceeded):
                await litellm.acompletion(**kw, **AWS)
        assert (t.successful_requests, t.prompt_tokens) == (1, 1200)
