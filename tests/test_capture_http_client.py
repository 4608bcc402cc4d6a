"""The standard library's adapter (``urllib.request``, ``http.client``), over real loopback HTTP:
bodies and streams counted once, errors and refusals, the response untouched."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
import requests
import urllib3

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
CALL = Decimal("0.00111")  # gpt-4: 11 + 13 tokens


def joke(req: FakeRequest) -> Reply:
    return Reply(
        text="Why did the chicken cross the road?", prompt_tokens=11, completion_tokens=13, model="gpt-4"
    )


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(handler=joke)
    with fake.serve() as url:
        yield fake, url


def post(url: str, body: dict[str, object]) -> urllib.request.Request:
    data = json.dumps(body).encode()
    return urllib.request.Request(
        url + "/v1/chat/completions", data=data, headers={"content-type": "application/json"}
    )


class TestUrlopen:
    def test_json_body(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t, urllib.request.urlopen(post(url, CHAT)) as r:
            answer = json.load(r)
            assert type(r) is not http.client.HTTPResponse and isinstance(r, http.client.HTTPResponse)
        assert answer["usage"]["prompt_tokens"] == 11 and r.status == 200
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost) == (1, 11, 13, CALL)
        assert t.calls[0].stream is False and t.calls[0].url_host == "127.0.0.1"

    def test_sse_lines(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t, urllib.request.urlopen(post(url, STREAM)) as r:
            lines = [line for line in r if line.strip()]
        assert lines[-1] == b"data: [DONE]\n"
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (
            1,
            11,
            13,
            0,
        )
        assert t.calls[0].stream is True

    def test_small_reads_and_readinto(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            with urllib.request.urlopen(post(url, STREAM)) as r:
                raw = b""
                while piece := r.read(5):
                    raw += piece
            with urllib.request.urlopen(post(url, STREAM)) as r2:
                buf = bytearray(9)
                raw2 = b""
                while n := r2.readinto(buf):
                    raw2 += bytes(buf[:n])
        assert raw.endswith(b"data: [DONE]\n\n") and raw2.endswith(b"data: [DONE]\n\n")
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 22, 26)

    def test_closed_early_is_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            r = urllib.request.urlopen(post(url, {**CHAT, "stream": True}))
            r.readline()
            r.close()
            r.close()
        assert (t.successful_requests, len(t.calls)) == (1, 1) and t.calls[0].estimated

    def test_http_error(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        fake.handler = lambda req: Reply(status=429, error="slow down")
        with llmtally.track() as t, pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(post(url, CHAT))
        assert raised.value.code == 429 and b"slow down" in raised.value.read()
        assert (t.failed_requests, t.successful_requests, t.cost) == (1, 0, 0)

    def test_connection_refused(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with llmtally.track() as t, pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(post(f"http://127.0.0.1:{port}", CHAT), timeout=5)
        assert (t.failed_requests, len(t.calls)) == (1, 1) and "ConnectionRefused" in (t.calls[0].error or "")


class TestHttpClient:
    def test_connection_reused(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
        with llmtally.track() as t:
            for _ in range(3):
                conn.request(
                    "POST", "/v1/chat/completions", json.dumps(CHAT), {"content-type": "application/json"}
                )
                assert json.loads(conn.getresponse().read())["usage"]["total_tokens"] == 24
            conn.request("GET", "/v1/models")  # not a model call
            conn.getresponse().read()
        conn.close()
        assert (t.successful_requests, len(t.calls), t.cost) == (3, 3, 3 * CALL)

    def test_refused_before_sending(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        with llmtally.track("agent", max_requests=1) as t:
            urllib.request.urlopen(post(url, CHAT)).read()
            with pytest.raises(llmtally.BudgetExceeded):
                urllib.request.urlopen(post(url, CHAT))
        assert len(fake.requests) == 1 and t.successful_requests == 1

    def test_stacked_clients_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        """requests and urllib3 run on http.client: their hooks count, this one passes through."""
        _, url = served
        with llmtally.track() as t:
            requests.post(url + "/v1/chat/completions", json=CHAT)
            urllib3.request("POST", url + "/v1/chat/completions", json=CHAT)
            urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False).read()
        assert (t.successful_requests, len(t.calls), t.cost) == (3, 3, 3 * CALL)

    def test_uninstrument_restores(self) -> None:
        assert hasattr(http.client.HTTPConnection.request, "__llmtally_original__")
        llmtally.uninstrument()
        try:
            assert not hasattr(http.client.HTTPConnection.request, "__llmtally_original__")
            assert not hasattr(http.client.HTTPConnection.getresponse, "__llmtally_original__")
        finally:
            llmtally.instrument()
