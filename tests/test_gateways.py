"""Which provider a gateway, proxy or private deployment serves: configured by base URL, from the
environment, or read off a "vendor/model" name; and preflight budgets for models named in the URL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

import llmtally
from llmtally._core import gateways
from llmtally.testing import FakeProvider, Reply

GROQ_MODEL = "llama-3.3-70b-versatile"  # a name only Groq's price list knows


@pytest.fixture(autouse=True)
def no_mapping() -> Iterator[None]:
    llmtally.configure(providers={})
    yield
    llmtally.configure(providers={})


@pytest.fixture
def url() -> Iterator[str]:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=1000, completion_tokens=100))
    with fake.serve() as base:
        yield base


def chat(base_url: str, model: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def groq_price() -> Decimal:
    price = llmtally.cost_of(GROQ_MODEL, provider="groq", input_tokens=1000, output_tokens=100)
    assert price is not None and price > 0
    return price


class TestConfigured:
    def test_unknown_host_is_unpriced_until_mapped(self, url: str) -> None:
        with llmtally.track() as before:
            chat(url + "/v1", GROQ_MODEL)
        assert before.unpriced_requests == 1 and before.cost == 0
        llmtally.configure(providers={"127.0.0.1": "groq"})
        with llmtally.track() as after:
            chat(url + "/v1", GROQ_MODEL)
        assert after.unpriced_requests == 0 and after.cost == groq_price()
        assert after.calls[0].provider == "groq"

    def test_by_path_prefix_on_whole_segments(self, url: str) -> None:
        llmtally.configure(providers={url + "/groq": "groq", "127.0.0.1/groq/v1/x": "openai"})
        with llmtally.track() as t:
            chat(url + "/groq/v1", GROQ_MODEL)  # /groq matches
            chat(url + "/groqish/v1", GROQ_MODEL)  # /groq is not a segment of /groqish
        assert [c.provider for c in t.calls] == ["groq", "openai"]
        assert t.unpriced_requests == 1 and t.cost == groq_price()

    def test_bad_mappings_name_the_problem(self) -> None:
        with pytest.raises(ValueError, match="'nosuchprovider'"):
            llmtally.configure(providers={"gw.internal": "nosuchprovider"})
        with pytest.raises(ValueError, match="not a host"):
            llmtally.configure(providers={"https://": "openai"})
        with pytest.raises(ValueError, match="not base_url=provider"):
            gateways.parse("gw.internal", frozenset({"openai"}))
        llmtally.configure(providers={"gw.internal": "groq"})
        with pytest.raises(ValueError):
            llmtally.configure(providers={"gw.internal": "nosuchprovider"})
        assert gateways.provider_for("gw.internal", "/v1/chat/completions") == "groq"  # unchanged

    def test_environment(self, url: str) -> None:
        code = f"""
import openai, llmtally
with llmtally.track() as t:
    openai.OpenAI(base_url={url!r} + "/v1", api_key="sk-test", max_retries=0).chat.completions.create(
        model={GROQ_MODEL!r}, messages=[{{"role": "user", "content": "hi"}}])
print(t.calls[0].provider, t.cost)
"""
        env = {**os.environ, "LLMTALLY_PROVIDERS": " 127.0.0.1=groq , other.example=openai"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["groq", str(groq_price())]
        env["LLMTALLY_PROVIDERS"] = "127.0.0.1=nosuchprovider"
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "LLMTALLY_PROVIDERS" in out.stderr and "nosuchprovider" in out.stderr


class TestVendorPrefixedNames:
    def test_gateway_model_names_priced_as_their_vendor(self, url: str) -> None:
        with llmtally.track() as t:
            chat(url + "/v1", "anthropic/claude-sonnet-4")
        sonnet = llmtally.cost_of(
            "claude-sonnet-4", provider="anthropic", input_tokens=1000, output_tokens=100
        )
        assert t.unpriced_requests == 0 and t.cost == sonnet == Decimal("0.0045")


class TestPreflightWithModelInTheUrl:
    def test_bedrock_converse_refused_on_its_allowance(self) -> None:
        import boto3

        fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=10, completion_tokens=5))
        with fake.serve() as base:
            client = boto3.client(
                "bedrock-runtime",
                region_name="us-east-1",
                endpoint_url=base,
                aws_access_key_id="AKIAFAKE",
                aws_secret_access_key="x",
            )
            messages = [{"role": "user", "content": [{"text": "hi"}]}]
            with llmtally.track("agent", max_cost="0.01", preflight=True) as t:
                client.converse(
                    modelId="amazon.nova-pro-v1:0", messages=messages, inferenceConfig={"maxTokens": 100}
                )
                with pytest.raises(llmtally.BudgetExceeded) as refused:
                    # 4,000 output tokens at $3.20/M could cost $0.0128: past $0.01.
                    client.converse(
                        modelId="amazon.nova-pro-v1:0", messages=messages, inferenceConfig={"maxTokens": 4000}
                    )
        assert len(fake.requests) == 1 and t.successful_requests == 1
        assert refused.value.worst is not None and refused.value.worst > Decimal("0.0128")
