"""Prices: exact Decimals equal to genai-prices' own calc_price, unknown is None (never 0)."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from genai_prices import Usage as GUsage
from genai_prices import calc_price

import llmtally
from llmtally import _pricing

MODELS = [
    "gpt-4",
    "gpt-4o",
    "gpt-4o-mini",
    "o1",
    "o3",
    "o3-mini",
    "gpt-4.1",
    "gpt-5",
    "gpt-3.5-turbo",
    "claude-sonnet-4-5",
    "claude-3-5-haiku-latest",
    "claude-opus-4-1",
    "gemini-2.5-pro",
    "deepseek-chat",
]


class TestCostOf:
    """cost_of prices a usage from the bundled catalogue."""

    def test_seed_figures(self) -> None:
        assert llmtally.cost_of("gpt-4", input_tokens=11, output_tokens=13) == Decimal("0.00111")
        assert llmtally.cost_of("gpt-4", input_tokens=1799, output_tokens=130) == Decimal("0.06177")
        assert str(llmtally.cost_of("gpt-4", input_tokens=11, output_tokens=13)) == "0.00111"

    def test_cached_input_is_cheaper(self) -> None:
        full = llmtally.cost_of("gpt-4o", input_tokens=10_000, output_tokens=0)
        cached = llmtally.cost_of("gpt-4o", input_tokens=10_000, output_tokens=0, cached_tokens=8_000)
        assert full == Decimal("0.025")
        assert cached == Decimal("0.015")  # 2,000 at $2.50/M + 8,000 at $1.25/M

    def test_bare_o_series_priced_at_output_rate(self) -> None:
        # LangChain's callback charges bare o1/o3 completions at the input rate.
        assert llmtally.cost_of("o3", input_tokens=0, output_tokens=1_000_000) == Decimal("8")

    def test_anthropic_cache_write(self) -> None:
        cost = llmtally.cost_of(
            "claude-sonnet-4-5",
            provider="anthropic",
            input_tokens=100_000,
            output_tokens=0,
            cache_write_tokens=100_000,
        )
        assert cost == Decimal("0.375")  # $3.75/M, below the 200k tier

    def test_unknown_model_is_none_and_warned_once(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, "llmtally")
        for _ in range(3):
            assert llmtally.cost_of("my-finetune-xyz-123", input_tokens=10, output_tokens=10) is None
        warnings = [r for r in caplog.records if "my-finetune-xyz-123" in r.getMessage()]
        assert len(warnings) == 1

    def test_inconsistent_usage_is_unknown_not_negative(self) -> None:
        assert llmtally.cost_of("gpt-4o", input_tokens=10, output_tokens=0, cached_tokens=50) is None


class TestSameAsCatalogue:
    """On many (model, usage) pairs the result equals calc_price's Decimal."""

    def test_random_pairs(self) -> None:
        rng = random.Random(1234)
        for _ in range(600):
            model = rng.choice(MODELS)
            prompt = rng.choice([rng.randint(0, 3_000), rng.randint(0, 400_000)])
            cached = rng.randint(0, prompt)
            write = rng.randint(0, prompt - cached)
            out = rng.randint(0, 8_000)
            reasoning = rng.randint(0, out)
            ours = llmtally.cost_of(
                model,
                input_tokens=prompt,
                output_tokens=out,
                cached_tokens=cached,
                cache_write_tokens=write,
                reasoning_tokens=reasoning,
            )
            theirs = calc_price(
                GUsage(
                    input_tokens=prompt,
                    output_tokens=out,
                    cache_read_tokens=cached,
                    cache_write_tokens=write,
                    output_reasoning_tokens=reasoning,
                ),
                model,
            ).total_price
            assert ours == theirs, (model, prompt, cached, write, out, reasoning)

    def test_random_pairs_with_every_unit(self) -> None:
        """Audio, image and cached audio input, audio output and web searches too, on models that
        price them, against calc_price: identical Decimals (or both refusing the usage)."""
        rng = random.Random(4321)
        models = [
            ("gpt-audio", "openai"), ("gpt-4o-audio-preview", "openai"), ("gemini-2.5-flash", "google"),
            ("claude-sonnet-4-5", "anthropic"), ("gpt-realtime", "openai"), ("gpt-4o", "openai"),
        ]  # fmt: skip
        for _ in range(400):
            model, provider = rng.choice(models)
            # A consistent usage: the input split into text, audio and image, each partly cached.
            text, audio, image = (rng.randint(0, 100_000) for _ in range(3))
            cached_text, cached_audio = rng.randint(0, text), rng.randint(0, audio)
            prompt, cached = text + audio + image, cached_text + cached_audio
            out = rng.randint(0, 8_000)
            audio_out = rng.randint(0, out)
            searches = rng.randint(0, 5)
            ours = llmtally.cost_of(
                model, provider=provider, input_tokens=prompt, output_tokens=out, cached_tokens=cached,
                input_audio_tokens=audio, cached_audio_tokens=cached_audio, input_image_tokens=image,
                output_audio_tokens=audio_out, web_searches=searches,
            )  # fmt: skip
            theirs = calc_price(
                GUsage(input_tokens=prompt, output_tokens=out, cache_read_tokens=cached,
                       input_audio_tokens=audio, cache_audio_read_tokens=cached_audio,
                       input_image_tokens=image, cache_image_read_tokens=0, output_audio_tokens=audio_out,
                       web_searches=searches),
                model, provider_id=provider,
            ).total_price  # fmt: skip
            assert ours == theirs, (
                model,
                text,
                audio,
                image,
                cached_text,
                cached_audio,
                out,
                audio_out,
                searches,
            )

    def test_tier_cliff(self) -> None:
        # Above 200k input tokens the whole call moves to the higher tier.
        for prompt in (199_999, 200_000, 200_001, 300_000):
            ours = llmtally.cost_of("claude-sonnet-4-5", input_tokens=prompt, output_tokens=1000)
            theirs = calc_price(
                GUsage(input_tokens=prompt, output_tokens=1000), "claude-sonnet-4-5"
            ).total_price
            assert ours == theirs

    def test_price_at_time_of_call(self) -> None:
        # A model whose price changed has conditional prices; each instant gets its own.
        info = next(
            (
                r.info
                for m in ("gpt-5", "claude-opus-4-1", "gemini-2.5-pro", "o3", "deepseek-chat")
                if (r := _pricing.resolve(m)) is not None and isinstance(r.info.prices, list)
            ),
            None,
        )
        if info is None:
            pytest.skip("no model with dated prices in this catalogue")
        model = info.id
        for cond in info.prices:
            start = getattr(cond.constraint, "start_date", None)
            if start is None:
                continue
            at = datetime(start.year, start.month, start.day, 12, tzinfo=UTC)
            ours = llmtally.cost_of(model, input_tokens=100_000, output_tokens=10_000, at=at)
            theirs = calc_price(
                GUsage(input_tokens=100_000, output_tokens=10_000), model, genai_request_timestamp=at
            ).total_price
            assert ours == theirs


class TestResolveCache:
    """A model is looked up once; later calls hit the cache."""

    def test_cached(self) -> None:
        a = _pricing.resolve("gpt-4o-mini")
        assert a is not None and a.provider_id == "openai"
        assert _pricing.resolve("gpt-4o-mini") is a

    def test_unknown_host_falls_back_to_model(self) -> None:
        found = _pricing.resolve("gpt-4", None, "https://127.0.0.1")
        assert found is not None and found.provider_id == "openai"
