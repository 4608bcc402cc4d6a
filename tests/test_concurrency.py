"""Scopes under concurrency: one decorated function or one Tally object used by many threads and
tasks at once never raises into the caller, never leaves its scope open in another thread or task,
and counts exactly the calls made inside its entries.

The calls go through the real ``openai`` SDK to ``FakeProvider`` over loopback HTTP, so each one
crosses the capture, the pending queue and settlement as in a program.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import openai
import pytest

import llmtally
from llmtally._core import tally as tally_module
from llmtally.testing import FakeProvider, Reply

MESSAGES = [{"role": "user", "content": "Tell me a joke"}]
#: gpt-4 at $30 / $60 per million tokens: 11 prompt and 13 completion tokens.
COST = Decimal("0.00111")
TOKENS = 24


@pytest.fixture
def url() -> Iterator[str]:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=11, completion_tokens=13, model="gpt-4"))
    with fake.serve() as base:
        yield base + "/v1"


def ask(client: openai.OpenAI) -> None:
    client.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]


async def aask(client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4", messages=MESSAGES)  # type: ignore[arg-type]


def exact(t: llmtally.Tally, n: int) -> None:
    assert (t.successful_requests, t.failed_requests) == (n, 0)
    assert t.total_tokens == n * TOKENS
    assert t.cost == n * COST


async def test_decorated_coroutine_under_gather(url: str) -> None:
    """100 invocations at once, each its own entry: no error, each task sees only its own scope."""
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
    seen: list[tuple[llmtally.Tally, ...]] = []

    @llmtally.track("api")
    async def handle(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 5))  # interleave the entries and exits of the tasks
        await aask(client)
        seen.append(llmtally.current_scopes())
        await asyncio.sleep(0.001 * (i % 3))
        return i

    try:
        assert await asyncio.gather(*(handle(i) for i in range(100))) == list(range(100))
        assert llmtally.current_scopes() == ()
        assert seen == [(handle.tally,)] * 100
        # A call made by this task afterwards, and by a new task, counts nowhere.
        with llmtally.track("after") as after:
            await aask(client)
            await asyncio.create_task(aask(client))
    finally:
        await client.close()
    exact(handle.tally, 100)
    exact(after, 2)
    assert handle.tally.by_model["gpt-4"].requests == 100


async def test_decorated_coroutine_under_gather_inside_a_scope(url: str) -> None:
    """Entries of one decorated coroutine in tasks started inside an outer scope: both count all."""
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)

    @llmtally.track("api")
    async def handle(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 4))
        await aask(client)
        if i % 10 == 0:
            await handle(i + 1)  # re-entered while open: still counted once

    try:
        with llmtally.track("outer") as outer:
            await asyncio.gather(*(handle(i) for i in range(50)))
            assert llmtally.current_scopes() == (outer,)
    finally:
        await client.close()
    exact(handle.tally, 55)
    exact(outer, 55)
    assert llmtally.current_scopes() == ()


def test_decorated_function_in_a_thread_pool(url: str) -> None:
    """Pool workers run a decorated function; later, unrelated work on the same workers is not
    counted in its scope."""
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)

    @llmtally.track("api")
    def handle(i: int) -> int:
        ask(client)
        return i

    def unrelated(_: int) -> tuple[llmtally.Tally, ...]:
        ask(client)
        return llmtally.current_scopes()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(handle, range(80))) == list(range(80))
        # The same workers, no scope open where the work is submitted.
        leaked = list(pool.map(unrelated, range(80)))
        with llmtally.track("later") as later:
            list(pool.map(unrelated, range(40)))
    assert leaked == [()] * 80
    exact(handle.tally, 80)
    exact(later, 40)


def test_one_scope_object_entered_by_40_threads(url: str) -> None:
    """A module-level ``api = llmtally.track("api")`` entered by 40 threads at the same moment, nested
    and re-entered inside: no exception, exact totals, nothing left open in any thread."""
    api = llmtally.track("api")
    barrier = threading.Barrier(40)
    errors: list[BaseException] = []
    after: list[tuple[llmtally.Tally, ...]] = []

    def worker(i: int) -> None:
        client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)
        try:
            barrier.wait()
            with api:
                ask(client)
                with llmtally.track(f"inner-{i}") as inner:
                    ask(client)
                    with api:  # re-entered inside itself: each call still counted once
                        ask(client)
                assert llmtally.current_scopes() == (api,)
            assert inner.successful_requests == 2
            after.append(llmtally.current_scopes())
            ask(client)  # after the scope: counted nowhere
        except BaseException as exc:  # collected for the main thread to raise
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not [th for th in threads if th.is_alive()]
    assert errors == []
    assert after == [()] * 40
    exact(api, 120)
    assert len(api.calls) == 120
    assert llmtally.current_scopes() == ()


def test_one_scope_object_shared_by_threads_and_tasks(url: str) -> None:
    """The same Tally entered in threads, in tasks inside those threads, and in the main thread."""
    api = llmtally.track("api")

    async def tasks() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)

        async def one(i: int) -> None:
            async with api:
                await asyncio.sleep(0.001 * (i % 3))
                await aask(client)

        try:
            await asyncio.gather(*(one(i) for i in range(10)))
            assert llmtally.current_scopes() == ()
        finally:
            await client.close()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(asyncio.run, tasks()) for _ in range(4)]
        with api:
            ask(openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0))
        for f in futures:
            f.result(timeout=60)
        assert list(pool.map(lambda _: llmtally.current_scopes(), range(8))) == [()] * 8
    exact(api, 41)


def test_an_internal_error_is_logged_not_raised(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault in llmtally's own scope bookkeeping never reaches the caller: it is logged."""
    client = openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)

    def broken(tally: llmtally.Tally) -> None:
        raise RuntimeError("scope bookkeeping failed")

    @llmtally.track("api")
    def handle() -> str:
        ask(client)
        return "done"

    def run() -> None:
        monkeypatch.setattr(tally_module, "leave", broken)
        assert handle() == "done"
        monkeypatch.setattr(tally_module, "enter", broken)
        assert handle() == "done"

    with caplog.at_level(logging.ERROR, logger="llmtally"):
        # In a context of its own: the scope whose exit failed stays open there, not in this test's.
        contextvars.copy_context().run(run)
    # The first call's exit, the second's entry and exit.
    assert [r.name for r in caplog.records] == ["llmtally"] * 3
    assert "scope bookkeeping failed" in caplog.text
    # Both calls: the scope whose exit failed was still open in that context for the second.
    assert handle.tally.successful_requests == 2
