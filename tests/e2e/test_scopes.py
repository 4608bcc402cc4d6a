"""Scopes over real SDK calls: nesting, threads, thread pools, asyncio tasks, and exceptions."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx2
import openai
import pytest

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

from .conftest import CHAT, gpt4_cost


def numbered_replies(request: FakeRequest) -> Reply:
    """Answer "job N" with N+1 prompt and 2N+1 completion tokens: each call's usage names its caller."""
    n = int(request.json["messages"][0]["content"].split()[1])
    return Reply(text=f"done {n}", prompt_tokens=n + 1, completion_tokens=2 * n + 1)


def job(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"job {n}"}]


def ask(client: openai.OpenAI, n: int) -> str:
    r = client.chat.completions.create(model="gpt-4", messages=job(n))  # type: ignore[arg-type]
    return r.choices[0].message.content or ""


class TestNesting:
    """A call counts in every scope open when it was sent, and only in those."""

    def test_nested(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.extend(
            [Reply(prompt_tokens=11, completion_tokens=13), Reply(prompt_tokens=5, completion_tokens=7)]
        )
        with llmtally.track("outer") as outer:
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
            with llmtally.track("inner") as inner:
                assert llmtally.current_scopes() == (outer, inner)
                oai.chat.completions.create(model="gpt-4", messages=CHAT)
            assert llmtally.current_scopes() == (outer,)
        assert llmtally.current_scopes() == ()
        assert (inner.successful_requests, inner.prompt_tokens, inner.completion_tokens) == (1, 5, 7)
        assert inner.cost == gpt4_cost(5, 7) == Decimal("0.00057")
        assert (outer.successful_requests, outer.prompt_tokens, outer.completion_tokens) == (2, 16, 20)
        assert outer.cost == Decimal("0.00111") + Decimal("0.00057")
        assert outer.calls[1] is inner.calls[0]
        assert inner.calls[0].scope_path == ("outer", "inner")
        assert outer.calls[0].scope_path == ("outer",)

    def test_no_scope_no_count(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        with llmtally.track() as before:
            pass
        oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert before.calls == [] and before.total_tokens == 0

    def test_decorator_totals_its_invocations(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies

        decorated = llmtally.track("decorated")

        @decorated
        def work(n: int) -> str:
            assert llmtally.current_scopes()[-1] is decorated
            return ask(oai, n)

        with llmtally.track("outer") as outer:
            assert work(3) == "done 3"
        assert (decorated.prompt_tokens, decorated.completion_tokens) == (4, 7)
        assert work(4) == "done 4"
        assert work.tally is decorated
        assert (decorated.prompt_tokens, decorated.completion_tokens) == (4 + 5, 7 + 9)
        assert outer.total_tokens == 11  # only the invocation made inside it
        assert decorated.calls[1].scope_path == ("decorated",)
        assert decorated.name == "decorated"

    def test_recursive_decorated_function_counts_once(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies

        @llmtally.track
        def work(n: int) -> None:
            ask(oai, n)
            if n:
                work(n - 1)

        work(2)
        assert work.tally.successful_requests == 3
        assert work.tally.name.endswith("work")


class TestThreads:
    """Calls in threads and pool tasks started inside a scope count in it."""

    def test_thread(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies
        out: list[str] = []
        with llmtally.track() as t:
            th = threading.Thread(target=lambda: out.append(ask(oai, 10)))
            th.start()
            th.join()
        assert out == ["done 10"]
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (1, 11, 21)

    def test_thread_started_outside_does_not_count(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies
        go, done = threading.Event(), threading.Event()

        def worker() -> None:
            go.wait(5)
            ask(oai, 1)
            done.set()

        th = threading.Thread(target=worker)
        th.start()
        with llmtally.track() as t:
            go.set()
            assert done.wait(5)
        th.join()
        assert t.calls == []

    def test_thread_pool_created_inside(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies
        with llmtally.track() as t:
            with ThreadPoolExecutor(max_workers=3) as pool:
                results = list(pool.map(lambda n: ask(oai, n), [1, 2, 3]))
        assert results == ["done 1", "done 2", "done 3"]
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (3, 2 + 3 + 4, 3 + 5 + 7)

    def test_thread_pool_created_outside(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies
        with ThreadPoolExecutor(max_workers=2) as pool:
            pool.submit(ask, oai, 7).result()  # warm the workers before any scope exists
            with llmtally.track("a") as a:
                fa = pool.submit(ask, oai, 1)
                fa.result()
            with llmtally.track("b") as b:
                pool.submit(ask, oai, 2).result()
            pool.submit(ask, oai, 3).result()  # after both scopes: counted nowhere
        assert (a.prompt_tokens, a.completion_tokens) == (2, 3)
        assert (b.prompt_tokens, b.completion_tokens) == (3, 5)

    def test_eight_threads_ten_calls_each(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.handler = numbered_replies
        per_thread: dict[int, llmtally.Tally] = {}
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                with llmtally.track(f"thread-{i}") as mine:
                    for k in range(10):
                        assert ask(oai, i * 10 + k) == f"done {i * 10 + k}"
                per_thread[i] = mine
            except BaseException as exc:
                errors.append(exc)

        with llmtally.track("all") as total:
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert errors == []
        ns = range(80)
        assert total.successful_requests == 80 and len(total.calls) == 80
        assert total.prompt_tokens == sum(n + 1 for n in ns) == 3240
        assert total.completion_tokens == sum(2 * n + 1 for n in ns) == 6400
        assert total.cost == gpt4_cost(3240, 6400) == Decimal("0.4812")
        for i, mine in per_thread.items():
            own = range(i * 10, i * 10 + 10)
            assert mine.successful_requests == 10
            assert (mine.prompt_tokens, mine.completion_tokens) == (
                sum(n + 1 for n in own),
                sum(2 * n + 1 for n in own),
            )
            assert {c.scope_path for c in mine.calls} == {("all", f"thread-{i}")}


class TestAsyncio:
    """Concurrent asyncio tasks count in the scope they were created in, each exactly once."""

    async def test_fifty_tasks(self, fake: FakeProvider, url: str) -> None:
        fake.handler = numbered_replies
        # The loopback server listens with socketserver's default backlog of 5: fifty simultaneous
        # connects overflow it. Ten pooled connections still run the fifty calls concurrently.
        http = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=10))
        aoai = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, http_client=http)

        async def one(n: int) -> tuple[str, llmtally.Tally]:
            async with llmtally.track(f"task-{n}") as mine:
                r = await aoai.chat.completions.create(model="gpt-4", messages=job(n))  # type: ignore[arg-type]
            return r.choices[0].message.content or "", mine

        async with llmtally.track("all") as total:
            results = await asyncio.gather(*(one(n) for n in range(50)))
        assert [text for text, _ in results] == [f"done {n}" for n in range(50)]
        for n, (_, mine) in enumerate(results):
            assert (mine.successful_requests, mine.prompt_tokens, mine.completion_tokens) == (
                1,
                n + 1,
                2 * n + 1,
            )
        assert total.successful_requests == 50
        assert total.prompt_tokens == sum(n + 1 for n in range(50)) == 1275
        assert total.completion_tokens == sum(2 * n + 1 for n in range(50)) == 2500
        assert total.cost == gpt4_cost(1275, 2500) == Decimal("0.18825")
        await aoai.close()

    async def test_task_created_outside_does_not_count(
        self, fake: FakeProvider, aoai: openai.AsyncOpenAI
    ) -> None:
        go = asyncio.Event()

        async def later() -> None:
            await go.wait()
            await aoai.chat.completions.create(model="gpt-4", messages=CHAT)  # type: ignore[arg-type]

        task = asyncio.create_task(later())
        async with llmtally.track() as t:
            go.set()
            await task
        assert t.calls == []


class TestExceptions:
    """An exception leaving a scope restores the outer scopes exactly."""

    def test_exception_restores_outer(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.extend(
            [Reply(prompt_tokens=11, completion_tokens=13), Reply(prompt_tokens=5, completion_tokens=7)]
        )
        with llmtally.track("outer") as outer:
            with pytest.raises(ValueError, match="boom"):
                with llmtally.track("inner") as inner:
                    oai.chat.completions.create(model="gpt-4", messages=CHAT)
                    raise ValueError("boom")
            assert llmtally.current_scopes() == (outer,)
            oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert llmtally.current_scopes() == ()
        assert (inner.successful_requests, inner.total_tokens) == (1, 24)
        assert (outer.successful_requests, outer.total_tokens) == (2, 36)

    def test_sdk_error_propagates_and_restores(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        fake.add(Reply(status=429, error="rate limited"))
        with llmtally.track("outer") as outer:
            with pytest.raises(openai.RateLimitError):
                with llmtally.track("inner") as inner:
                    oai.chat.completions.create(model="gpt-4", messages=CHAT)
            assert llmtally.current_scopes() == (outer,)
        assert llmtally.current_scopes() == ()
        assert (inner.failed_requests, outer.failed_requests) == (1, 1)
        assert outer.calls[0] is inner.calls[0]

    async def test_async_exception_restores_outer(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        async with llmtally.track("outer") as outer:
            with pytest.raises(KeyError):
                async with llmtally.track("inner"):
                    await aoai.chat.completions.create(model="gpt-4", messages=CHAT)  # type: ignore[arg-type]
                    raise KeyError("x")
            assert llmtally.current_scopes() == (outer,)
        assert llmtally.current_scopes() == ()
        assert outer.successful_requests == 1
