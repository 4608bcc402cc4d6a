"""The requests adapter, over real loopback HTTP: bodies and streams counted once, never altered."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import quicktok
import requests

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}
CALL = Decimal("0.00111")  # gpt-4: 11 + 13 tokens


ANSWER = "Why did the chicken cross the road?"


def joke(req: FakeRequest) -> Reply:
    return Reply(text=ANSWER, prompt_tokens=11, completion_tokens=13, model="gpt-4")


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(handler=joke)
    with fake.serve() as url:
        yield fake, url


class TestBodies:
    """A JSON answer, read by requests before send returns."""

    def test_counted_and_priced(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        with llmtally.track() as t:
            r = requests.post(url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 11
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost) == (1, 11, 13, CALL)
        assert t.calls[0].requested_model == "gpt-4" and t.calls[0].url_host == "127.0.0.1"

    def test_session_and_data_bodies(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        with llmtally.track() as t, requests.Session() as s:
            s.post(url + "/v1/chat/completions", data=json.dumps(CHAT))  # a str body
            s.post(url + "/v1/chat/completions", data=json.dumps(CHAT).encode())
            s.get(url + "/v1/models")  # not a model call
        assert t.successful_requests == 2 and t.cost == 2 * CALL

    def test_http_error_is_a_failed_request(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        fake.handler = lambda req: Reply(status=429, error="slow down")
        with llmtally.track() as t:
            r = requests.post(url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and b"slow down" in r.content
        assert (t.failed_requests, t.successful_requests, t.cost) == (1, 0, 0)

    def test_connection_error(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = "/v1beta/models/gemini-2.5-flash:generateContent"
        with llmtally.track() as t, pytest.raises(requests.ConnectionError) as raised:
            requests.post(f"http://127.0.0.1:{port}{path}?key=AIza-secret&alt=sse", json=CHAT, timeout=5)
        assert "AIza-secret" in str(raised.value)  # requests names the URL; the caller sees it all
        error = t.calls[0].error or ""
        assert t.failed_requests == 1 and "ConnectionError" in error and path in error
        assert "AIza-secret" not in error and "?***" in error  # never in the record, the ledger or a log

    def test_redirects_are_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served

        class Moved(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(307)
                self.send_header("location", url + "/v1/chat/completions")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Moved)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            with llmtally.track() as t:
                r = requests.post(f"http://127.0.0.1:{server.server_port}/v1/chat/completions", json=CHAT)
        finally:
            server.shutdown()
            server.server_close()
        assert r.status_code == 200 and len(r.history) == 1 and len(fake.requests) == 1
        assert (t.successful_requests, t.failed_requests, t.cost) == (1, 0, CALL)


class TestStreams:
    """``stream=True``: counted from the chunks as the caller reads them."""

    def test_iter_lines_with_usage(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with llmtally.track() as t:
            with requests.post(url + "/v1/chat/completions", json=body, stream=True) as r:
                lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == b"data: [DONE]"
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)
        assert t.calls[0].stream

    def test_small_chunks_without_usage_are_counted_offline(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        with llmtally.track() as t, requests.Session() as s:
            r = s.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}, stream=True)
            raw = b"".join(r.iter_content(chunk_size=7))
            r.close()
        assert raw.endswith(b"data: [DONE]\n\n")
        answer = len(quicktok.get_encoding("cl100k_base").encode_ordinary(ANSWER))
        assert t.estimated_requests == 1 and t.completion_tokens == answer  # counted offline
        assert t.successful_requests == 1 and len(t.calls) == 1

    def test_closed_early_is_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        body = {**CHAT, "stream": True}
        with llmtally.track() as t:
            r = requests.post(url + "/v1/chat/completions", json=body, stream=True)
            next(r.iter_content(chunk_size=16))
            r.close()
        assert t.successful_requests == 1 and len(t.calls) == 1 and t.calls[0].estimated

    def test_read_whole_later(self, served: tuple[FakeProvider, str]) -> None:
        _fake, url = served
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with llmtally.track() as t:
            r = requests.post(url + "/v1/chat/completions", json=body, stream=True)
            assert r.content.endswith(b"data: [DONE]\n\n")
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)


class TestControl:
    """Limits, suppress and uninstrument apply to requests as to every client."""

    def test_refused_before_sending(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        with llmtally.track("agent", max_requests=1) as t:
            requests.post(url + "/v1/chat/completions", json=CHAT)
            with pytest.raises(llmtally.BudgetExceeded):
                requests.post(url + "/v1/chat/completions", json=CHAT)
        assert len(fake.requests) == 1 and t.successful_requests == 1

    def test_suppressed(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        with llmtally.track() as t, llmtally.suppress():
            requests.post(url + "/v1/chat/completions", json=CHAT)
        assert len(fake.requests) == 1 and t.successful_requests == 0

    def test_uninstrument_restores_send(self) -> None:
        llmtally.instrument()
        assert hasattr(requests.Session.send, "__llmtally_original__")
        llmtally.uninstrument()
        assert not hasattr(requests.Session.send, "__llmtally_original__")
        llmtally.instrument()
        llmtally.instrument()  # idempotent
        assert not hasattr(requests.Session.send.__wrapped__, "__llmtally_original__")


def test_an_unread_llm_path_is_listed_once(served: tuple[FakeProvider, str]) -> None:
    """requests runs on urllib3: a POST no wire format reads is looked at once, at the outer seam."""
    from llmtally.testing import unmetered

    _, url = served
    with llmtally.track() as t, unmetered() as missed:
        requests.post(url + "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict", json={})
    assert [path for _, path in missed] == [
        "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict"
    ]
    assert t.calls == []


def test_a_stream_dropped_unread_is_counted(served: tuple[FakeProvider, str]) -> None:
    import gc

    fake, url = served
    with llmtally.track() as t:
        for _ in range(3):
            r = requests.post(url + "/v1/chat/completions", json=CHAT | {"stream": True}, stream=True)
            del r
        gc.collect()
    assert len(fake.requests) == 3 and t.requests == 3


def test_a_relay_keeping_only_raw(served: tuple[FakeProvider, str]) -> None:
    """``return requests.post(..., stream=True).raw.stream()``: the Response is gone at once, the
    body is read later through raw: counted with its usage, not ended early."""
    import gc

    _, url = served

    def relay() -> Any:
        body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        return requests.post(url + "/v1/chat/completions", json=body, stream=True).raw.stream(64)

    with llmtally.track() as t:
        chunks = relay()
        gc.collect()
        got = b"".join(chunks)
    assert b"[DONE]" in got
    assert (t.requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (1, 11, 13, 0)
