"""Scopes: nesting, exceptions, threads, executors, asyncio tasks, decorators, the summary text."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import httpx2
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}


def joke(n: int = 1) -> Reply:
    return Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")


def post(client: httpx.Client | httpx2.Client) -> None:
    r = client.post("http://fake/v1/chat/completions", json=CHAT)
    assert r.status_code == 200


class TestTallyText:
    """str(tally) is LangChain's summary, exact money, extra lines only when non-zero."""

    def test_seed_summary(self, fake: FakeProvider) -> None:
        fake.add(joke())
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.get_openai_callback() as cb:
            post(client)
        assert str(cb) == (
            "Tokens Used: 24\n"
            "    Prompt Tokens: 11\n"
            "    Completion Tokens: 13\n"
            "Successful Requests: 1\n"
            "Total Cost (USD): $0.00111"
        )
        assert cb.total_cost == 0.00111 and cb.cost == Decimal("0.00111")
        assert "<table" in cb._repr_html_() and "0.00111" in cb._repr_html_()

    def test_extra_lines(self, fake: FakeProvider) -> None:
        fake.add(
            Reply(
                text="a",
                prompt_tokens=1000,
                completion_tokens=100,
                cached_tokens=800,
                reasoning_tokens=60,
                model="o3",
            )
        )
        fake.add(Reply(text="b", prompt_tokens=5, completion_tokens=5, model="my-private-model"))
        fake.add(Reply(status=500, error="boom"))
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            post(client)
            post(client)
            assert client.post("http://fake/v1/chat/completions", json=CHAT).status_code == 500
        text = str(t)
        assert "        Cached Tokens: 800" in text
        assert "        Reasoning Tokens: 60" in text
        assert "Failed Requests: 1" in text
        assert "Unpriced Requests: 1 (my-private-model: price unknown, not in the total)" in text
        expected = llmtally.cost_of(
            "o3", input_tokens=1000, output_tokens=100, cached_tokens=800, reasoning_tokens=60
        )
        assert t.cost == expected
        assert text.endswith(f"Total Cost (USD): ${expected}")
        assert t.unpriced_requests == 1 and t.successful_requests == 2 and t.failed_requests == 1
        assert t.by_model["my-private-model"].cost is None
        assert t.by_model["o3"].cost == expected


class TestNesting:
    """A call counts in every enclosing scope; leaving restores the outer state exactly."""

    def test_nested(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 3)
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track("outer") as outer:
            post(client)
            with llmtally.track("inner") as inner:
                post(client)
                assert llmtally.current_scopes() == (outer, inner)
            post(client)
        assert (outer.successful_requests, inner.successful_requests) == (3, 1)
        assert outer.total_tokens == 72 and inner.total_tokens == 24
        assert inner.calls[0].scope_path == ("outer", "inner")
        assert llmtally.current_scopes() == ()

    def test_exception_restores_outer(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 2)
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track("outer") as outer:
            with pytest.raises(RuntimeError), llmtally.track("inner"):
                post(client)
                raise RuntimeError("boom")
            assert llmtally.current_scopes() == (outer,)
            post(client)
        assert outer.successful_requests == 2

    def test_no_scope_no_count(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 2)
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            pass
        post(client)
        assert t.successful_requests == 0

    async def test_async_with(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 2)
        async with httpx.AsyncClient(transport=fake.httpx_transport()) as client:
            async with llmtally.track("a") as t:
                r = await client.post("http://fake/v1/chat/completions", json=CHAT)
                assert r.status_code == 200
        assert t.total_tokens == 24


class TestDecorator:
    """As a decorator each invocation opens its own scope, nested in the caller's."""

    def test_sync_and_async(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 3)
        client = httpx2.Client(transport=fake.httpx2_transport())

        @llmtally.track("step")
        def step() -> None:
            post(client)

        @llmtally.track
        async def astep() -> None:
            post(client)

        with llmtally.track() as outer:
            step()
            step()
            asyncio.run(astep())
        assert outer.successful_requests == 3
        assert step.__name__ == "step"


class TestThreads:
    """Threads and executor tasks started inside a scope count in it; pool workers inherit nothing."""

    def test_thread(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 4)
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            threads = [threading.Thread(target=post, args=(client,)) for _ in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert t.successful_requests == 4 and t.total_tokens == 96

    def test_executor_created_outside(self, fake: FakeProvider) -> None:
        fake.add_many(joke(), 12)
        client = httpx2.Client(transport=fake.httpx2_transport())
        with ThreadPoolExecutor(4) as pool:
            with llmtally.track("a") as a:
                list(pool.map(lambda _: post(client), range(6)))
            with llmtally.track("b") as b:
                list(pool.map(lambda _: post(client), range(4)))
            # Workers created during scope "a" must not keep counting into it.
            list(pool.map(lambda _: post(client), range(2)))
        assert a.successful_requests == 6 and b.successful_requests == 4

    def test_many_threads_exact(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: post(client), range(400)))
        assert t.successful_requests == 400
        assert t.total_tokens == 400 * 24
        assert t.cost == Decimal("0.00111") * 400

    async def test_many_tasks_exact(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        async with httpx2.AsyncClient(transport=fake.httpx2_transport()) as client:

            async def one() -> None:
                r = await client.post("http://fake/v1/chat/completions", json=CHAT)
                assert r.status_code == 200

            async with llmtally.track() as t:
                await asyncio.gather(*(one() for _ in range(200)))
                await asyncio.to_thread(lambda: None)
        assert t.successful_requests == 200 and t.total_tokens == 200 * 24


class TestInstrument:
    """instrument() is idempotent and uninstrument() restores the clients exactly."""

    def test_roundtrip(self, fake: FakeProvider) -> None:
        original = httpx.Client.send
        llmtally.instrument()
        patched = httpx.Client.send
        llmtally.instrument()
        assert httpx.Client.send is patched
        llmtally.uninstrument()
        unpatched = httpx.Client.send
        assert getattr(unpatched, "__llmtally_original__", None) is None
        assert unpatched is getattr(original, "__llmtally_original__", original)
        assert threading.Thread.start.__module__ == "threading"
        fake.add_many(joke(), 1)
        with llmtally.track() as t:  # re-instruments
            post(httpx.Client(transport=fake.httpx_transport()))
        assert t.successful_requests == 1


class TestPatchOnImport:
    """A client module imported after the first track() is hooked when it is imported."""

    def test_late_import(self) -> None:
        import subprocess
        import sys

        code = """
import sys, llmtally
from llmtally.testing import FakeProvider, Reply
assert "httpx2" not in sys.modules and "httpx" not in sys.modules
with llmtally.track() as t:
    import httpx2
    fake = FakeProvider([Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")])
    client = httpx2.Client(transport=fake.httpx2_transport())
    client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
print(t.total_tokens, t.cost)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["24", "0.00111"]

    def test_late_import_of_boto3(self) -> None:
        """boto3 imported inside a scope: urllib3 arrives with it and is hooked as it loads."""
        import subprocess
        import sys

        code = """
import sys, llmtally
from llmtally.testing import FakeProvider, Reply
fake = FakeProvider([Reply(text="x", prompt_tokens=11, completion_tokens=13)])
with fake.serve() as url, llmtally.track() as t:
    assert "urllib3" not in sys.modules and "botocore" not in sys.modules
    import boto3
    client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=url,
                          aws_access_key_id="AKIAFAKE", aws_secret_access_key="x")
    client.converse(modelId="amazon.nova-pro-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}])
print(t.total_tokens, t.cost)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["24", "0.0000504"]

    def test_late_import_of_requests_and_aiohttp(self) -> None:
        """requests and aiohttp imported inside a scope, after an idempotent second instrument()."""
        import subprocess
        import sys

        code = """
import asyncio, sys, llmtally
from llmtally.testing import FakeProvider, Reply
fake = FakeProvider([Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")] * 2)
body = {"model": "gpt-4", "messages": []}
with fake.serve() as url, llmtally.track() as t:
    llmtally.instrument()
    assert "requests" not in sys.modules and "aiohttp" not in sys.modules
    import requests
    requests.post(url + "/v1/chat/completions", json=body).json()
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json=body) as r:
                await r.json()

    asyncio.run(main())
print(t.requests, t.total_tokens, t.cost)
"""
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["2", "48", "0.00222"]


class TestConcurrentReads:
    """Reading tallies while other threads make calls settles each call exactly once."""

    def test_reads_race_with_calls(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())
        totals: list[int] = []
        mine_counts: list[int] = []

        def worker() -> None:
            with llmtally.track() as mine:
                for _ in range(50):
                    post(client)
                    totals.append(mine.total_tokens)  # reads flush everyone's queued calls
            mine_counts.append(mine.successful_requests)

        with llmtally.track() as outer:
            threads = [threading.Thread(target=worker) for _ in range(6)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        assert outer.successful_requests == 300 and len(outer.calls) == 300
        assert outer.total_tokens == 300 * 24 and outer.cost == Decimal("0.00111") * 300
        assert len({id(c) for c in outer.calls}) == 300
        assert mine_counts == [50] * 6


class TestByModel:
    """Per-model totals follow every call, however often they are read."""

    def test_incremental(self, fake: FakeProvider) -> None:
        fake.add(joke())
        fake.add(Reply(text="b", prompt_tokens=100, completion_tokens=10, model="gpt-4o-mini"))
        fake.add(joke())
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            post(client)
            assert list(t.by_model) == ["gpt-4"] and t.by_model["gpt-4"].requests == 1
            post(client)
            post(client)
        gpt4, mini = t.by_model["gpt-4"], t.by_model["gpt-4o-mini"]
        assert (gpt4.requests, gpt4.prompt_tokens, gpt4.completion_tokens) == (2, 22, 26)
        assert gpt4.cost == Decimal("0.00222")
        assert mini.cost == llmtally.cost_of("gpt-4o-mini", input_tokens=100, output_tokens=10)
        assert t.cost == gpt4.cost + mini.cost
        assert sum(m.total_tokens for m in t.by_model.values()) == t.total_tokens


class TestSuppress:
    """Calls inside ``with llmtally.suppress():`` are not metered: not counted, limited or recorded."""

    def test_not_counted_in_any_scope(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())
        got: list[llmtally.Call] = []
        from llmtally._runtime import RUNTIME

        RUNTIME.add_sink(got.append)
        try:
            with llmtally.track() as outer:
                post(client)
                with llmtally.suppress():
                    post(client)
                    with llmtally.track() as inner:  # a scope opened inside stays unmetered
                        post(client)
                post(client)
            llmtally.flush()
        finally:
            RUNTIME.remove_sink(got.append)
        assert len(fake.requests) == 4
        assert outer.successful_requests == 2 and inner.successful_requests == 0
        assert len(got) == 2  # the sinks (the ledger) see only the metered calls

    def test_no_limit_applies(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track(max_requests=1) as t:
            post(client)
            with llmtally.suppress():
                post(client)  # not refused: suppressed calls are not checked either
            with pytest.raises(llmtally.BudgetExceeded):
                post(client)
        assert t.successful_requests == 1 and len(fake.requests) == 2

    def test_carried_into_threads_and_tasks(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())

        async def in_task() -> None:
            await asyncio.to_thread(post, client)

        with llmtally.track() as t:
            with llmtally.suppress():
                thread = threading.Thread(target=post, args=(client,))
                thread.start()
                thread.join()
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(lambda _: post(client), range(3)))
                asyncio.run(in_task())
            post(client)
        assert len(fake.requests) == 6 and t.successful_requests == 1

    async def test_async_with(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.AsyncClient(transport=fake.httpx2_transport())
        async with llmtally.track() as t:
            async with llmtally.suppress():
                await client.post("http://fake/v1/chat/completions", json=CHAT)
            await client.post("http://fake/v1/chat/completions", json=CHAT)
        assert t.successful_requests == 1


class TestOneScopeManyContexts:
    """One Tally entered at once by many tasks or threads: each context restores its own state."""

    async def test_decorated_coroutine_under_gather(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.AsyncClient(transport=fake.httpx2_transport())

        @llmtally.track("api")
        async def handle(i: int) -> int:
            await asyncio.sleep(0.001 * (i % 3))  # interleave the tasks' enters and exits
            await client.post("http://fake/v1/chat/completions", json=CHAT)
            return i

        assert await asyncio.gather(*(handle(i) for i in range(40))) == list(range(40))
        assert handle.tally.successful_requests == 40
        assert llmtally.current_scopes() == ()

    def test_shared_scope_object_in_a_pool(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())
        api = llmtally.track("api")

        def handle(_: int) -> None:
            with api:
                post(client)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(handle, range(80)))
            # Later, unrelated work on the same workers is not counted in "api".
            with llmtally.track("later") as later:
                list(pool.map(lambda _: post(client), range(20)))
            leaked = list(pool.map(lambda _: llmtally.current_scopes(), range(20)))
        assert api.successful_requests == 80 and later.successful_requests == 20
        assert leaked == [()] * 20


class TestLimitArguments:
    """A limit that cannot be enforced is refused when the scope is made, naming the problem."""

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"max_tokens": "a hundred"}, "max_tokens must be a whole number"),
            ({"max_requests": -1}, "max_requests must be a whole number"),
            ({"max_cost": "-0.5"}, "max_cost must be a finite amount"),
            ({"max_cost": "abc"}, "max_cost must be an amount in USD"),
            ({"max_cost": "NaN"}, "max_cost must be a finite amount"),
            ({"max_cost": 1, "on_exceed": "ignore"}, "on_exceed must be 'raise' or 'warn'"),
            ({"on_exceed": "bogus"}, "on_exceed must be 'raise' or 'warn'"),
            ({"preflight": True}, "preflight=True prices each request against max_cost"),
            ({"preflight": True, "max_requests": 3}, "preflight=True prices each request against max_cost"),
        ],
    )
    def test_bad_limits(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            llmtally.track(**kwargs)  # type: ignore[call-overload]

    def test_float_cost_is_its_decimal(self) -> None:
        t = llmtally.track(max_cost=0.1)
        assert t._limits.max_cost == Decimal("0.1")


def test_one_suppress_object_in_many_threads(fake: FakeProvider) -> None:
    """A module-level ``quiet = llmtally.suppress()`` entered by a pool's threads at once."""
    fake.handler = lambda req: joke()
    client = httpx2.Client(transport=fake.httpx2_transport())
    quiet = llmtally.suppress()

    def handle(_: int) -> None:
        with quiet:
            post(client)

    with llmtally.track() as t, ThreadPoolExecutor(8) as pool:
        list(pool.map(handle, range(60)))
        post(client)
    assert t.successful_requests == 1 and len(fake.requests) == 61


class TestGenerators:
    """Scopes held across ``yield``, and decorated generator functions."""

    def test_generator_closed_inside_another_scope(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())

        def gen():  # type: ignore[no-untyped-def]
            with llmtally.track("g") as g:
                yield g
                post(client)
                yield g

        it = gen()
        g = next(it)
        with llmtally.track("outer") as outer:
            next(it)  # a call inside the generator: counted in g (and in outer, open around it)
            it.close()  # g leaves while outer, entered after it, is still open
            assert llmtally.current_scopes() == (outer,)
            post(client)  # counted in outer only
        assert llmtally.current_scopes() == ()
        assert (g.successful_requests, outer.successful_requests) == (1, 2)

    async def test_async_generator_finished_in_another_task(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.AsyncClient(transport=fake.httpx2_transport())

        async def agen():  # type: ignore[no-untyped-def]
            async with llmtally.track("g") as g:
                yield g
                await client.post("http://fake/v1/chat/completions", json=CHAT)
                yield g

        ag = agen()
        g = await ag.__anext__()

        async def consume() -> None:
            async for _ in ag:
                pass

        await asyncio.create_task(consume())  # no ValueError from a token of another context
        assert g.successful_requests == 1

    def test_decorated_generator(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.Client(transport=fake.httpx2_transport())

        @llmtally.track("gen")
        def gen(n: int):  # type: ignore[no-untyped-def]
            for i in range(n):
                post(client)
                got = yield i
                assert got in (None, "hello")
            return "done"

        it = gen(3)
        assert next(it) == 0
        post(client)  # the caller's own call between steps: not the generator's
        assert it.send("hello") == 1
        assert list(it) == [2]
        assert gen.tally.successful_requests == 3  # type: ignore[attr-defined]
        with pytest.raises(KeyError):
            g2 = gen(5)
            next(g2)
            g2.throw(KeyError("boom"))  # thrown in, not caught by the generator: raised out
        it3 = gen(5)
        next(it3)
        it3.close()
        assert gen.tally.successful_requests == 5  # type: ignore[attr-defined]
        assert llmtally.current_scopes() == ()

    async def test_decorated_async_generator(self, fake: FakeProvider) -> None:
        fake.handler = lambda req: joke()
        client = httpx2.AsyncClient(transport=fake.httpx2_transport())

        @llmtally.track("agen")
        async def agen(n: int):  # type: ignore[no-untyped-def]
            for i in range(n):
                await client.post("http://fake/v1/chat/completions", json=CHAT)
                yield i

        assert [i async for i in agen(3)] == [0, 1, 2]
        assert agen.tally.successful_requests == 3  # type: ignore[attr-defined]
        it = agen(5)
        assert await it.__anext__() == 0
        await it.aclose()
        assert agen.tally.successful_requests == 4  # type: ignore[attr-defined]
