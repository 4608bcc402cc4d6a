"""The ollama SDK's native API, for real, over loopback HTTP: counted, streamed, never priced at $0."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def answer(req: object) -> Reply:
    return Reply(
        text="Because of Rayleigh scattering.", prompt_tokens=26, completion_tokens=9, model="llama3.2"
    )


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(handler=answer)
    with fake.serve() as url:
        yield fake, url


class TestOllama:
    """chat, generate and embed, plain and streamed (NDJSON), sync and async."""

    def test_chat_generate_embed(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        client = ollama.Client(host=url)
        with llmtally.track() as t:
            r = client.chat(model="llama3.2", messages=MESSAGES, stream=False)
            client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=False)
            client.embed(model="llama3.2", input=["a", "b"])
        assert r.message.content == "Because of Rayleigh scattering."
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (3, 78, 18)
        # Local models: counted, their cost unknown, said so, never $0 in disguise.
        assert t.unpriced_requests == 3 and t.unpriced_models == ["llama3.2"]
        assert all(c.cost is None and c.provider == "ollama" for c in t.calls)

    def test_streams(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        client = ollama.Client(host=url)
        with llmtally.track() as t:
            text = "".join(
                p.message.content for p in client.chat(model="llama3.2", messages=MESSAGES, stream=True)
            )
            list(client.generate(model="llama3.2", prompt="x", stream=True))
        assert text == "Because of Rayleigh scattering."
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (52, 18, 0)
        assert all(c.stream for c in t.calls) and len(fake.requests) == 2

    async def test_async(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        client = ollama.AsyncClient(host=url)
        async with llmtally.track() as t:
            await client.chat(model="llama3.2", messages=MESSAGES, stream=False)
            async for _ in await client.chat(model="llama3.2", messages=MESSAGES, stream=True):
                pass
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 52, 18)

    def test_refused_before_sending(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        client = ollama.Client(host=url)
        with llmtally.track("agent", max_requests=1) as t:
            client.chat(model="llama3.2", messages=MESSAGES, stream=False)
            with pytest.raises(llmtally.BudgetExceeded):
                client.chat(model="llama3.2", messages=MESSAGES, stream=False)
        assert len(fake.requests) == 1 and t.successful_requests == 1

    def test_another_api_on_api_chat_is_not_counted(self) -> None:
        """A web app's own /api/chat (not Ollama's) passes through uncounted."""
        app = httpx.MockTransport(lambda req: httpx.Response(200, json={"reply": "hello from the app"}))
        streamed = httpx.MockTransport(
            lambda req: httpx.Response(
                200, headers={"content-type": "application/x-ndjson"}, content=b'{"a":1}\n'
            )
        )
        with llmtally.track() as t:
            httpx.Client(transport=app).post("http://myapp.example/api/chat", json={"text": "hi"})
            httpx.Client(transport=app).post("http://myapp.example/api/chat", content=b"<html>hi</html>")
            with httpx.Client(transport=streamed).stream(
                "POST", "http://myapp.example/api/chat", json={}
            ) as r:
                r.read()
        assert t.calls == []
