"""Every billable unit a response reports, read and priced as genai-prices' own extractor and
``calc_price`` read and price the same body: web searches, thinking, audio, image, xAI's reasoning."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import genai_prices
import pytest

import llmtally
from llmtally._core.usage import Usage
from llmtally._pricing import price_usage
from llmtally.wire.anthropic import Messages
from llmtally.wire.gemini import GenerateContent
from llmtally.wire.openai import ChatCompletions


def theirs(body: dict[str, Any], model: str, provider: str, flavor: str = "default") -> Decimal:
    extracted = genai_prices.extract_usage(body, provider_id=provider, api_flavor=flavor)
    return genai_prices.calc_price(extracted.usage, model, provider_id=provider).total_price


def ours(usage: Usage | None, model: str, provider: str) -> Decimal:
    assert usage is not None
    cost, found = price_usage(usage, model, provider)
    assert cost is not None and found is not None
    return cost


ANTHROPIC = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
    "usage": {"input_tokens": 1000, "output_tokens": 2000, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 0, "server_tool_use": {"web_search_requests": 3},
              "output_tokens_details": {"thinking_tokens": 1200}},
}  # fmt: skip


class TestAnthropic:
    def test_web_searches_and_thinking(self) -> None:
        r = Messages().body(ANTHROPIC)
        assert r is not None and r.usage is not None
        assert (r.usage.web_searches, r.usage.reasoning_tokens, r.usage.completion_tokens) == (3, 1200, 2000)
        cost = ours(r.usage, "claude-sonnet-4-5", "anthropic")
        assert cost == theirs(ANTHROPIC, "claude-sonnet-4-5", "anthropic")
        # Three searches at $10 per thousand: what the issue found missing.
        assert cost - ours(Usage(1000, 2000), "claude-sonnet-4-5", "anthropic") == Decimal("0.03")

    def test_in_a_stream(self) -> None:
        stream = Messages().stream()
        start = {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "id": "m",
                 "usage": {"input_tokens": 1000, "output_tokens": 1}}}  # fmt: skip
        delta = {"type": "message_delta", "usage": ANTHROPIC["usage"]}
        import json

        for obj in (start, delta):
            stream.event(obj["type"], json.dumps(obj).encode())
        u = stream.result.usage
        assert u is not None and (u.web_searches, u.reasoning_tokens) == (3, 1200)


class TestOpenAICompatible:
    def test_audio_tokens(self) -> None:
        body = {"model": "gpt-audio", "usage": {
            "prompt_tokens": 1000, "completion_tokens": 600, "total_tokens": 1600,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 500}}}  # fmt: skip
        r = ChatCompletions().body(body)
        assert r is not None and r.usage is not None
        assert (r.usage.input_audio_tokens, r.usage.output_audio_tokens) == (800, 500)
        assert ours(r.usage, "gpt-audio", "openai") == theirs(body, "gpt-audio", "openai", "chat")
        assert ours(r.usage, "gpt-audio", "openai") > ours(Usage(1000, 600), "gpt-audio", "openai")

    @pytest.mark.parametrize(
        ("usage", "flavor"),
        [
            # xAI's chat API: reasoning beside the completion, the total says so.
            ({"prompt_tokens": 200, "completion_tokens": 60, "total_tokens": 660,
              "prompt_tokens_details": {"cached_tokens": 162},
              "completion_tokens_details": {"reasoning_tokens": 400}}, "chat"),
            # xAI's native usage.
            ({"prompt_tokens": 200, "completion_tokens": 60, "cached_prompt_text_tokens": 162,
              "reasoning_tokens": 400}, "default"),
        ],
    )  # fmt: skip
    def test_xai_reasoning_and_cache(self, usage: dict[str, Any], flavor: str) -> None:
        body = {"model": "grok-4", "usage": usage}
        r = ChatCompletions().body(body)
        assert r is not None and r.usage is not None
        u = r.usage
        assert (u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.reasoning_tokens) == (
            200,
            162,
            460,
            400,
        )
        assert ours(u, "grok-4", "x-ai") == theirs(body, "grok-4", "x-ai", flavor)

    @pytest.mark.parametrize("model", ["sonar-deep-research", "sonar-pro"])
    def test_perplexity_citations_searches_and_reasoning(self, model: str) -> None:
        body = {"model": model, "usage": {
            "prompt_tokens": 100, "completion_tokens": 1000, "total_tokens": 36100, "citation_tokens": 5000,
            "num_search_queries": 20, "reasoning_tokens": 30000}}  # fmt: skip
        r = ChatCompletions().body(body)
        assert r is not None and r.usage is not None
        u = r.usage
        assert (u.completion_tokens, u.citation_tokens, u.reasoning_tokens, u.web_searches) == (
            36000,
            5000,
            30000,
            20,
        )
        assert ours(u, model, "perplexity") == theirs(body, model, "perplexity")

    def test_openai_reasoning_stays_inside(self) -> None:
        """OpenAI's completion already includes reasoning (its total = prompt + completion)."""
        usage = {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510,
                 "completion_tokens_details": {"reasoning_tokens": 400}}  # fmt: skip
        r = ChatCompletions().body({"model": "o3", "usage": usage})
        assert r is not None and r.usage is not None and r.usage.completion_tokens == 500


class TestGemini:
    def test_audio_and_image_modalities(self) -> None:
        def tokens(**by_modality: int) -> list[dict[str, Any]]:
            return [{"modality": m, "tokenCount": n} for m, n in by_modality.items()]

        body = {"modelVersion": "gemini-2.5-flash", "usageMetadata": {
            "promptTokenCount": 1000, "candidatesTokenCount": 300, "cachedContentTokenCount": 200,
            "promptTokensDetails": tokens(TEXT=100, AUDIO=700, IMAGE=200),
            "cacheTokensDetails": tokens(AUDIO=150, TEXT=50),
            "candidatesTokensDetails": tokens(TEXT=300)}}  # fmt: skip
        r = GenerateContent().body(body)
        assert r is not None and r.usage is not None
        u = r.usage
        assert (u.input_audio_tokens, u.input_image_tokens, u.cached_audio_tokens) == (700, 200, 150)
        assert ours(u, "gemini-2.5-flash", "google") == theirs(body, "gemini-2.5-flash", "google")

    def test_image_output(self) -> None:
        """Gemini's image models bill drawn images far above text: the issue's "nano banana" case."""
        body = {"modelVersion": "gemini-2.5-flash-image", "usageMetadata": {
            "promptTokenCount": 33, "candidatesTokenCount": 1780, "thoughtsTokenCount": 529,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120},
                                        {"modality": "TEXT", "tokenCount": 660}]}}  # fmt: skip
        r = GenerateContent().body(body)
        assert r is not None and r.usage is not None and r.usage.output_image_tokens == 1120
        cost = ours(r.usage, "gemini-2.5-flash-image", "google")
        assert cost == theirs(body, "gemini-2.5-flash-image", "google")
        as_text = Usage(33, 2309, reasoning_tokens=529)
        assert cost > 2 * ours(as_text, "gemini-2.5-flash-image", "google")


def test_cost_of_takes_every_unit() -> None:
    base = llmtally.cost_of("claude-sonnet-4-5", provider="anthropic", input_tokens=1000, output_tokens=2000)
    searched = llmtally.cost_of(
        "claude-sonnet-4-5", provider="anthropic", input_tokens=1000, output_tokens=2000, web_searches=3
    )
    assert base is not None and searched is not None and searched - base == Decimal("0.03")


def test_the_summary_says_searches_only_when_there_were_some() -> None:
    from llmtally._core.usage import Call

    t = llmtally.track()
    t._calls.append(Call("anthropic", "messages", "claude-sonnet-4-5", usage=Usage(10, 5, web_searches=2)))
    t2 = llmtally.track()
    t2._calls.append(Call("openai", "chat.completions", "gpt-4", usage=Usage(10, 5)))
    assert "Web Searches: 2" in str(t) and t.web_searches == 2
    assert "Web Searches" not in str(t2)


class TestPriceContext:
    """How the response says it was served selects the catalogue's price variant, as calc_price
    does with the same price_context."""

    @pytest.mark.parametrize("model", ["o3", "gpt-5", "gpt-4o"])
    @pytest.mark.parametrize("tier", ["flex", "priority", "default"])
    def test_openai_service_tier(self, model: str, tier: str) -> None:
        usage = {"prompt_tokens": 10_000, "completion_tokens": 2_000, "total_tokens": 12_000}
        body = {"model": model, "service_tier": tier, "usage": usage}
        r = ChatCompletions().body(body)
        assert r is not None and r.context == (("service_tier", tier),)
        cost, _ = price_usage(r.usage, model, "openai", context=r.context)  # type: ignore[arg-type]
        u = genai_prices.Usage(input_tokens=10_000, output_tokens=2_000)
        expected = genai_prices.calc_price(
            u, model, provider_id="openai", price_context={"service_tier": tier}
        )
        assert cost == expected.total_price
        standard, _ = price_usage(Usage(10_000, 2_000), model, "openai")
        assert standard is not None and cost is not None
        if tier == "flex" and model in ("o3", "gpt-5"):
            assert cost < standard  # half price, as the issue found missing
        if tier == "priority":
            assert cost > standard

    def test_fast_path_and_body_scan_agree(self) -> None:
        import json

        body = {"id": "c", "model": "gpt-5", "service_tier": "flex", "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2}}  # fmt: skip
        fast = ChatCompletions().fast_body(json.dumps(body).encode())
        assert fast is not None and fast.context == (("service_tier", "flex"),)

    def test_anthropic_fast_mode(self) -> None:
        usage = {"input_tokens": 1000, "output_tokens": 1000, "speed": "fast"}
        body = {"type": "message", "model": "claude-opus-4-8", "usage": usage, "id": "m"}
        r = Messages().body(body)
        assert r is not None and r.context == (("speed", "fast"),)
        cost, found = price_usage(r.usage, "claude-opus-4-8", "anthropic", context=r.context)  # type: ignore[arg-type]
        assert found is not None
        expected = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1000, output_tokens=1000),
            "claude-opus-4-8",
            provider_id="anthropic",
            price_context={"speed": "fast"},
        ).total_price
        standard, _ = price_usage(Usage(1000, 1000), "claude-opus-4-8", "anthropic")
        assert cost == expected and standard is not None and cost is not None and cost > standard

    def test_an_unknown_context_is_the_standard_price(self) -> None:
        weird = (("service_tier", "scale"),)
        assert (
            price_usage(Usage(10, 2), "gpt-4o", "openai", context=weird)[0]
            == price_usage(Usage(10, 2), "gpt-4o", "openai")[0]
        )


def test_azure_stream_whose_first_chunk_has_no_model() -> None:
    """Azure's first chunk carries prompt filter results and "model": "": the model is the first
    non-empty one."""
    import json

    stream = ChatCompletions().stream()
    chunks = [
        {"id": "", "model": "", "choices": [], "prompt_filter_results": []},
        {"id": "c1", "model": "gpt-4o-2024-11-20", "choices": [{"delta": {"content": "hi"}}]},
    ]
    for c in chunks:
        stream.event("", json.dumps(c).encode())
    assert stream.result.model == "gpt-4o-2024-11-20"


def test_service_tier_through_the_openai_sdk() -> None:
    """openai, JSON and streamed, against the fake answering at the flex tier."""
    import openai

    from llmtally.testing import FakeProvider, Reply

    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=10_000, completion_tokens=2_000,
                                                  service_tier="flex", model="o3"))  # fmt: skip
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        messages: Any = [{"role": "user", "content": "hi"}]
        with llmtally.track() as t:
            client.chat.completions.create(model="o3", messages=messages, service_tier="flex")
            for _ in client.chat.completions.create(
                model="o3", messages=messages, stream=True, stream_options={"include_usage": True}
            ):
                pass
    flex = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=10_000, output_tokens=2_000), "o3", provider_id="openai",
        price_context={"service_tier": "flex"},
    ).total_price  # fmt: skip
    assert t.requests == 2 and t.cost == 2 * flex
    assert [c.context for c in t.calls] == [(("service_tier", "flex"),)] * 2


class TestAnthropicStreams:
    def test_served_without_its_content_type(self) -> None:
        """A proxy that serves the stream as application/json: read as SSE by its content, because
        the request asked for a stream."""
        import anthropic

        from llmtally.testing import FakeProvider, Reply

        reply = Reply(text="Hello there friend", prompt_tokens=11, completion_tokens=6,
                      headers={"content-type": "application/json"})  # fmt: skip
        fake = FakeProvider(handler=lambda req: reply)
        with fake.serve() as url:
            client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
            with llmtally.track() as t:
                events = list(
                    client.messages.create(
                        model="claude-sonnet-4-5", max_tokens=100, stream=True,
                        messages=[{"role": "user", "content": "hi"}],
                    )
                )  # fmt: skip
        assert events and (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 6, 0)

    def test_closed_after_message_start_is_estimated(self) -> None:
        """The output count in message_start is a placeholder: a stream closed there is estimated."""
        import httpx2

        from llmtally.testing import FakeProvider, Reply

        fake = FakeProvider([Reply(text="x", prompt_tokens=11, completion_tokens=6)])
        client = httpx2.Client(transport=fake.httpx2_transport())
        body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": []}
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/messages", json=body,
                               headers={"anthropic-version": "2023-06-01"}) as r:  # fmt: skip
                next(r.iter_lines())  # event: message_start
        assert t.requests == 1 and t.estimated_requests == 1 and t.prompt_tokens == 11


def test_responses_cache_writes() -> None:
    """OpenAI's Responses API reports cache writes in input_tokens_details: priced as genai-prices."""
    from llmtally.wire.openai import Responses

    body = {"object": "response", "id": "resp_1", "model": "gpt-6-sol", "usage": {
        "input_tokens": 20_000, "output_tokens": 1_000, "total_tokens": 21_000,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 16_000},
        "output_tokens_details": {"reasoning_tokens": 0}}}  # fmt: skip
    r = Responses().body(body)
    assert r is not None and r.usage is not None and r.usage.cache_write_tokens == 16_000
    assert ours(r.usage, "gpt-6-sol", "openai") == theirs(body, "gpt-6-sol", "openai", "responses")
    assert ours(r.usage, "gpt-6-sol", "openai") != ours(Usage(20_000, 1_000), "gpt-6-sol", "openai")


def test_cost_of_takes_the_context() -> None:
    flex = llmtally.cost_of("o3", input_tokens=10_000, output_tokens=2_000, context={"service_tier": "flex"})
    standard = llmtally.cost_of("o3", input_tokens=10_000, output_tokens=2_000)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=10_000, output_tokens=2_000),
        "o3",
        price_context={"service_tier": "flex"},
    ).total_price
    assert flex == expected and standard is not None and flex is not None and flex < standard


def test_a_bedrock_custom_model_is_priced_from_its_base() -> None:
    from urllib.parse import quote

    from llmtally.wire.bedrock import bedrock_model

    arn = "arn:aws:bedrock:us-east-1:123456789012:custom-model/amazon.nova-pro-v1:0/a1b2c3"
    model = bedrock_model(f"/model/{quote(arn, safe='')}/converse")
    assert model == "custom-model/amazon.nova-pro-v1:0/a1b2c3"
    cost, found = price_usage(Usage(1000, 200), model, "aws")
    assert found is not None and found.model_id == "amazon.nova-pro-v1:0"  # the catalogue's own match
    assert cost == price_usage(Usage(1000, 200), "amazon.nova-pro-v1:0", "aws")[0]
    # Other ARNs (inference profiles, provisioned throughput): their resource name, as before.
    assert (
        bedrock_model("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x-v1/converse")
        == "us.x-v1"
    )


def test_cost_of_and_the_cost_command_take_image_output_and_citations(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from llmtally.cli import cli_logic

    painted = llmtally.cost_of(
        "gemini-2.5-flash-image", input_tokens=33, output_tokens=2309, output_image_tokens=1120
    )
    assert painted == ours(Usage(33, 2309, output_image_tokens=1120), "gemini-2.5-flash-image", "google")
    args = ["cost", "gemini-2.5-flash-image", "-i", "33", "-o", "2309", "--output-image", "1120"]
    assert cli_logic(args) == 0 and str(painted) in capsys.readouterr().out
    deep = {"provider": "perplexity", "input_tokens": 10, "output_tokens": 5000}
    cited = llmtally.cost_of("sonar-deep-research", citation_tokens=4000, **deep)  # type: ignore[arg-type]
    plain = llmtally.cost_of("sonar-deep-research", **deep)  # type: ignore[arg-type]
    assert cited == ours(Usage(10, 5000, citation_tokens=4000), "sonar-deep-research", "perplexity")
    assert cited is not None and plain is not None and cited < plain
