"""A refused request reaches the caller as ``llmtally.BudgetExceeded`` through every SDK and framework.

The refusal is raised inside the HTTP client's ``send``, deep in the SDK, before anything is sent.
``BudgetExceeded`` derives from ``BaseException`` (see ``llmtally._limits``) so that the SDKs'
``except Exception`` handlers neither retry it nor wrap it. Every client here keeps its DEFAULT
retry settings, so a refusal the SDK took for a connection error would be retried, with backoff, and
come out as the SDK's own error: each test checks the exact type, the scope and limit, that nothing
is chained, that the server received nothing and that no backoff was slept.
"""

from __future__ import annotations

import os

# LiteLLM fetches its model cost map from the network at import unless told to use its local copy.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anthropic
import httpx2
import litellm
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import CHAT

# LiteLLM's pydantic models warn about ReadOnly TypedDict items when first built.
pytestmark = pytest.mark.filterwarnings("ignore:Items? '.*ReadOnly:UserWarning")

if hasattr(litellm, "telemetry"):
    litellm.telemetry = False

GPT = "gpt-4"
CLAUDE = "claude-sonnet-4-20250514"
#: The packages a refusal through LangChain must come up through, outermost first.
LC_OPENAI = ("langchain_core", "langchain_openai", "openai")
LC_ANTHROPIC = ("langchain_core", "langchain_anthropic", "anthropic")

#: The refused call must return well within the SDKs' retry backoff: the openai and anthropic SDKs'
#: default two retries sleep at least 0.375 s + 0.75 s. A bound on retries, not on speed.
NO_RETRY_BOUND = 0.5


def check_refusal(
    exc: BaseException, fake: FakeProvider, before: int, elapsed: float, through: tuple[str, ...]
) -> None:
    """The scope's own BudgetExceeded: unchained, unsent, unretried, raised from inside ``through``."""
    assert type(exc) is llmtally.BudgetExceeded
    assert (exc.scope, exc.limit, exc.allowed, exc.spent) == ("agent", "requests", 1, 1)
    assert "the request was not sent" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None
    assert len(fake.requests) == before, "the refused request reached the server"
    assert elapsed < NO_RETRY_BOUND, f"the refusal took {elapsed:.3f} s: the SDK retried it"
    # It was raised where the SDK sends the request, and came up through every layer in ``through``
    # (by the modules the frames run, not their paths: a checkout may itself be called llmtally).
    packages = []
    tb = exc.__traceback__
    while tb is not None:
        packages.append(str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0])
        tb = tb.tb_next
    assert all(pkg in packages for pkg in through), (through, packages)
    sender = next(pkg for pkg in reversed(packages) if pkg != "llmtally")
    assert sender == through[-1], f"raised under {sender}, not in {through[-1]}"


def refused(fake: FakeProvider, call: Callable[[], object], *, through: tuple[str, ...]) -> None:
    """Make ``call`` (inside a scope at its limit) and check how the refusal comes out."""
    before = len(fake.requests)
    start = time.monotonic()
    with pytest.raises(llmtally.BudgetExceeded) as info:
        call()
    check_refusal(info.value, fake, before, time.monotonic() - start, through)


async def arefused(
    fake: FakeProvider, call: Callable[[], Awaitable[object]], *, through: tuple[str, ...]
) -> None:
    """`refused`, for a coroutine."""
    before = len(fake.requests)
    start = time.monotonic()
    with pytest.raises(llmtally.BudgetExceeded) as info:
        await call()
    check_refusal(info.value, fake, before, time.monotonic() - start, through)


def check_scope(t: llmtally.Tally, fake: FakeProvider) -> None:
    """One call went out and was counted; the refusal is neither a request nor a failure."""
    assert len(fake.requests) == 1
    assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)


# -- clients with their SDKs' default retries (the conftest's clients have max_retries=0) ---------


@pytest.fixture(scope="module")
def oai(server: tuple[FakeProvider, str]) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=server[1] + "/v1", api_key="sk-test")
    assert client.max_retries == openai.DEFAULT_MAX_RETRIES > 0
    yield client
    client.close()


@pytest.fixture
async def aoai(server: tuple[FakeProvider, str]) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server[1] + "/v1", api_key="sk-test")
    assert client.max_retries == openai.DEFAULT_MAX_RETRIES > 0
    yield client
    await client.close()


@pytest.fixture(scope="module")
def ant(server: tuple[FakeProvider, str]) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server[1], api_key="sk-ant-test")
    assert client.max_retries == anthropic.DEFAULT_MAX_RETRIES > 0
    yield client
    client.close()


@pytest.fixture
async def aant(server: tuple[FakeProvider, str]) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server[1], api_key="sk-ant-test")
    assert client.max_retries == anthropic.DEFAULT_MAX_RETRIES > 0
    yield client
    await client.close()


def chat(client: openai.OpenAI) -> object:
    return client.chat.completions.create(model=GPT, messages=CHAT)


def message(client: anthropic.Anthropic) -> object:
    return client.messages.create(model=CLAUDE, max_tokens=100, messages=CHAT)


class TestOpenAISDK:
    """openai.OpenAI and AsyncOpenAI: chat completions, plain and streamed."""

    def test_sync_create(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        with llmtally.track("agent", max_requests=1) as t:
            chat(oai)
            refused(fake, lambda: chat(oai), through=("openai",))
        check_scope(t, fake)

    def test_sync_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        def stream() -> list[object]:
            return list(oai.chat.completions.create(model=GPT, messages=CHAT, stream=True))

        with llmtally.track("agent", max_requests=1) as t:
            chat(oai)
            refused(fake, stream, through=("openai",))
        check_scope(t, fake)

    async def test_async_create(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        async with llmtally.track("agent", max_requests=1) as t:
            await aoai.chat.completions.create(model=GPT, messages=CHAT)
            await arefused(
                fake, lambda: aoai.chat.completions.create(model=GPT, messages=CHAT), through=("openai",)
            )
        check_scope(t, fake)

    async def test_async_stream(self, fake: FakeProvider, aoai: openai.AsyncOpenAI) -> None:
        async def stream() -> list[object]:
            return [
                c async for c in await aoai.chat.completions.create(model=GPT, messages=CHAT, stream=True)
            ]

        async with llmtally.track("agent", max_requests=1) as t:
            await aoai.chat.completions.create(model=GPT, messages=CHAT)
            await arefused(fake, stream, through=("openai",))
        check_scope(t, fake)


class TestAnthropicSDK:
    """anthropic.Anthropic and AsyncAnthropic: messages.create and messages.stream."""

    def test_sync_create(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        with llmtally.track("agent", max_requests=1) as t:
            message(ant)
            refused(fake, lambda: message(ant), through=("anthropic",))
        check_scope(t, fake)

    def test_sync_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        def stream() -> None:
            with ant.messages.stream(model=CLAUDE, max_tokens=100, messages=CHAT) as s:
                s.until_done()

        with llmtally.track("agent", max_requests=1) as t:
            message(ant)
            refused(fake, stream, through=("anthropic",))
        check_scope(t, fake)

    async def test_async_create(self, fake: FakeProvider, aant: anthropic.AsyncAnthropic) -> None:
        async with llmtally.track("agent", max_requests=1) as t:
            await aant.messages.create(model=CLAUDE, max_tokens=100, messages=CHAT)
            await arefused(
                fake,
                lambda: aant.messages.create(model=CLAUDE, max_tokens=100, messages=CHAT),
                through=("anthropic",),
            )
        check_scope(t, fake)

    async def test_async_stream(self, fake: FakeProvider, aant: anthropic.AsyncAnthropic) -> None:
        async def stream() -> None:
            async with aant.messages.stream(model=CLAUDE, max_tokens=100, messages=CHAT) as s:
                await s.until_done()

        async with llmtally.track("agent", max_requests=1) as t:
            await aant.messages.create(model=CLAUDE, max_tokens=100, messages=CHAT)
            await arefused(fake, stream, through=("anthropic",))
        check_scope(t, fake)

    def test_an_ordinary_exception_in_send_is_retried_and_wrapped(self) -> None:
        # The control: what the anthropic SDK does with an Exception raised where llmtally raises
        # its refusal, and so what the checks above would catch if BudgetExceeded were one.
        attempts: list[str] = []

        class Refusal(Exception):
            """A refusal that is an ordinary Exception."""

        def refuse(request: httpx2.Request) -> httpx2.Response:
            attempts.append(request.url.path)
            raise Refusal("not sent")

        client = anthropic.Anthropic(
            base_url="http://fake",
            api_key="k",
            http_client=httpx2.Client(transport=httpx2.MockTransport(refuse)),
        )
        start = time.monotonic()
        with pytest.raises(anthropic.APIConnectionError) as info:
            message(client)
        elapsed = time.monotonic() - start
        client.close()
        assert attempts == ["/v1/messages"] * (1 + anthropic.DEFAULT_MAX_RETRIES)
        assert type(info.value.__cause__) is Refusal
        assert elapsed >= NO_RETRY_BOUND


class TestLangChain:
    """ChatOpenAI and ChatAnthropic, with their default retries."""

    def test_chat_openai_invoke(self, fake: FakeProvider, url: str) -> None:
        llm = ChatOpenAI(model=GPT, base_url=url + "/v1", api_key="sk-test")  # type: ignore[arg-type]
        with llmtally.track("agent", max_requests=1) as t:
            llm.invoke("Tell me a joke")
            refused(fake, lambda: llm.invoke("Tell me a joke"), through=LC_OPENAI)
        check_scope(t, fake)

    async def test_chat_openai_ainvoke(self, fake: FakeProvider, url: str) -> None:
        # langchain-openai caches one default async client per base URL, bound to the event loop
        # that first used it; each async test brings its own.
        async with openai.DefaultAsyncHttpxClient() as http:
            llm = ChatOpenAI(model=GPT, base_url=url + "/v1", api_key="sk-test", http_async_client=http)  # type: ignore[arg-type]
            async with llmtally.track("agent", max_requests=1) as t:
                await llm.ainvoke("Tell me a joke")
                await arefused(fake, lambda: llm.ainvoke("Tell me a joke"), through=LC_OPENAI)
        check_scope(t, fake)

    async def test_chat_openai_astream(self, fake: FakeProvider, url: str) -> None:
        # With usage in the stream the first call settles exactly, without loading a tokenizer
        # inside the refused call's timing.
        async def stream(llm: ChatOpenAI) -> list[object]:
            return [c async for c in llm.astream("Tell me a joke", stream_usage=True)]

        async with openai.DefaultAsyncHttpxClient() as http:
            llm = ChatOpenAI(model=GPT, base_url=url + "/v1", api_key="sk-test", http_async_client=http)  # type: ignore[arg-type]
            async with llmtally.track("agent", max_requests=1) as t:
                await stream(llm)
                await arefused(fake, lambda: stream(llm), through=LC_OPENAI)
        check_scope(t, fake)

    def test_chat_anthropic_invoke(self, fake: FakeProvider, url: str) -> None:
        llm = ChatAnthropic(model_name=CLAUDE, base_url=url, api_key="sk-ant-test")  # type: ignore[arg-type,call-arg]
        assert llm.max_retries > 0
        with llmtally.track("agent", max_requests=1) as t:
            llm.invoke("Tell me a joke")
            refused(fake, lambda: llm.invoke("Tell me a joke"), through=LC_ANTHROPIC)
        check_scope(t, fake)

    async def test_chat_anthropic_ainvoke(self, fake: FakeProvider, url: str) -> None:
        # langchain-anthropic caches its default async client per base URL, bound to the first event
        # loop: a base URL of its own (the fake routes on the path's suffix) gives this test a fresh one.
        llm = ChatAnthropic(model_name=CLAUDE, base_url=url + "/ainvoke", api_key="sk-ant-test")  # type: ignore[arg-type,call-arg]
        async with llmtally.track("agent", max_requests=1) as t:
            await llm.ainvoke("Tell me a joke")
            await arefused(fake, lambda: llm.ainvoke("Tell me a joke"), through=LC_ANTHROPIC)
        check_scope(t, fake)

    async def test_chat_anthropic_astream(self, fake: FakeProvider, url: str) -> None:
        async def stream() -> list[object]:
            return [c async for c in llm.astream("Tell me a joke")]

        llm = ChatAnthropic(model_name=CLAUDE, base_url=url + "/astream", api_key="sk-ant-test")  # type: ignore[arg-type,call-arg]
        async with llmtally.track("agent", max_requests=1) as t:
            await stream()
            await arefused(fake, stream, through=LC_ANTHROPIC)
        check_scope(t, fake)


class TestLiteLLM:
    """litellm.completion and acompletion, on its OpenAI route (the openai SDK) and its Anthropic route."""

    def openai_kw(self, url: str) -> dict[str, object]:
        return {"model": "openai/" + GPT, "api_base": url + "/v1", "api_key": "sk-test", "messages": CHAT}

    def anthropic_kw(self, url: str) -> dict[str, object]:
        return {"model": "anthropic/" + CLAUDE, "api_base": url, "api_key": "sk-ant-test", "messages": CHAT}

    def test_openai_route(self, fake: FakeProvider, url: str) -> None:
        kw = self.openai_kw(url)
        with llmtally.track("agent", max_requests=1) as t:
            litellm.completion(**kw)
            refused(fake, lambda: litellm.completion(**kw), through=("litellm", "openai"))
        check_scope(t, fake)
        assert fake.requests[0].path == "/v1/chat/completions"

    async def test_openai_route_async(self, fake: FakeProvider, url: str) -> None:
        kw = self.openai_kw(url)
        async with llmtally.track("agent", max_requests=1) as t:
            await litellm.acompletion(**kw)
            await arefused(fake, lambda: litellm.acompletion(**kw), through=("litellm", "openai"))
        check_scope(t, fake)

    def test_anthropic_route(self, fake: FakeProvider, url: str) -> None:
        kw = self.anthropic_kw(url)
        with llmtally.track("agent", max_requests=1) as t:
            litellm.completion(**kw)
            refused(fake, lambda: litellm.completion(**kw), through=("litellm",))
        check_scope(t, fake)
        assert fake.requests[0].path == "/v1/messages"

    async def test_anthropic_route_async(self, fake: FakeProvider, url: str) -> None:
        kw = self.anthropic_kw(url)
        async with llmtally.track("agent", max_requests=1) as t:
            await litellm.acompletion(**kw)
            await arefused(fake, lambda: litellm.acompletion(**kw), through=("litellm",))
        check_scope(t, fake)


class TestCallerCode:
    """The caller's own ``except Exception`` does not catch a refusal; catching it by name does."""

    def test_a_base_exception(self) -> None:
        assert issubclass(llmtally.BudgetExceeded, BaseException)
        assert not issubclass(llmtally.BudgetExceeded, Exception)

    def test_except_exception_does_not_swallow_it(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        swallowed: list[Exception] = []
        with llmtally.track("agent", max_requests=0):
            with pytest.raises(llmtally.BudgetExceeded):
                try:
                    message(ant)
                except Exception as exc:  # what a bare handler in the caller's code sees: nothing
                    swallowed.append(exc)
        assert swallowed == []
        assert fake.requests == []

    def test_caught_by_name(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        with llmtally.track("agent", max_requests=0):
            try:
                message(ant)
            except llmtally.BudgetExceeded as exc:
                caught: llmtally.BudgetExceeded | None = exc
            else:
                caught = None
        assert caught is not None and (caught.scope, caught.limit, caught.spent) == ("agent", "requests", 0)
        assert fake.requests == []

    def test_an_agent_loop_that_retries_on_exception_is_stopped(
        self, fake: FakeProvider, oai: openai.OpenAI
    ) -> None:
        # The model keeps answering something the agent cannot parse; the agent keeps trying.
        fake.handler = lambda req: Reply(text="not json", model=GPT)
        attempts = errors = 0
        with llmtally.track("agent", max_requests=3) as t:
            with pytest.raises(llmtally.BudgetExceeded) as info:
                while attempts < 10:
                    attempts += 1
                    try:
                        answer = oai.chat.completions.create(model=GPT, messages=CHAT)
                        json.loads(answer.choices[0].message.content or "")
                    except Exception:
                        errors += 1
                        continue
        assert (attempts, errors) == (4, 3)
        assert len(fake.requests) == 3 and t.successful_requests == 3
        assert (info.value.limit, info.value.allowed, info.value.spent) == ("requests", 3, 3)


class TestLangChainAgent:
    """A tool-calling agent (langchain.agents.create_agent) that would loop for ever is stopped."""

    @staticmethod
    def agent(llm: ChatOpenAI) -> object:
        from langchain.agents import create_agent
        from langchain_core.tools import tool

        @tool
        def search(query: str) -> str:
            """Search the web."""
            return "nothing found"

        return create_agent(llm, [search])

    @staticmethod
    def always_search(fake: FakeProvider) -> None:
        # The model asks for the tool every time: without a limit the run would not end.
        fake.handler = lambda req: Reply(
            tool_calls=[ToolCall("search", {"query": "more"})],
            prompt_tokens=11,
            completion_tokens=13,
            model=GPT,
        )

    def test_invoke(self, fake: FakeProvider, url: str) -> None:
        self.always_search(fake)
        agent = self.agent(ChatOpenAI(model=GPT, base_url=url + "/v1", api_key="sk-test"))  # type: ignore[arg-type]
        with llmtally.track("agent", max_requests=3) as t, pytest.raises(llmtally.BudgetExceeded) as info:
            agent.invoke({"messages": [{"role": "user", "content": "find it"}]})  # type: ignore[attr-defined]
        assert type(info.value) is llmtally.BudgetExceeded and info.value.spent == 3
        assert len(fake.requests) == 3 and t.successful_requests == 3

    async def test_ainvoke(self, fake: FakeProvider, url: str) -> None:
        self.always_search(fake)
        async with openai.DefaultAsyncHttpxClient() as http:
            llm = ChatOpenAI(model=GPT, base_url=url + "/v1", api_key="sk-test", http_async_client=http)  # type: ignore[arg-type]
            agent = self.agent(llm)
            async with llmtally.track("agent", max_requests=3) as t:
                with pytest.raises(llmtally.BudgetExceeded) as info:
                    await agent.ainvoke({"messages": [{"role": "user", "content": "find it"}]})  # type: ignore[attr-defined]
        assert type(info.value) is llmtally.BudgetExceeded and info.value.spent == 3
        assert len(fake.requests) == 3 and t.successful_requests == 3
