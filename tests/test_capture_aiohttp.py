"""The aiohttp adapter, over real loopback HTTP: whatever reads the body, the call is counted once."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
import quicktok

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}
STREAMED = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
CALL = Decimal("0.00111")  # gpt-4: 11 + 13 tokens
ANSWER = "Why did the chicken cross the road? To get to the other side."


def joke(req: FakeRequest) -> Reply:
    return Reply(text=ANSWER, prompt_tokens=11, completion_tokens=13, model="gpt-4")


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeProvider, str, aiohttp.ClientSession]]:
    fake = FakeProvider(handler=joke)
    with fake.serve() as url:
        async with aiohttp.ClientSession() as session:
            yield fake, url + "/v1/chat/completions", session


Served = tuple[FakeProvider, str, aiohttp.ClientSession]


class TestBodies:
    """A JSON answer, read by json(), read() or text()."""

    async def test_json(self, served: Served) -> None:
        _, url, session = served
        async with llmtally.track() as t:
            async with session.post(url, json=CHAT) as r:
                assert (await r.json())["usage"]["completion_tokens"] == 13
            async with session.post(url, data=b'{"model": "gpt-4", "messages": []}') as r:
                await r.text()
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost) == (2, 22, 26, 2 * CALL)
        assert t.calls[0].requested_model == "gpt-4" and t.calls[0].url_host == "127.0.0.1"

    async def test_base_url_session(self, served: Served) -> None:
        _, url, _ = served
        base = url.removesuffix("/v1/chat/completions")
        async with aiohttp.ClientSession(base_url=base) as session:
            async with llmtally.track() as t, session.post("/v1/chat/completions", json=CHAT) as r:
                await r.read()
        assert t.successful_requests == 1 and t.cost == CALL

    async def test_http_error_is_a_failed_request(self, served: Served) -> None:
        fake, url, session = served
        fake.handler = lambda req: Reply(status=500, error="boom")
        async with llmtally.track() as t, session.post(url, json=CHAT) as r:
            assert r.status == 500 and b"boom" in await r.read()
        assert (t.failed_requests, t.successful_requests, t.cost) == (1, 0, 0)

    async def test_connection_error(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        async with aiohttp.ClientSession() as session, llmtally.track() as t:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT)
        assert t.failed_requests == 1


class TestStreams:
    """Server-sent events, read line by line, in chunks, or released early."""

    async def test_lines_with_usage(self, served: Served) -> None:
        _, url, session = served
        async with llmtally.track() as t, session.post(url, json=STREAMED) as r:
            lines = [line async for line in r.content]
        assert lines[-2] == b"data: [DONE]\n"
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)
        assert t.calls[0].stream

    async def test_chunks_without_usage_are_counted_offline(self, served: Served) -> None:
        _, url, session = served
        async with llmtally.track() as t, session.post(url, json={**CHAT, "stream": True}) as r:
            async for _ in r.content.iter_chunked(7):
                pass
        answer = len(quicktok.get_encoding("cl100k_base").encode_ordinary(ANSWER))
        assert t.estimated_requests == 1 and t.completion_tokens == answer and len(t.calls) == 1

    async def test_released_early_is_counted_once_not_failed(self, served: Served) -> None:
        fake, url, session = served
        fake.handler = lambda req: Reply(text=ANSWER * 50, prompt_tokens=11, model="gpt-4")
        async with llmtally.track() as t:
            async with session.post(url, json={**CHAT, "stream": True}) as r:
                await r.content.readline()
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)
        assert t.calls[0].estimated


class TestControl:
    """Limits, suppress and uninstrument apply to aiohttp as to every client."""

    async def test_refused_before_sending(self, served: Served) -> None:
        fake, url, session = served
        async with llmtally.track("agent", max_requests=1) as t:
            async with session.post(url, json=CHAT) as r:
                await r.read()
            with pytest.raises(llmtally.BudgetExceeded):
                await session.post(url, json=CHAT)
        assert len(fake.requests) == 1 and t.successful_requests == 1

    async def test_suppressed(self, served: Served) -> None:
        fake, url, session = served
        async with llmtally.track() as t, llmtally.suppress(), session.post(url, json=CHAT) as r:
            await r.read()
        assert len(fake.requests) == 1 and t.successful_requests == 0

    def test_uninstrument_restores(self) -> None:
        llmtally.instrument()
        assert hasattr(aiohttp.ClientSession._request, "__llmtally_original__")
        llmtally.uninstrument()
        assert not hasattr(aiohttp.ClientSession._request, "__llmtally_original__")
        assert not hasattr(aiohttp.ClientResponse.release, "__llmtally_original__")
        llmtally.instrument()


class TestDecompressionAndDrops:
    async def test_auto_decompress_off(self) -> None:
        """A session that hands the caller gzip as it came: the exchange inflates it itself."""
        import gzip
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        usage = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
        events = [{"model": "gpt-4", "choices": [{"delta": {"content": ANSWER}}]},
                  {"model": "gpt-4", "choices": [], "usage": usage}]  # fmt: skip
        body = gzip.compress(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events))

        class Gzipped(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                for name, value in (("content-type", "text/event-stream"), ("content-encoding", "gzip"),
                                    ("content-length", str(len(body)))):  # fmt: skip
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Gzipped)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/v1/chat/completions"
            async with llmtally.track() as t, aiohttp.ClientSession(auto_decompress=False) as session:
                async with session.post(url, json=STREAMED) as r:
                    got = await r.read()
        finally:
            server.shutdown()
            server.server_close()
        assert got == body  # the caller's bytes, compressed as sent
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)

    async def test_dropped_unread_responses_are_counted(self, served: Served) -> None:
        """Responses never read nor released: counted when collected, reservations released."""
        import gc

        from llmtally._capture import aiohttp as adapter

        _, url, _ = served
        async with llmtally.track() as t:
            session = aiohttp.ClientSession()
            for _ in range(5):
                r = await session.post(url, json=STREAMED)
                del r
            await session.close()
            gc.collect()
        assert t.requests == 5 and not adapter._tapped
