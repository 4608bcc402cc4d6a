"""The fake provider, driven through raw HTTP and through the real openai, anthropic and LangChain SDKs."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

import llmtally.testing
from llmtally.testing import FakeProvider, FakeRequest, Reply, ToolCall

CHAT = [{"role": "user", "content": "tell me a joke"}]
TOOL = {
    "type": "function",
    "function": {"name": "search", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture
def url(fake: FakeProvider) -> Iterator[str]:
    with fake.serve() as base_url:
        yield base_url


@pytest.fixture
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def ant(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)


def post(
    url: str, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh stdlib connection: status, lower-cased headers, body."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
    try:
        payload = json.dumps(body).encode()
        conn.request("POST", path, payload, {"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_chunks(url: str, path: str, body: Any) -> tuple[bytes, list[bytes]]:
    """Send a request over a bare socket; return the head and the body's chunks as framed on the wire."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        data = b""
        while piece := sock.recv(65536):
            data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    chunks = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(rest[:size])
        rest = rest[size + 2 :]
    return head, chunks


def sse_data(chunks: list[bytes]) -> list[Any]:
    return [json.loads(c.split(b"data: ", 1)[1]) for c in chunks if b"[DONE]" not in c]


class TestPackage:
    def test_import_is_stdlib_only(self) -> None:
        """Importing llmtally.testing pulls in neither httpx nor any SDK."""
        code = (
            "import sys, llmtally.testing; "
            "roots = {'httpx', 'httpx2', 'openai', 'anthropic'}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"

    def test_all_is_sorted_and_exported(self) -> None:
        """__all__ is sorted and names only what the package exports."""
        assert llmtally.testing.__all__ == sorted(llmtally.testing.__all__)
        assert all(hasattr(llmtally.testing, name) for name in llmtally.testing.__all__)


class TestScript:
    def test_replies_come_in_order_then_default_ok(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Scripted replies are used once each, in order; an empty script answers "ok"."""
        fake.extend([Reply(text="one"), "two"]).add_many(Reply(text="three"), 2)
        texts = [
            oai.chat.completions.create(model="m", messages=CHAT).choices[0].message.content for _ in range(5)
        ]
        assert texts == ["one", "two", "three", "three", "ok"]
        assert fake.pending == 0

    def test_handler_sees_the_request(self, url: str) -> None:
        """A handler replaces the script and receives the parsed FakeRequest."""
        seen: list[FakeRequest] = []

        def handler(req: FakeRequest) -> Reply:
            seen.append(req)
            return Reply(text=f"you asked {req.json['model']}")

        fake = FakeProvider(handler=handler)
        with fake.serve() as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
            reply = client.chat.completions.create(model="gpt-x", messages=CHAT)
        assert reply.choices[0].message.content == "you asked gpt-x"
        assert seen[0].path == "/v1/chat/completions" and seen[0].method == "POST"

    def test_requests_are_recorded_and_reset(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Requests are logged with lower-case headers, parsed JSON and the stream flag; reset clears them."""
        fake.add(Reply(text="x"))
        oai.chat.completions.create(model="m", messages=CHAT, stream=True).close()
        req = fake.requests[0]
        assert req.headers["authorization"] == "Bearer sk-test"
        assert req.json["messages"] == CHAT and req.stream is True
        fake.add(Reply())
        fake.reset()
        assert fake.requests == [] and fake.pending == 0

    def test_default_token_counts_are_words(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Unscripted counts are one token per word of the prompt and of the reply."""
        fake.add(Reply(text="one two three"))
        usage = oai.chat.completions.create(model="m", messages=CHAT).usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 3, 7)

    def test_url_only_while_serving(self, fake: FakeProvider) -> None:
        """fake.url is the served base URL, and an error outside serve()."""
        with fake.serve() as base:
            assert fake.url == base and base.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError):
            _ = fake.url


class TestServer:
    def test_chat_body_shape(self, fake: FakeProvider, url: str) -> None:
        """A chat completion carries the full usage breakdown and a Content-Length."""
        fake.add(
            Reply(
                text="hi",
                prompt_tokens=100,
                completion_tokens=20,
                cached_tokens=50,
                reasoning_tokens=5,
                request_id="req-1",
            )
        )
        status, headers, raw = post(url, "/v1/chat/completions", {"model": "gpt-4o", "messages": CHAT})
        body = json.loads(raw)
        assert status == 200 and headers["content-length"] == str(len(raw))
        assert headers["x-request-id"] == "req-1" and body["id"] == "req-1"
        assert body["object"] == "chat.completion" and body["model"] == "gpt-4o"
        choice = body["choices"][0]
        assert choice["message"] == {"role": "assistant", "content": "hi", "refusal": None}
        assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
        assert body["usage"] == {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 50, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 5,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def test_stream_sends_one_event_per_chunk(self, fake: FakeProvider, url: str) -> None:
        """Every SSE event is its own HTTP chunk; usage rides a final choices-less chunk before [DONE]."""
        fake.add(Reply(text="a b c", prompt_tokens=4, completion_tokens=3))
        body = {"model": "m", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
        head, chunks = raw_chunks(url, "/v1/chat/completions", body)
        assert b"transfer-encoding: chunked" in head.lower() and b"text/event-stream" in head
        assert all(
            c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"data: ") == 1 for c in chunks
        )
        assert chunks[-1] == b"data: [DONE]\n\n"
        events = sse_data(chunks)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "a b c"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert all(e["usage"] is None for e in events[:-1])
        assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 7

    def test_stream_without_include_usage_has_no_usage(self, fake: FakeProvider, url: str) -> None:
        """Like OpenAI, a stream that did not ask for usage carries no usage key at all."""
        _, chunks = raw_chunks(url, "/v1/chat/completions", {"model": "m", "messages": CHAT, "stream": True})
        assert all("usage" not in e for e in sse_data(chunks))

    def test_include_usage_false_strips_body_usage(self, fake: FakeProvider, url: str) -> None:
        """include_usage=False removes usage even from a non-stream body."""
        fake.add(Reply(include_usage=False))
        _, _, raw = post(url, "/v1/chat/completions", {"model": "m", "messages": CHAT})
        assert "usage" not in json.loads(raw)

    def test_include_usage_false_strips_every_stream(self, fake: FakeProvider, url: str) -> None:
        """include_usage=False beats stream_options, and empties Responses and Anthropic streams of usage."""
        fake.add_many(Reply(text="a b", include_usage=False), 3)
        body = {"model": "m", "messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
        chat = sse_data(raw_chunks(url, "/v1/chat/completions", body)[1])
        assert all("usage" not in e for e in chat)
        responses = sse_data(
            raw_chunks(url, "/v1/responses", {"model": "m", "input": "x", "stream": True})[1]
        )
        assert responses[-1]["type"] == "response.completed" and responses[-1]["response"]["usage"] is None
        messages = sse_data(
            raw_chunks(url, "/v1/messages", {"model": "c", "messages": CHAT, "stream": True})[1]
        )
        assert all("usage" not in e and "usage" not in e.get("message", {}) for e in messages)

    def test_handler_errors_become_500(self, url: str) -> None:
        """A handler that raises answers 500 with the exception in the message."""

        def handler(req: FakeRequest) -> Reply:
            raise ValueError("boom")

        with FakeProvider(handler=handler).serve() as base:
            status, _, raw = post(base, "/v1/chat/completions", {"model": "m", "messages": CHAT})
        assert status == 500 and "boom" in json.loads(raw)["error"]["message"]

    def test_chunks_splits_exactly(self, fake: FakeProvider, url: str) -> None:
        """chunks=N makes exactly N content deltas that join back into the text."""
        fake.add(Reply(text="x" * 10, chunks=25))
        _, chunks = raw_chunks(url, "/v1/chat/completions", {"model": "m", "messages": CHAT, "stream": True})
        deltas = [e["choices"][0]["delta"]["content"] for e in sse_data(chunks)[1:-1]]
        assert len(deltas) == 25 and "".join(deltas) == "x" * 10

    def test_keep_alive_serves_many_requests_on_one_connection(self, fake: FakeProvider, url: str) -> None:
        """Several requests, streamed and not, share one HTTP/1.1 connection."""
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
        for stream in (False, True, False):
            conn.request(
                "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": CHAT, "stream": stream})
            )
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
        sock = conn.sock
        conn.request("POST", "/v1/embeddings", json.dumps({"model": "e", "input": "x"}))
        assert conn.getresponse().read() and conn.sock is sock
        conn.close()

    def test_unknown_route_is_404_and_takes_no_reply(self, fake: FakeProvider, url: str) -> None:
        """Unknown paths answer 404 in OpenAI's error shape without using up the script."""
        fake.add(Reply(text="kept"))
        status, _, raw = post(url, "/v1/nope", {})
        assert status == 404 and "nope" in json.loads(raw)["error"]["message"]
        assert fake.pending == 1

    def test_azure_path_uses_deployment_name(self, fake: FakeProvider, url: str) -> None:
        """On Azure's path the served model is the deployment, unless the reply names one."""
        path = "/openai/deployments/my-gpt4/chat/completions?api-version=2024-06-01"
        _, _, raw = post(url, path, {"messages": CHAT})
        assert json.loads(raw)["model"] == "my-gpt4"
        assert fake.requests[0].query == {"api-version": "2024-06-01"}
        fake.add(Reply(model="gpt-4o-2024-08-06"))
        assert json.loads(post(url, path, {"messages": CHAT})[2])["model"] == "gpt-4o-2024-08-06"

    def test_anthropic_error_shape(self, fake: FakeProvider, url: str) -> None:
        """Anthropic errors use {"type": "error", "error": {...}} and the request-id header."""
        fake.add(Reply(status=529, error="busy", request_id="req_9"))
        status, headers, raw = post(url, "/v1/messages", {"model": "c", "messages": CHAT})
        body = json.loads(raw)
        assert status == 529 and headers["request-id"] == "req_9"
        assert body["type"] == "error" and body["error"] == {"type": "overloaded_error", "message": "busy"}

    def test_anthropic_stream_event_sequence(self, fake: FakeProvider, url: str) -> None:
        """An Anthropic stream sends the documented named events with usage split across start and delta."""
        fake.add(
            Reply(
                text="hi there",
                prompt_tokens=100,
                completion_tokens=20,
                cached_tokens=50,
                cache_write_tokens=10,
            )
        )
        _, chunks = raw_chunks(url, "/v1/messages", {"model": "c", "messages": CHAT, "stream": True})
        names = [c.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for c in chunks]
        assert names == [
            "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop",
        ]  # fmt: skip
        events = sse_data(chunks)
        start_usage = events[0]["message"]["usage"]
        assert (start_usage["input_tokens"], start_usage["cache_read_input_tokens"]) == (40, 50)
        assert start_usage["cache_creation_input_tokens"] == 10 and start_usage["output_tokens"] == 1
        assert events[-2]["usage"] == {"output_tokens": 20}

    def test_garbage_and_delay(self, fake: FakeProvider, url: str) -> None:
        """garbage is sent verbatim; delay holds the answer back."""
        fake.add(Reply(garbage=b"\x00not json", delay=0.2))
        started = time.monotonic()
        status, _, raw = post(url, "/v1/chat/completions", {"model": "m", "messages": CHAT})
        assert raw == b"\x00not json" and status == 200 and time.monotonic() - started >= 0.2

    def test_cut_stream_drops_the_connection(self, fake: FakeProvider, url: str) -> None:
        """cut_stream_after=N sends N events, then closes without the final chunk."""
        fake.add(Reply(text="a b c d e", cut_stream_after=2))
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
        conn.request(
            "POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": CHAT, "stream": True})
        )
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()
        assert info.value.partial.count(b"data: ") == 2

    async def test_burst_of_concurrent_connections(self, fake: FakeProvider, url: str) -> None:
        """A hundred simultaneous connections are all accepted: the backlog is not socketserver's 5."""
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        calls = [client.chat.completions.create(model="m", messages=CHAT) for _ in range(100)]  # type: ignore[arg-type]
        replies = await asyncio.gather(*calls)
        assert {r.choices[0].message.content for r in replies} == {"ok"} and len(fake.requests) == 100
        await client.close()

    def test_stop_closes_idle_keepalive_connections(self, fake: FakeProvider) -> None:
        """Leaving serve() ends pooled connections and their threads, and frees the port."""
        before = threading.active_count()
        with fake.serve() as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
            client.chat.completions.create(model="m", messages=CHAT)
        assert threading.active_count() == before
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="m", messages=CHAT)


class TestOpenAISDK:
    def test_chat_with_model_and_usage(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """The SDK parses text, served model and usage."""
        fake.add(
            Reply(text="Why did the chicken...", prompt_tokens=11, completion_tokens=13, model="gpt-4-0613")
        )
        reply = oai.chat.completions.create(model="gpt-4", messages=CHAT)
        assert reply.choices[0].message.content == "Why did the chicken..."
        assert reply.model == "gpt-4-0613"
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 13)

    def test_tool_calls(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Tool calls parse with JSON-string arguments and finish_reason tool_calls."""
        fake.add(
            Reply(
                tool_calls=[ToolCall("search", {"query": "x"}, id="call_1")],
                prompt_tokens=200,
                completion_tokens=20,
            )
        )
        choice = oai.chat.completions.create(model="m", messages=CHAT, tools=[TOOL]).choices[0]  # type: ignore[list-item]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]  # type: ignore[index]
        assert (call.id, call.function.name) == ("call_1", "search")  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"query": "x"}  # type: ignore[union-attr]

    def test_stream_tool_calls_and_usage(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Streamed tool-call deltas reassemble through the SDK's stream helper, with usage at the end."""
        fake.add(
            Reply(
                tool_calls=[ToolCall("search", {"query": "long words here"})],
                prompt_tokens=9,
                completion_tokens=4,
            )
        )
        with oai.chat.completions.stream(
            model="m", messages=CHAT, tools=[TOOL], stream_options={"include_usage": True}
        ) as stream:  # type: ignore[list-item]
            final = stream.get_final_completion()
        call = final.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert json.loads(call.function.arguments) == {"query": "long words here"}  # type: ignore[union-attr]
        assert final.usage is not None and final.usage.total_tokens == 13

    def test_errors_raise_the_sdk_classes(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """Error statuses map to the SDK's exception classes with the message intact."""
        fake.extend([Reply(status=429, error="rate limited"), Reply(status=401), Reply(status=500)])
        with pytest.raises(openai.RateLimitError, match="rate limited"):
            oai.chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(openai.AuthenticationError):
            oai.chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="m", messages=CHAT, stream=True)

    def test_cut_stream_is_a_connection_error(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """A stream cut mid-way surfaces as APIConnectionError after the events already sent."""
        fake.add(Reply(text="a b c d e f", cut_stream_after=3))
        seen = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in oai.chat.completions.create(model="m", messages=CHAT, stream=True):
                seen.append(chunk.choices[0].delta.content)
        assert seen == ["", "a ", "b "]

    def test_embeddings_base64_and_float(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """The SDK's default base64 request decodes to the same floats a float request gets."""
        fake.extend([Reply(embedding_dim=8, prompt_tokens=5), Reply(embedding_dim=8)])
        default = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert fake.requests[0].json["encoding_format"] == "base64"
        floats = oai.embeddings.create(
            model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
        )
        assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
        assert len(default.data) == 2 and len(default.data[0].embedding) == 8
        assert default.usage.prompt_tokens == 5 and floats.usage.prompt_tokens == 2

    def test_legacy_completions(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """The legacy completions API parses, streamed and not."""
        fake.extend([Reply(text="hello world", prompt_tokens=2, completion_tokens=2), Reply(text="one two")])
        done = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say hi")
        assert (
            done.choices[0].text == "hello world" and done.usage is not None and done.usage.total_tokens == 4
        )
        stream = oai.completions.create(
            model="i", prompt="x", stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == "one two"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2

    def test_responses_create(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """responses.create parses, and output_text and usage come through."""
        fake.add(
            Reply(text="hi there", prompt_tokens=10, completion_tokens=7, cached_tokens=4, reasoning_tokens=3)
        )
        resp = oai.responses.create(model="gpt-4.1", input="hello")
        assert resp.output_text == "hi there" and resp.model == "gpt-4.1" and resp.status == "completed"
        assert resp.usage is not None and resp.usage.input_tokens_details.cached_tokens == 4
        assert resp.usage.output_tokens_details.reasoning_tokens == 3 and resp.usage.total_tokens == 17

    def test_responses_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """responses.stream yields text deltas and a final response with usage."""
        fake.add(Reply(text="streamed reply text", prompt_tokens=5, completion_tokens=3))
        with oai.responses.stream(model="gpt-4.1", input="hello") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        assert "".join(deltas) == "streamed reply text" and len(deltas) == 3
        assert (
            final.output_text == "streamed reply text"
            and final.usage is not None
            and final.usage.output_tokens == 3
        )

    def test_responses_function_call_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        """A streamed function call arrives as a complete function_call output item."""
        fake.add(Reply(tool_calls=[ToolCall("search", {"query": "x"})]))
        events = list(oai.responses.create(model="gpt-4.1", input="hello", stream=True))
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = events[-1].response  # type: ignore[union-attr]
        item = final.output[0]
        assert (
            item.type == "function_call"
            and item.name == "search"
            and json.loads(item.arguments) == {"query": "x"}
        )

    def test_azure_client(self, fake: FakeProvider, url: str) -> None:
        """AzureOpenAI's deployment path is served with the deployment as the model."""
        client = openai.AzureOpenAI(azure_endpoint=url, api_key="k", api_version="2024-06-01", max_retries=0)
        reply = client.chat.completions.create(model="my-deployment", messages=CHAT)
        assert reply.model == "my-deployment"
        assert fake.requests[0].path == "/openai/deployments/my-deployment/chat/completions"

    async def test_async_stream(self, fake: FakeProvider, url: str) -> None:
        """The async client streams content chunk by chunk."""
        fake.add(Reply(text="a b c"))
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
        assert [c.choices[0].delta.content async for c in stream] == ["", "a ", "b ", "c", None]
        await client.close()


class TestAnthropicSDK:
    def test_create_with_cache_usage(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        """input_tokens excludes cache reads and writes; the 1h TTL part is reported separately."""
        fake.add(
            Reply(
                text="hi",
                prompt_tokens=100,
                completion_tokens=20,
                cached_tokens=50,
                cache_write_tokens=10,
                cache_write_1h_tokens=4,
            )
        )
        msg = ant.messages.create(model="claude-x", max_tokens=10, messages=CHAT)  # type: ignore[arg-type]
        assert msg.content[0].text == "hi" and msg.stop_reason == "end_turn"  # type: ignore[union-attr]
        usage = msg.usage
        assert usage.input_tokens == 40
        assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (50, 10)
        assert usage.cache_creation is not None and usage.cache_creation.ephemeral_1h_input_tokens == 4
        assert usage.cache_creation.ephemeral_5m_input_tokens == 6 and usage.output_tokens == 20

    def test_stream_final_message(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        """messages.stream accumulates text and tool input, and ends with the final usage."""
        fake.add(
            Reply(
                text="let me look",
                tool_calls=[ToolCall("search", {"query": "x"})],
                prompt_tokens=30,
                completion_tokens=12,
            )
        )
        with ant.messages.stream(model="claude-x", max_tokens=10, messages=CHAT) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text == "let me look" and final.stop_reason == "tool_use"
        assert final.content[1].type == "tool_use" and final.content[1].input == {"query": "x"}
        assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)
        assert "request-id" in stream.response.headers

    def test_errors_and_count_tokens(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        """Error statuses raise Anthropic's classes; count_tokens answers input_tokens."""
        fake.extend([Reply(status=429, error="slow down"), Reply(status=529), Reply(prompt_tokens=42)])
        with pytest.raises(anthropic.RateLimitError, match="slow down"):
            ant.messages.create(model="c", max_tokens=5, messages=CHAT)  # type: ignore[arg-type]
        with pytest.raises(anthropic.OverloadedError):
            ant.messages.create(model="c", max_tokens=5, messages=CHAT)  # type: ignore[arg-type]
        assert ant.messages.count_tokens(model="c", messages=CHAT).input_tokens == 42  # type: ignore[arg-type]

    async def test_async_stream(self, fake: FakeProvider, url: str) -> None:
        """The async client's stream helper works too."""
        fake.add(Reply(text="async hello", completion_tokens=2))
        client = anthropic.AsyncAnthropic(base_url=url, api_key="k", max_retries=0)
        async with client.messages.stream(model="c", max_tokens=5, messages=CHAT) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        assert final.content[0].text == "async hello" and final.usage.output_tokens == 2  # type: ignore[union-attr]
        await client.close()


class TestLangChain:
    def test_bind_tools_and_stream_usage(self, fake: FakeProvider, url: str) -> None:
        """ChatOpenAI gets tool_calls from bind_tools, and streamed usage when it asks for it."""
        from langchain_openai import ChatOpenAI

        def search(query: str) -> str:
            """Search the web."""
            return query

        fake.extend([
            Reply(tool_calls=[ToolCall("search", {"query": "x"})], prompt_tokens=200, completion_tokens=20),
            Reply(text="a b c", prompt_tokens=7, completion_tokens=3),
        ])  # fmt: skip
        llm = ChatOpenAI(
            model="gpt-4o", base_url=url + "/v1", api_key="sk-test", max_retries=0, stream_usage=True
        )  # type: ignore[arg-type]
        message = llm.bind_tools([search]).invoke("hi")
        assert message.tool_calls[0]["name"] == "search" and message.tool_calls[0]["args"] == {"query": "x"}  # type: ignore[attr-defined]
        chunks = list(llm.stream("hi"))
        total = chunks[0]
        for chunk in chunks[1:]:
            total += chunk
        assert total.content == "a b c"
        assert total.usage_metadata is not None and total.usage_metadata["total_tokens"] == 10  # type: ignore[attr-defined]


class TestTransports:
    def test_httpx2_in_memory_with_openai(self, fake: FakeProvider) -> None:
        """The openai SDK runs over the httpx2 transport with no server, streaming included."""
        assert isinstance(fake.httpx2_transport(), httpx2.MockTransport)
        fake.extend(
            [Reply(text="one"), Reply(text="a b", include_usage=True, prompt_tokens=1, completion_tokens=2)]
        )
        client = openai.OpenAI(
            base_url="http://fake/v1",
            api_key="k",
            max_retries=0,
            http_client=httpx2.Client(transport=fake.httpx2_transport()),
        )
        assert client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content == "one"
        chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
        assert [c.choices[0].delta.content for c in chunks if c.choices] == ["", "a ", "b", None]
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 3

    async def test_httpx2_async_anthropic(self, fake: FakeProvider) -> None:
        """The async anthropic SDK streams over the same in-memory transport, honouring delay."""
        fake.add(Reply(text="hi there", delay=0.1))
        http_client = httpx2.AsyncClient(transport=fake.httpx2_transport())
        client = anthropic.AsyncAnthropic(
            base_url="http://fake", api_key="k", max_retries=0, http_client=http_client
        )
        started = time.monotonic()
        async with client.messages.stream(model="c", max_tokens=5, messages=CHAT) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
        assert final.content[0].text == "hi there" and time.monotonic() - started >= 0.1  # type: ignore[union-attr]
        await http_client.aclose()

    def test_httpx_transport_streams_and_cuts(self, fake: FakeProvider) -> None:
        """The plain httpx transport is a MockTransport; a cut stream raises RemoteProtocolError."""
        transport = fake.httpx_transport()
        assert isinstance(transport, httpx.MockTransport)
        fake.add(Reply(text="a b c", cut_stream_after=2))
        with httpx.Client(transport=transport, base_url="http://fake") as client:
            body = {"model": "m", "messages": CHAT, "stream": True}
            with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                assert resp.headers["content-type"].startswith("text/event-stream")
                pieces = []
                with pytest.raises(httpx.RemoteProtocolError):
                    for piece in resp.iter_bytes():
                        pieces.append(piece)
            assert len(pieces) == 2
            resp = client.post(
                "/v1/embeddings", json={"model": "e", "input": "x", "encoding_format": "base64"}
            )
            vector = struct.unpack("<8f", base64.b64decode(resp.json()["data"][0]["embedding"]))
            assert all(-1 <= v < 1 for v in vector)
