"""The capture never alters a call: whatever the server sends, the caller gets it, byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from decimal import Decimal

import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmtally
from llmtally._capture.exchange import Exchange
from llmtally._core.pipeline import FLUSH_AT, PIPELINE
from llmtally._runtime import RUNTIME
from llmtally.wire.openai import ChatCompletions

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
USAGE_CHUNK = (
    b'data: {"id":"c","model":"gpt-4","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":13}}\n\n'
)
STREAM = [
    b'data: {"id":"c","model":"gpt-4","choices":[{"index":0,"delta":{"content":"Hel"}}],"usage":null}\n\n',
    b'data: {"id":"c","model":"gpt-4","choices":[{"index":0,"delta":{"content":"lo"}}],"usage":null}\n\n',
    USAGE_CHUNK,
    b"data: [DONE]\n\n",
]

HTTPX_MODULES = [httpx, httpx2]
settings.register_profile(
    "capture", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile("capture")


def awaiting_json() -> dict:
    """The httpx adapter's table of responses whose JSON the client has not decoded yet."""
    assert RUNTIME.adapters is not None
    return RUNTIME.adapters[0].awaiting_json


def client_for(module, handler):
    return module.Client(transport=module.MockTransport(handler))


def sse_response(module, chunks, headers=None):
    return module.Response(
        200, headers={"content-type": "text/event-stream", **(headers or {})}, content=iter(chunks)
    )


class TestGarbageBodies:
    """Malformed bodies reach the caller unchanged and never raise inside llmtally."""

    @pytest.mark.parametrize("module", HTTPX_MODULES)
    @given(
        body=st.binary(max_size=400),
        ctype=st.sampled_from(["application/json", "text/event-stream", "text/plain"]),
    )
    def test_body(self, module, body: bytes, ctype: str) -> None:
        client = client_for(
            module, lambda req: module.Response(200, headers={"content-type": ctype}, content=body)
        )
        with llmtally.track() as t:
            r = client.post("http://fake/v1/chat/completions", json=CHAT)
        assert r.content == body
        assert t.successful_requests == 1  # counted, usage estimated when unreadable

    @pytest.mark.parametrize("module", HTTPX_MODULES)
    @given(chunks=st.lists(st.one_of(st.binary(max_size=80), st.sampled_from(STREAM)), max_size=12))
    def test_stream(self, module, chunks: list[bytes]) -> None:
        client = client_for(module, lambda req: sse_response(module, chunks))
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                got = list(r.iter_raw())
        assert b"".join(got) == b"".join(chunks)
        assert t.successful_requests == 1

    @given(
        body=st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda c: (
                st.lists(c, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "usage",
                            "model",
                            "prompt_tokens",
                            "completion_tokens",
                            "choices",
                            "delta",
                            "prompt_tokens_details",
                            "cached_tokens",
                            "input_tokens",
                            "output_tokens",
                            "type",
                            "message",
                            "response",
                        ]
                    ),
                    c,
                    max_size=4,
                )
            ),
            max_leaves=20,
        )
    )
    def test_json_shapes(self, body) -> None:
        raw = json.dumps(body).encode()
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings"):
            client = client_for(
                httpx2,
                lambda req: httpx2.Response(200, content=raw, headers={"content-type": "application/json"}),
            )
            with llmtally.track():
                r = client.post("http://fake" + path, json=CHAT)
            assert r.content == raw


class TestStreams:
    """Streams are settled at their end, on early close, and on a read error."""

    def test_usage_from_stream(self) -> None:
        client = client_for(httpx2, lambda req: sse_response(httpx2, STREAM))
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                r.read()
        assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (11, 13, 0)
        assert t.calls[0].stream

    def test_gzip_stream(self) -> None:
        body = gzip.compress(b"".join(STREAM))
        client = client_for(
            httpx, lambda req: sse_response(httpx, [body[:20], body[20:]], {"content-encoding": "gzip"})
        )
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                text = b"".join(r.iter_bytes())
        assert text == b"".join(STREAM)
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)

    def test_early_close_settles_once(self) -> None:
        client = client_for(httpx2, lambda req: sse_response(httpx2, STREAM))
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                next(r.iter_raw())
        assert t.successful_requests == 1 and len(t.calls) == 1
        assert t.calls[0].estimated  # the usage chunk was never read

    def test_long_stream_without_usage_is_estimated_in_bounded_memory(self) -> None:
        """A stream far longer than the text llmtally keeps: counted from what it kept, extrapolated."""
        import quicktok

        from llmtally.testing import FakeProvider, Reply
        from llmtally.wire._base import Text

        words = " ".join(f"word{i % 97} and more" for i in range(60_000))  # ~1 MB, ~240k tokens
        assert len(words) > 10 * Text.CAP
        fake = FakeProvider([Reply(text=words, chunks=50_000, include_usage=False, model="gpt-4o")])
        client = httpx2.Client(transport=fake.httpx2_transport())
        with llmtally.track() as t:
            with client.stream(
                "POST", "http://fake/v1/chat/completions", json={**CHAT, "model": "gpt-4o", "stream": True}
            ) as r:
                for _ in r.iter_raw():
                    pass
        exact = len(quicktok.get_encoding("o200k_base").encode_ordinary(words))
        assert t.calls[0].estimated
        assert abs(t.completion_tokens - exact) / exact < 0.02, (t.completion_tokens, exact)

    def test_read_error_reaches_caller(self) -> None:
        def broken():
            yield STREAM[0]
            raise httpx2.ReadError("connection reset")

        client = client_for(httpx2, lambda req: sse_response(httpx2, broken()))
        with llmtally.track() as t:
            with pytest.raises(httpx2.ReadError, match="connection reset"):
                with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                    r.read()
        assert len(t.calls) == 1
        call = t.calls[0]
        # A failed request, but the tokens streamed before the failure were produced: kept.
        assert not call.ok and "ReadError" in (call.error or "")
        assert (t.failed_requests, t.successful_requests) == (1, 0)
        assert call.estimated and call.usage is not None and call.usage.completion_tokens == 1

    async def test_async_stream(self) -> None:
        async def chunks():
            for c in STREAM:
                yield c

        def handler(req):
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=chunks())

        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
            with llmtally.track() as t:
                async with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                    got = [c async for c in r.aiter_raw()]
        assert b"".join(got) == b"".join(STREAM)
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)

    async def test_cancelled_mid_stream_is_counted(self) -> None:
        """A task cancelled while reading a stream it never closes (what an SDK's stream does):
        a failed request that keeps the tokens streamed so far, not a lost one."""

        async def slow():
            for c in STREAM[:2]:
                yield c
                await asyncio.sleep(0.01)
            await asyncio.sleep(60)
            yield STREAM[2]

        def handler(req):
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=slow())

        client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        got: list[bytes] = []

        async def read() -> None:
            request = client.build_request("POST", "http://fake/v1/chat/completions", json=CHAT)
            response = await client.send(request, stream=True)
            async for c in response.aiter_raw():
                got.append(c)

        with llmtally.track() as t:
            task = asyncio.create_task(read())
            while len(got) < 2:
                await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert len(t.calls) == 1 and not t.calls[0].ok and "CancelledError" in (t.calls[0].error or "")
        assert t.calls[0].estimated and t.completion_tokens == 1  # "Hel" + "lo": "Hello", counted offline

    @pytest.mark.parametrize("module", HTTPX_MODULES)
    def test_stream_requested_of_a_body_already_read(self, module) -> None:
        """A transport that answers with bytes (a mock, a cache): the response is read at once,
        and the caller's reads never touch the stream."""
        client = client_for(
            module,
            lambda req: module.Response(
                200, headers={"content-type": "text/event-stream"}, content=b"".join(STREAM)
            ),
        )
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                assert b"".join(r.iter_bytes()) == b"".join(STREAM)
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                pass  # not even read
        assert t.successful_requests == 2 and (t.prompt_tokens, t.completion_tokens) == (22, 26)


class TestFailures:
    """Connection failures and HTTP errors are failed requests that cost nothing."""

    @pytest.mark.parametrize("module", HTTPX_MODULES)
    def test_connect_error(self, module) -> None:
        def handler(req):
            raise module.ConnectError("refused")

        client = client_for(module, handler)
        with llmtally.track() as t:
            with pytest.raises(module.ConnectError):
                client.post("http://fake/v1/chat/completions", json=CHAT)
        assert (t.failed_requests, t.successful_requests, t.cost) == (1, 0, 0)
        assert t.calls[0].requested_model == "gpt-4"

    def test_http_error_body_untouched(self) -> None:
        err = b'{"error": {"message": "slow down", "type": "rate_limit"}}'
        client = client_for(httpx2, lambda req: httpx2.Response(429, content=err))
        with llmtally.track() as t:
            r = client.post("http://fake/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and r.content == err
        assert t.failed_requests == 1 and t.calls[0].status == 429


class TestLazySettlement:
    """The call path only queues; reading a Tally settles; the queue is bounded."""

    def test_settled_on_read(self) -> None:
        body = b'{"model": "gpt-4", "usage": {"prompt_tokens": 11, "completion_tokens": 13}}'
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=body))
        with llmtally.track() as t:
            client.post("http://fake/v1/chat/completions", json=CHAT)
            assert len(PIPELINE.pending) == 1  # nothing parsed on the call path
        assert t.total_tokens == 24 and t.cost == Decimal("0.00111")
        assert not PIPELINE.pending

    def test_queue_is_bounded(self) -> None:
        body = b'{"model": "gpt-4", "usage": {"prompt_tokens": 11, "completion_tokens": 13}}'
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=body))
        with llmtally.track() as t:
            for _ in range(FLUSH_AT * 3 + 5):
                client.post("http://fake/v1/chat/completions", json=CHAT)
                assert len(PIPELINE.pending) < FLUSH_AT
        assert t.successful_requests == FLUSH_AT * 3 + 5

    def test_uses_the_clients_decoded_json(self) -> None:
        body = b'{"model": "gpt-4", "usage": {"prompt_tokens": 11, "completion_tokens": 13}}'
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=body))
        with llmtally.track() as t:
            r = client.post("http://fake/v1/chat/completions", json=CHAT)
            assert awaiting_json()
            data = r.json()
            assert not awaiting_json()
            assert PIPELINE.pending[0].parsed is data
            data["usage"] = None  # the caller's dict to change: the bytes still count
        assert data == {"model": "gpt-4", "usage": None}
        assert (t.prompt_tokens, t.completion_tokens) == (11, 13)
        assert not awaiting_json()

    def test_json_hook_is_removed(self) -> None:
        llmtally.instrument()
        assert hasattr(httpx2.Response.json, "__llmtally_original__")
        llmtally.uninstrument()
        assert not hasattr(httpx2.Response.json, "__llmtally_original__")
        assert httpx2.Response(200, content=b'{"a": 1}').json() == {"a": 1}

    def test_sinks_get_calls_on_flush(self) -> None:
        got: list[llmtally.Call] = []
        body = b'{"model": "gpt-4", "usage": {"prompt_tokens": 11, "completion_tokens": 13}}'
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=body))
        RUNTIME.add_sink(got.append)
        try:
            client.post("http://fake/v1/chat/completions", json=CHAT)  # no scope open: metered for the sink
            assert got == []  # queued, not settled on the call path
            llmtally.flush()
        finally:
            RUNTIME.remove_sink(got.append)
        assert len(got) == 1 and got[0].usage is not None and got[0].usage.total_tokens == 24
        assert got[0].scope_path == ()


class TestInternalFailure:
    """A bug inside llmtally is logged; the caller still gets exactly what the server sent."""

    def test_parser_crash(self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
        def boom(self, obj):
            raise ZeroDivisionError("inside llmtally")

        monkeypatch.setattr(ChatCompletions, "body", boom)
        monkeypatch.setattr(ChatCompletions, "fast_body", boom)
        body = b'{"model": "gpt-4", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=body))
        caplog.set_level(logging.ERROR, "llmtally")
        with llmtally.track() as t:
            r = client.post("http://fake/v1/chat/completions", json=CHAT)
        assert r.content == body
        # Reading settles; the broken parse is logged, not raised, and the call still counts, with
        # its usage and cost unknown (never $0 in disguise).
        assert t.successful_requests == 1 and t.unpriced_requests == 1
        assert t.calls[0].usage is None and t.calls[0].cost is None
        assert t.calls[0].requested_model == "gpt-4" and t.unpriced_models == ["gpt-4"]
        assert any("inside llmtally" in (r.exc_text or "") for r in caplog.records)

    def test_stream_tap_crash(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def boom(self, chunk):
            raise ValueError("garbled beyond repair")

        monkeypatch.setattr(Exchange, "_feed_decoded", boom)
        client = client_for(httpx2, lambda req: sse_response(httpx2, STREAM))
        caplog.set_level(logging.WARNING, "llmtally")
        with llmtally.track() as t:
            with client.stream("POST", "http://fake/v1/chat/completions", json=CHAT) as r:
                got = b"".join(r.iter_raw())
        assert got == b"".join(STREAM)
        assert t.successful_requests == 1
        assert any("garbled beyond repair" in r.getMessage() for r in caplog.records)

    def test_non_llm_requests_pass_through(self) -> None:
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=b"{}"))
        with llmtally.track() as t:
            client.get("http://fake/v1/models")
            client.post("http://fake/v1/files", content=b"x")
        assert t.calls == []


class TestNothingSilentlyMissed:
    """A POST that looks like an LLM call but that no wire format reads is said once, never dropped
    in silence; its query string (where Gemini puts the API key) is never in the message."""

    def test_said_once_per_path(self, caplog: pytest.LogCaptureFixture) -> None:
        client = client_for(httpx2, lambda req: httpx2.Response(200, content=b'{"usageMetadata": {}}'))
        caplog.set_level(logging.WARNING, "llmtally")
        path = "/v1beta/models/imagen-4.0-generate-001:predict"  # images: no wire format here
        with llmtally.track() as t:
            for _ in range(3):
                client.post(f"https://generativelanguage.googleapis.com{path}?key=AIza-secret", json={})
            client.post("https://api.example.com/v1/uploads", content=b"x")  # an ordinary POST
        said = [r.getMessage() for r in caplog.records if "no wire format" in r.getMessage()]
        assert len(said) == 1 and path in said[0] and "generativelanguage.googleapis.com" in said[0]
        assert not any("AIza-secret" in r.getMessage() for r in caplog.records)
        assert t.calls == []

    def test_once_per_host_and_path_and_testing_sees_each(self, caplog: pytest.LogCaptureFixture) -> None:
        from llmtally.testing import unmetered

        client = client_for(httpx2, lambda req: httpx2.Response(200, content=b"{}"))
        caplog.set_level(logging.WARNING, "llmtally")
        path = "/v1/projects/p/locations/l/publishers/meta/models/llama:rawPredict"
        with llmtally.track(), unmetered() as missed:
            for host in ("a.example", "b.example", "a.example"):
                client.post(f"https://{host}{path}?key=AIza-secret", json={})
            client.post("https://a.example/v1/chat/completions", json={"model": "gpt-4", "messages": []})
            client.post("https://a.example/upload", content=b"x")  # not an LLM path
        said = [r.getMessage() for r in caplog.records if "no wire format" in r.getMessage()]
        assert len(said) == 2 and "a.example" in said[0] and "b.example" in said[1]
        assert missed == [("a.example", path), ("b.example", path), ("a.example", path)]
        assert not any("AIza-secret" in r.getMessage() for r in caplog.records)
        # Outside the block nothing is collected, and the DEBUG records reach no one's handlers.
        with unmetered() as later:
            pass
        client.post(f"https://c.example{path}", json={})
        assert later == [] and not any(r.levelno < logging.WARNING for r in caplog.records)

    def test_known_hosts_and_paths(self) -> None:
        from llmtally.wire import looks_like_llm

        assert looks_like_llm("bedrock-runtime.us-east-1.amazonaws.com", "/model/x/invoke")
        assert looks_like_llm("bedrock-runtime.eu-west-3.amazonaws.com", "/anything")
        assert not looks_like_llm("s3.amazonaws.com", "/bucket/key")
        assert looks_like_llm("localhost", "/model/x/async-invoke")  # Bedrock's async invoke, proxied
        assert looks_like_llm("localhost", "/v1/projects/p/publishers/mistralai/models/m:rawPredict")
        assert looks_like_llm("myco.openai.azure.com", "/openai/deployments/d/audio/speech")
        assert not looks_like_llm("example.com", "/api/upload")

    def test_gemini_embeddings_are_read(self) -> None:
        from llmtally.wire import route

        for path in (
            "/v1beta/models/gemini-embedding-001:embedContent",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            "/v1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict",
        ):
            parser = route("POST", path)
            assert parser is not None and parser.endpoint == "embeddings", path
        # Vertex's :predict serves image and other models too: not read as embeddings.
        assert route("POST", "/v1/projects/p/locations/l/publishers/google/models/imagen-4:predict") is None


def test_deflate_wrapped_or_raw() -> None:
    """Content-Encoding: deflate is zlib-wrapped by the standard and raw from some servers."""
    import zlib

    from llmtally._capture.exchange import _inflater

    text = b'data: {"usage": {"prompt_tokens": 9}}\n\n' * 50
    raw = zlib.compressobj(wbits=-15)
    bodies = [zlib.compress(text), raw.compress(text) + raw.flush()]
    for body in bodies:
        for step in (1, 2, 7, len(body)):
            inflate = _inflater("deflate")
            out = b"".join(inflate.decompress(body[i : i + step]) for i in range(0, len(body), step))
            assert out + inflate.flush() == text, step
