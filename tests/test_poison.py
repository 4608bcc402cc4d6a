"""Poison from the server never becomes a silent 0, and never blocks the ledger: usage values that
are no token count make the call an offline estimate; exact integers sent as floats or text count."""

from __future__ import annotations

import logging
from typing import Any

import openai
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply
from llmtally.wire import NOTHING, bad_count
from llmtally.wire._base import MAX_COUNT, as_int
from llmtally.wire.openai import ChatCompletions

MESSAGES = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.mark.parametrize(("value", "count"), [(12, 12), (12.0, 12), ("12", 12), (" 7 ", 7), (None, 0)])
def test_exact_integers_in_any_dress_are_taken(value: Any, count: int) -> None:
    assert as_int(value) == count and bad_count() is NOTHING


@pytest.mark.parametrize(
    "value", [-5, 12.5, 2**63, MAX_COUNT + 1, "abc", "1e3", "-3", True, [1], {}, float("nan"), float("inf")]
)
def test_anything_else_is_noted(value: Any) -> None:
    assert as_int(value) == 0
    assert bad_count() is value  # noted once...
    assert bad_count() is NOTHING  # ...and forgotten once read


def test_a_stated_null_count_is_noted() -> None:
    ChatCompletions().body({"usage": {"prompt_tokens": None, "completion_tokens": 3}})
    assert bad_count() is None
    ChatCompletions().body({"usage": {"prompt_tokens": 4}})  # completion absent (embeddings): fine
    assert bad_count() is NOTHING


def calls(value: Any, *, stream: bool) -> list[llmtally.Call]:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=value, completion_tokens=7, model="gpt-4o"))
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            if stream:
                chunks = client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
                for _ in chunks:
                    pass
            else:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    return t.calls


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("value", [-5, 2**63, 12.5])
def test_poison_through_the_sdk_is_estimated_not_zero(
    value: Any, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmtally"):
        (call,) = calls(value, stream=stream)
    assert call.estimated and call.usage is not None
    assert call.usage.prompt_tokens > 0 and call.usage.completion_tokens > 0  # counted offline, not 0
    assert call.cost is not None and call.cost > 0
    assert "no token count" in caplog.text


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_an_exact_float_is_exact(stream: bool) -> None:
    (call,) = calls(12.0, stream=stream)
    assert not call.estimated and call.usage is not None and call.usage.prompt_tokens == 12
