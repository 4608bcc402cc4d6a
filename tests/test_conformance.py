"""llmtally's wire formats held to genai-prices' own usage extractors, body by body, over the corpus
genai-prices tests itself with (``tests/dataset/usages.json`` of pydantic/genai-prices: real
response bodies from pydantic-ai's recorded cassettes, reduced to what any extractor reads).

For every body and every API flavour both sides read, the price llmtally computes from its own
parse equals ``calc_price`` of genai-prices' extraction (same catalogue, same price context); where
the model has no price, the token counts agree. The few places they differ on purpose are listed
in ``KNOWN`` with the reason, and the test fails if one of them stops differing (or a new one
appears). The corpus is vendored in ``tests/data`` (MIT, Pydantic Services Inc.; see its README).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

from llmtally._core.usage import Usage
from llmtally._pricing import price_usage
from llmtally.wire import Parser
from llmtally.wire.anthropic import Messages
from llmtally.wire.bedrock import Converse
from llmtally.wire.cohere import CohereChat, CohereEmbed
from llmtally.wire.gemini import GenerateContent
from llmtally.wire.openai import ChatCompletions, Embeddings, Responses

CORPUS = Path(__file__).parent / "data" / "genai_prices_usages.json.gz"


def _as_chat(body: dict[str, Any]) -> dict[str, Any]:
    return body


def _cohere_chat(body: dict[str, Any]) -> dict[str, Any]:
    # The corpus keeps only what an extractor reads; a Cohere chat reply also has its message.
    return {**body, "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []}}


def _cohere_embed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "embeddings": {}}


def _is_embedding(body: dict[str, Any]) -> bool:
    u = body.get("usage")
    return isinstance(u, dict) and set(u) <= {"prompt_tokens", "total_tokens"}


#: (genai-prices provider, api flavour) -> (llmtally's parser for that API, shape fix, which bodies).
Shape = Callable[[dict[str, Any]], dict[str, Any]]
PAIRS: dict[tuple[str, str], tuple[Parser, Shape, Callable[..., bool]]] = {
    ("openai", "chat"): (ChatCompletions(), _as_chat, lambda b: True),
    ("openai", "responses"): (Responses(), _as_chat, lambda b: True),
    ("openai", "embeddings"): (Embeddings(), _as_chat, _is_embedding),
    ("azure", "chat"): (ChatCompletions(), _as_chat, lambda b: True),
    ("azure", "responses"): (Responses(), _as_chat, lambda b: True),
    ("anthropic", "default"): (Messages(), _as_chat, lambda b: True),
    ("google", "default"): (GenerateContent(), _as_chat, lambda b: True),
    ("aws", "default"): (Converse(), _as_chat, lambda b: True),
    ("cohere", "default"): (CohereChat(), _cohere_chat, lambda b: True),
    ("cohere", "embeddings"): (CohereEmbed(), _cohere_embed, lambda b: "meta" in b),
    ("deepseek", "chat"): (ChatCompletions(), _as_chat, lambda b: True),
    ("openrouter", "chat"): (ChatCompletions(), _as_chat, lambda b: True),
    ("groq", "default"): (ChatCompletions(), _as_chat, lambda b: True),
    ("mistral", "default"): (ChatCompletions(), _as_chat, lambda b: True),
    ("x-ai", "chat"): (ChatCompletions(), _as_chat, lambda b: True),
    ("x-ai", "default"): (ChatCompletions(), _as_chat, lambda b: True),
    ("perplexity", "default"): (ChatCompletions(), _as_chat, lambda b: True),
}

#: (cassette, provider, flavour) -> why llmtally reads that body differently, on purpose.
KNOWN: dict[tuple[str, str, str], str] = {}


def load() -> list[dict[str, Any]]:
    with gzip.open(CORPUS) as f:
        bodies: list[dict[str, Any]] = json.load(f)
    return bodies


def model_of(body: dict[str, Any]) -> str | None:
    for key in ("model", "modelVersion"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return None


def tokens(u: Usage) -> tuple[int, int, int]:
    return u.prompt_tokens, u.completion_tokens, u.cached_tokens


def their_tokens(u: Any) -> tuple[int, int, int]:
    return u.input_tokens or 0, u.output_tokens or 0, u.cache_read_tokens or 0


def compare(body: dict[str, Any], provider: str, flavor: str) -> tuple[str, str] | None:
    """``None`` when genai-prices does not read the body as that flavour; ("same", "price" or
    "tokens") when both agree; else (what differs, details)."""
    parser, shape, applies = PAIRS[provider, flavor]
    clean = {k: v for k, v in body.items() if k != "file"}
    if not applies(clean):
        return None
    try:
        theirs = genai_prices.extract_usage(clean, provider_id=provider, api_flavor=flavor)
    except Exception:  # genai-prices says the body is not of that flavour
        return None
    ours = parser.body(shape(clean))
    if ours is None or ours.usage is None:
        return "ours-none", f"genai-prices read {theirs.usage}"
    model = ours.model or model_of(clean)
    context = dict(ours.context) if ours.context else None
    theirs_price: Decimal | None = None
    if model:
        try:
            priced = genai_prices.calc_price(theirs.usage, model, provider_id=provider, price_context=context)
            theirs_price = priced.total_price
        except LookupError:
            pass
    if theirs_price is None:
        if tokens(ours.usage) != their_tokens(theirs.usage):
            return "tokens", f"{ours.usage} vs {theirs.usage}"
        return "same", "tokens"
    our_price, _ = price_usage(ours.usage, model, provider, context=ours.context)
    if our_price != theirs_price:
        return "price", f"{our_price} vs {theirs_price}: {ours.usage} vs {theirs.usage}"
    return "same", "price"


def test_the_corpus_is_all_there() -> None:
    bodies = load()
    assert len(bodies) > 1000 and all("file" in b for b in bodies)


def test_every_body_read_as_genai_prices_reads_it() -> None:
    differences: dict[tuple[str, str, str], str] = {}
    agreed = {"price": 0, "tokens": 0}
    for body in load():
        for provider, flavor in PAIRS:
            found = compare(body, provider, flavor)
            if found is None:
                continue
            if found[0] == "same":
                agreed[found[1]] += 1
            else:
                differences[body["file"], provider, flavor] = f"{found[0]}: {found[1]}"
    unexplained = {k: v for k, v in differences.items() if k not in KNOWN}
    assert not unexplained, "\n".join(f"{k}: {v}" for k, v in sorted(unexplained.items())[:20])
    fixed = set(KNOWN) - set(differences)
    assert not fixed, f"these now agree with genai-prices; remove them from KNOWN: {sorted(fixed)}"
    # Thousands of (body, flavour) pairs priced alike, not a vacuous pass.
    assert agreed["price"] > 1_500 and agreed["tokens"] > 150, agreed


@pytest.mark.parametrize(
    ("body", "provider", "flavor"),
    [
        (
            {"model": "deepseek-chat", "usage": {"prompt_tokens": 1000, "completion_tokens": 10,
                                                 "prompt_cache_hit_tokens": 800,
                                                 "prompt_cache_miss_tokens": 200}},
            "deepseek",
            "chat",
        ),
    ],
)  # fmt: skip
def test_where_genai_prices_is_wrong_llmtally_keeps_its_reading(
    body: dict[str, Any], provider: str, flavor: str
) -> None:
    """DeepSeek reports cache hits at the top level, which genai-prices' chat extractor misses:
    llmtally prices them as cache reads, as DeepSeek bills them."""
    theirs = genai_prices.extract_usage(body, provider_id=provider, api_flavor=flavor).usage
    assert (theirs.cache_read_tokens or 0) == 0
    ours = ChatCompletions().body(body)
    assert ours is not None and ours.usage is not None and ours.usage.cached_tokens == 800
    full, _ = price_usage(Usage(1000, 10), "deepseek-chat", provider)
    cached, _ = price_usage(ours.usage, "deepseek-chat", provider)
    assert full is not None and cached is not None and cached < full
