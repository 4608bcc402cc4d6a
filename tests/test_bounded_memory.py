"""Bounded memory: a scope keeps exact totals of every call but the records of only its most recent
``keep_calls`` calls, so a scope open for a whole process and never read (``llmtally run``'s) holds
constant memory, and the queue of calls not yet settled stays bounded.

Tens of thousands of calls through HTTP would take minutes: the big tests deliver synthetic
``Call`` objects through ``PIPELINE.deliver``, the path settlement ends in; one test makes real
``openai`` SDK calls to show the bound holds on the real path.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from dataclasses import astuple
from decimal import Decimal

import openai
import pytest

import llmtally
from llmtally._core.pipeline import FLUSH_AT, PIPELINE
from llmtally._core.tally import KEEP_CALLS
from llmtally._core.usage import Call, Usage
from llmtally.testing import FakeProvider, Reply

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-sonnet-4")


def synthetic(i: int) -> Call:
    """A call like the ones settlement builds: its own usage, cost, request id and timing."""
    model = MODELS[i % len(MODELS)]
    priced = i % 50 != 7  # a few calls of unknown price, one of them priced in another currency
    return Call(
        "openai",
        "chat",
        model,
        requested_model=model,
        usage=Usage(prompt_tokens=100 + i % 17, completion_tokens=20 + i % 5, cached_tokens=i % 3),
        cost=Decimal(i % 100 + 1) / 1_000_000 if priced else None,
        native_currency=None if priced or i != 7 else "CNY",
        status=200,
        started_at=1_700_000_000.0 + i,
        latency=0.25 + i % 10 / 100,
        request_id=f"chatcmpl-{i:012d}",
        url_host="api.openai.com",
        scope_path=("run",),
    )


def deliver(tallies: tuple[llmtally.Tally, ...], start: int, end: int) -> None:
    for i in range(start, end):
        PIPELINE.deliver(synthetic(i), tallies)


def test_50k_calls_in_an_unread_scope_keep_memory_flat() -> None:
    t = llmtally.Tally("run")
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        deliver((t,), 0, 10_000)
        gc.collect()
        after_10k = tracemalloc.get_traced_memory()[0] - base
        deliver((t,), 10_000, 50_000)
        gc.collect()
        after_50k = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # Kept: the most recent records (between KEEP_CALLS and an eighth more) and the totals, in both.
    # Every call kept would make it 5x.
    assert after_50k < 1.5 * after_10k, (after_10k, after_50k)
    assert after_50k < 8_000_000, after_50k  # a few MB at most

    # Nothing forgotten in the totals.
    assert t.requests == 50_000 and t.calls_dropped == 50_000 - KEEP_CALLS
    assert t.prompt_tokens == sum(100 + i % 17 for i in range(50_000))
    assert t.completion_tokens == sum(20 + i % 5 for i in range(50_000))
    assert t.cached_tokens == sum(i % 3 for i in range(50_000))
    assert t.unpriced_requests == 1000
    assert t.cost == sum(Decimal(i % 100 + 1) for i in range(50_000) if i % 50 != 7) / 1_000_000
    assert sum(m.requests for m in t.by_model.values()) == 50_000
    calls = t.calls
    assert len(calls) == KEEP_CALLS
    assert [c.request_id for c in calls[-2:]] == ["chatcmpl-000000049998", "chatcmpl-000000049999"]


def test_totals_by_model_and_summary_exact_whatever_was_dropped() -> None:
    """Reads between the deliveries (by_model brought up to date at different points) and trims
    interleave; every figure equals that of a scope that kept every call."""
    bounded = llmtally.Tally("bounded", keep_calls=100)
    full = llmtally.Tally("full", keep_calls=True)
    both = (bounded, full)
    marks = [0, 3, 60, 130, 131, 700, 1500, 1501, 3000]
    for start, end in itertools.pairwise(marks):
        deliver(both, start, end)
        assert bounded.requests == full.requests == end
        if start % 2:
            assert bounded.by_model.keys() == full.by_model.keys()
    assert str(bounded) == str(full)
    assert "no rate for CNY" in str(bounded)  # the currency of a call long dropped
    assert {m: astuple(t) for m, t in bounded.by_model.items()} == {
        m: astuple(t) for m, t in full.by_model.items()
    }
    assert bounded.unpriced_models == full.unpriced_models
    assert astuple(bounded._settled()) == astuple(full._settled())
    assert len(full.calls) == 3000 and full.calls_dropped == 0
    assert bounded.calls == full.calls[-100:] and bounded.calls_dropped == 2900
    assert bounded.calls is bounded.calls  # read again without a new call: the same list


def test_keep_no_calls() -> None:
    for keep in (False, 0):
        t = llmtally.track(keep_calls=keep)
        deliver((t,), 0, 500)
        assert t.calls == [] and t.calls_dropped == 500 and t.requests == 500
        assert len(t._calls) <= 16


@pytest.mark.parametrize("keep", [-1, 1.5, "10", None])
def test_bad_keep_calls(keep: object) -> None:
    with pytest.raises(ValueError, match="keep_calls must be True, False or a whole number"):
        llmtally.track(keep_calls=keep)  # type: ignore[call-overload]


def test_the_bound_holds_on_the_real_path() -> None:
    """Real SDK calls into a scope never read: the scope's list and the queue stay bounded, the
    most recent records are kept and the totals count every call."""
    served = itertools.count(1)
    fake = FakeProvider(
        handler=lambda req: Reply(prompt_tokens=next(served), completion_tokens=2, model="gpt-4")
    )
    longest = queued = 0
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)

        @llmtally.track("job", keep_calls=3)
        def job() -> None:
            nonlocal longest, queued
            for _ in range(140):
                client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
                longest = max(longest, len(job.tally._calls))  # not a read: settles nothing
                queued = max(queued, len(PIPELINE.pending))

        job()
    t = job.tally
    assert queued <= FLUSH_AT and longest <= 3 + 16
    assert [c.usage.prompt_tokens for c in t.calls if c.usage] == [138, 139, 140]
    assert t.calls_dropped == 137
    assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (140, 140 * 141 // 2, 280)
    assert t.by_model["gpt-4"].requests == 140
    assert t.cost == (Decimal(140 * 141 // 2) * 30 + 280 * 60) / 1_000_000  # gpt-4: $30 / $60 per 1M
