"""The urllib3 adapter, over real loopback HTTP: preloaded bodies, streamed reads of every kind, raw
gzip, early closes; counted once under requests and through redirects; never altered."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3

import llmtally
from llmtally.testing import FakeProvider, FakeRequest, Reply

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
CALL = Decimal("0.00111")  # gpt-4: 11 + 13 tokens
ANSWER = "Why did the chicken cross the road?"


def joke(req: FakeRequest) -> Reply:
    return Reply(text=ANSWER, prompt_tokens=11, completion_tokens=13, model="gpt-4")


@pytest.fixture
def served() -> Iterator[tuple[FakeProvider, str]]:
    fake = FakeProvider(handler=joke)
    with fake.serve() as url:
        yield fake, url


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def chat_body() -> bytes:
    usage = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
    message = {"role": "assistant", "content": ANSWER}
    return json.dumps({"object": "chat.completion", "model": "gpt-4", "choices": [{"message": message}],
                       "usage": usage}).encode()  # fmt: skip


class Gzipped(BaseHTTPRequestHandler):
    """Answers a chat completion gzip-encoded, as a server does when the client accepts it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        body = gzip.compress(chat_body())
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class ChunkedGzipStream(BaseHTTPRequestHandler):
    """A chat stream, gzip-encoded and chunked: urllib3's stream() hands such a body over raw."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        head = {"object": "chat.completion.chunk", "model": "gpt-4"}
        events = [
            {**head, "choices": [{"delta": {"content": ANSWER}}]},
            {
                **head,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24},
            },
        ]
        body = gzip.compress(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("content-encoding", "gzip")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(0, len(body), 10):
            piece = body[i : i + 10]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


class TestDecoding:
    """Whether the caller reads raw or decoded bytes, the exchange follows its first read."""

    def test_chunked_gzip_streamed_raw(self) -> None:
        server, url = serve(ChunkedGzipStream)
        try:
            with llmtally.track() as t:
                r = urllib3.PoolManager().request("POST", url + "/v1/chat/completions", json=STREAM,
                                                  preload_content=False)  # fmt: skip
                got = b"".join(r.stream(7))  # read_chunked: decode_content=None means raw here
        finally:
            server.shutdown()
            server.server_close()
        assert got[:2] == b"\x1f\x8b"  # what urllib3 gives, untouched
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)

    def test_identity_body_read_raw(self, served: tuple[FakeProvider, str]) -> None:
        """A relay reading raw bytes of an uncompressed body: the same bytes, counted."""
        _, url = served
        with llmtally.track() as t:
            pool = urllib3.PoolManager()
            for body in (STREAM, CHAT):
                r = pool.request("POST", url + "/v1/chat/completions", json=body, preload_content=False)
                b"".join(r.stream(16, decode_content=False))
                r.release_conn()
        assert (t.requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (2, 22, 26, 0)


class TestBodies:
    def test_preloaded(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            r = urllib3.request("POST", url + "/v1/chat/completions", json=CHAT)
        assert r.status == 200 and r.json()["usage"]["prompt_tokens"] == 11
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.cost) == (1, 11, 13, CALL)
        assert t.calls[0].url_host == "127.0.0.1" and t.calls[0].stream is False

    def test_read_later_through_a_pool_manager(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            pool = urllib3.PoolManager()
            r = pool.request(
                "POST", url + "/v1/chat/completions", body=json.dumps(CHAT), preload_content=False
            )
            assert type(r).__name__ == "HTTPResponse" and isinstance(r, urllib3.HTTPResponse)
            assert json.loads(r.data)["usage"]["completion_tokens"] == 13
            r.release_conn()
        assert (t.successful_requests, t.cost) == (1, CALL)

    def test_raw_gzip_read_by_the_caller(self) -> None:
        """botocore reads bodies raw (decode_content=False): the exchange inflates them itself."""
        server, url = serve(Gzipped)
        try:
            with llmtally.track() as t:
                pool = urllib3.PoolManager()
                r = pool.request(
                    "POST",
                    url + "/v1/chat/completions",
                    json=CHAT,
                    preload_content=False,
                    decode_content=False,
                )
                raw = b"".join(r.stream(64))
                r2 = pool.request("POST", url + "/v1/chat/completions", json=CHAT)  # decoded, preloaded
        finally:
            server.shutdown()
            server.server_close()
        assert gzip.decompress(raw) == chat_body() and r2.json()["usage"]["total_tokens"] == 24
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (
            2,
            22,
            26,
            0,
        )

    def test_http_error_is_a_failed_request(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        fake.handler = lambda req: Reply(status=500, error="boom")
        with llmtally.track() as t:
            r = urllib3.request("POST", url + "/v1/chat/completions", json=CHAT, retries=False)
        assert r.status == 500 and b"boom" in r.data
        assert (t.failed_requests, t.successful_requests, t.cost) == (1, 0, 0)

    def test_connection_error(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with llmtally.track() as t, pytest.raises(urllib3.exceptions.MaxRetryError):
            urllib3.request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, retries=1)
        assert (t.failed_requests, len(t.calls)) == (1, 1)  # urlopen's retry is not a second call


class TestStreams:
    def test_stream_chunks(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
            raw = b"".join(r.stream(7))
        assert raw.endswith(b"data: [DONE]\n\n")
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)
        assert t.calls[0].stream and len(t.calls) == 1

    def test_read_chunked_and_read1(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
            assert r.chunked
            raw = b"".join(r.read_chunked())
            r2 = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
            parts = []
            while piece := r2.read1(50):
                parts.append(piece)
        assert raw.endswith(b"data: [DONE]\n\n") and b"".join(parts).endswith(b"data: [DONE]\n\n")
        assert (t.successful_requests, t.prompt_tokens, t.completion_tokens) == (2, 22, 26)

    def test_closed_early_is_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            r = urllib3.request(
                "POST", url + "/v1/chat/completions", json={**CHAT, "stream": True}, preload_content=False
            )
            r.read(16)
            r.drain_conn()
            r.close()
        assert t.successful_requests == 1 and len(t.calls) == 1 and t.calls[0].estimated

    def test_interrupted(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        fake.handler = lambda req: Reply(
            text=ANSWER, prompt_tokens=11, completion_tokens=13, cut_stream_after=3
        )
        with llmtally.track() as t, pytest.raises(urllib3.exceptions.ProtocolError):
            r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
            for _ in r.stream(8):
                pass
        assert (t.failed_requests, len(t.calls)) == (1, 1) and "interrupted" in (t.calls[0].error or "")


class TestStacked:
    """requests runs on urllib3, and urllib3 follows redirects with urlopen again: counted once."""

    def test_requests_counted_once(self, served: tuple[FakeProvider, str]) -> None:
        _, url = served
        with llmtally.track() as t:
            requests.post(url + "/v1/chat/completions", json=CHAT)
            with requests.post(url + "/v1/chat/completions", json=STREAM, stream=True) as r:
                for _ in r.iter_lines():
                    pass
        assert (t.successful_requests, len(t.calls), t.cost) == (2, 2, 2 * CALL)

    def test_redirect_counted_once(self, served: tuple[FakeProvider, str]) -> None:
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

        server, moved = serve(Moved)
        try:
            with llmtally.track() as t:
                direct = urllib3.HTTPConnectionPool("127.0.0.1", server.server_port)
                r1 = direct.urlopen("POST", "/v1/chat/completions", body=json.dumps(CHAT), redirect=False)
                r2 = urllib3.request("POST", moved + "/v1/chat/completions", json=CHAT)
        finally:
            server.shutdown()
            server.server_close()
        assert r1.status == 307 and r2.status == 200 and len(fake.requests) == 1
        assert (t.successful_requests, t.failed_requests, len(t.calls), t.cost) == (1, 0, 1, CALL)

    def test_redirect_to_a_gateway_path_under_a_limit(self) -> None:
        """PoolManager follows redirects above the pools, one pool call per hop: the call is begun
        there, once, for the path the caller asked; a one-request limit lets it through."""
        hops: list[str] = []

        class Gateway(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                hops.append(self.path)
                if self.path == "/v1/chat/completions":
                    self.send_response(307)
                    self.send_header("location", "/gateway/v2/run")  # a path no format reads
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = chat_body()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server, url = serve(Gateway)
        try:
            with llmtally.track(max_requests=1) as t:
                r = urllib3.PoolManager().request("POST", url + "/v1/chat/completions", json=CHAT)
        finally:
            server.shutdown()
            server.server_close()
        assert r.status == 200 and hops == ["/v1/chat/completions", "/gateway/v2/run"]
        assert (t.requests, t.prompt_tokens, t.completion_tokens, t.cost) == (1, 11, 13, CALL)

    def test_redirect_from_a_gateway_path_into_an_llm_path(self, served: tuple[FakeProvider, str]) -> None:
        """The other way: a path no format reads, redirected to one: the hop that reads is counted."""
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

        server, moved = serve(Moved)
        try:
            with llmtally.track() as t:
                r = urllib3.PoolManager().request("POST", moved + "/llm", json=CHAT)
        finally:
            server.shutdown()
            server.server_close()
        assert r.status == 200 and len(fake.requests) == 1
        assert (t.requests, t.prompt_tokens, t.completion_tokens, t.cost) == (1, 11, 13, CALL)


class TestControl:
    def test_refused_before_sending(self, served: tuple[FakeProvider, str]) -> None:
        fake, url = served
        with llmtally.track("agent", max_requests=1) as t:
            urllib3.request("POST", url + "/v1/chat/completions", json=CHAT)
            with pytest.raises(llmtally.BudgetExceeded):
                urllib3.request("POST", url + "/v1/chat/completions", json=CHAT)
        assert len(fake.requests) == 1 and t.successful_requests == 1

    def test_uninstrument_restores_urlopen(self) -> None:
        from urllib3.connectionpool import HTTPConnectionPool

        assert hasattr(HTTPConnectionPool.urlopen, "__llmtally_original__")
        llmtally.uninstrument()
        try:
            assert not hasattr(HTTPConnectionPool.urlopen, "__llmtally_original__")
        finally:
            llmtally.instrument()
        llmtally.instrument()  # idempotent
        assert not hasattr(HTTPConnectionPool.urlopen.__wrapped__, "__llmtally_original__")


@pytest.mark.parametrize("step", ["_finish", "_queue"])
def test_a_failure_inside_llmtally_never_reaches_the_reader(
    served: tuple[FakeProvider, str], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The end of a stream (read to the end, closed early) is metered in guarded code only."""
    from llmtally._capture.exchange import Exchange

    _, url = served

    def boom(self: Exchange, *args: object) -> None:
        raise RuntimeError("an llmtally bug")

    monkeypatch.setattr(Exchange, step, boom)
    with llmtally.track():
        r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
        assert b"[DONE]" in b"".join(r.stream(8))
        r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
        r.read(5)
        r.close()
        r = urllib3.request("POST", url + "/v1/chat/completions", json=STREAM, preload_content=False)
        r.drain_conn()
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions",
                                    data=json.dumps(STREAM).encode())) as s:  # fmt: skip
            assert b"[DONE]" in s.read()
