"""The caller receives exactly what the server sent, tracked or not: SDK objects, raw bytes, errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar

import anthropic
import httpx
import httpx2
import openai
import pytest

import llmtally
from llmtally.testing import FakeProvider, Reply, ToolCall

from .conftest import CHAT

_VOLATILE = {"created", "created_at"}
_CREATED = re.compile(rb'"created(_at)?":\d+')


def scrub(value: Any) -> Any:
    """A model_dump() without its timestamps (the two runs may straddle a second)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call gave the caller: its value, or its exception's type, status and message."""
    try:
        return ("value", fn())
    except Exception as exc:
        return ("raised", type(exc), getattr(exc, "status_code", None), str(exc))


def both(fake: FakeProvider, reply: Reply, fn: Callable[[], Any]) -> tuple[Any, Any, llmtally.Tally]:
    """Run ``fn`` against the same reply untracked, then tracked; return both outcomes and the tally."""
    fake.add(reply)
    plain = outcome(fn)
    fake.add(reply)
    with llmtally.track() as t:
        tracked = outcome(fn)
    return plain, tracked, t


class TestSDKResults:
    """An SDK's parsed result is the same object, field for field, with llmtally tracking or not."""

    def test_openai_chat(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        reply = Reply(
            text="Let me look.",
            tool_calls=[ToolCall("search", {"q": "x"}, id="call_fixed")],
            request_id="chatcmpl-fixed",
            prompt_tokens=21,
            cached_tokens=5,
            completion_tokens=9,
            reasoning_tokens=2,
        )
        plain, tracked, t = both(
            fake,
            reply,
            lambda: scrub(oai.chat.completions.create(model="gpt-4o", messages=CHAT).model_dump()),
        )
        assert plain[0] == "value" and plain == tracked
        assert plain[1]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"q": "x"}'
        assert t.successful_requests == 1 and t.prompt_tokens == 21

    def test_openai_chat_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        reply = Reply(text="a b c d e", request_id="chatcmpl-fixed", prompt_tokens=3, completion_tokens=5)

        def run() -> list[Any]:
            stream = oai.chat.completions.create(
                model="gpt-4", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
            return [scrub(c.model_dump()) for c in stream]

        plain, tracked, t = both(fake, reply, run)
        assert plain == tracked and len(plain[1]) == 8  # role, 5 words, finish, usage ([DONE] is no chunk)
        assert (t.prompt_tokens, t.completion_tokens) == (3, 5)

    def test_openai_responses(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        reply = Reply(text="hi", tool_calls=[ToolCall("f", {"a": 1}, id="call_1")], request_id="resp_fixed")

        def run() -> Any:
            out = scrub(oai.responses.create(model="gpt-4o", input="hello").model_dump())
            out["output"][0].pop("id")  # the message item's id is fresh on every reply
            return out

        plain, tracked, _ = both(fake, reply, run)
        assert plain[0] == "value" and plain == tracked

    def test_anthropic_message_and_stream(self, fake: FakeProvider, ant: anthropic.Anthropic) -> None:
        reply = Reply(
            text="Hello",
            tool_calls=[ToolCall("t", {"k": "v"}, id="toolu_1")],
            request_id="msg_fixed",
            prompt_tokens=100,
            cached_tokens=10,
            cache_write_tokens=20,
        )
        kwargs: dict[str, Any] = {"model": "claude-sonnet-4-20250514", "max_tokens": 10, "messages": CHAT}
        plain, tracked, _ = both(fake, reply, lambda: ant.messages.create(**kwargs).model_dump())
        assert plain[0] == "value" and plain == tracked

        def stream() -> Any:
            with ant.messages.stream(**kwargs) as s:
                events = [e.model_dump() for e in s]
                return events, s.get_final_message().model_dump()

        plain, tracked, t = both(fake, reply, stream)
        assert plain[0] == "value" and plain == tracked
        assert (t.prompt_tokens, t.cached_tokens, t.cache_write_tokens) == (100, 10, 20)

    @pytest.mark.parametrize("stream", [False, True])
    def test_openai_garbage(self, fake: FakeProvider, oai: openai.OpenAI, stream: bool) -> None:
        garbage = b'{"not": "a completion"' if not stream else b"data: {half a json\n\n"

        def run() -> Any:
            r = oai.chat.completions.create(model="gpt-4", messages=CHAT, stream=stream)
            return [c.model_dump() for c in r] if stream else r.model_dump()

        plain, tracked, t = both(fake, Reply(garbage=garbage, request_id="req_1"), run)
        assert plain == tracked
        assert (t.successful_requests, t.failed_requests, len(t.calls)) == (1, 0, 1)

    def test_openai_truncated_stream(self, fake: FakeProvider, oai: openai.OpenAI) -> None:
        reply = Reply(text="one two three four five six", request_id="chatcmpl-fixed", cut_stream_after=4)

        def run() -> Any:
            got: list[Any] = []
            try:
                for chunk in oai.chat.completions.create(model="gpt-4", messages=CHAT, stream=True):
                    got.append(scrub(chunk.model_dump()))
            except Exception as exc:
                return got, type(exc), str(exc)
            return got, None, None

        plain, tracked, t = both(fake, reply, run)
        assert plain == tracked
        got, exc_type, _ = plain[1]
        assert len(got) == 4 and exc_type is not None
        # The call is settled once, from the events that arrived.
        assert len(t.calls) == 1 and t.calls[0].stream is True
        assert t.calls[0].usage is not None and t.calls[0].usage.completion_tokens > 0


@pytest.fixture(params=[httpx2, httpx], ids=["httpx2", "httpx"])
def http(request: pytest.FixtureRequest) -> Any:
    return request.param


def raw(http: Any, url: str, body: dict[str, Any], *, stream: bool) -> tuple[Any, ...]:
    """Status, headers minus Date, body bytes read to the end, and the error that ended it, if any."""
    with http.Client() as client:
        if not stream:
            r = client.post(url, json=body)
            return r.status_code, _headers(r), _CREATED.sub(b"", r.content), None
        parts: list[bytes] = []
        error = None
        with client.stream("POST", url, json=body) as r:
            try:
                for chunk in r.iter_raw():
                    parts.append(chunk)
            except Exception as exc:
                error = (type(exc).__name__, str(exc))
            return r.status_code, _headers(r), _CREATED.sub(b"", b"".join(parts)), error


def _headers(r: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in r.headers.items() if k.lower() != "date"]


class TestRawBytes:
    """A raw HTTP client reads the very bytes, headers and errors the server sent, tracked or not."""

    BODY: ClassVar[dict[str, Any]] = {"model": "gpt-4", "messages": CHAT}

    @pytest.mark.parametrize(
        ("reply", "stream"),
        [
            (Reply(text="plain answer", request_id="chatcmpl-1"), False),
            (Reply(text="streamed answer here", request_id="chatcmpl-1"), True),
            (Reply(text="counted", request_id="chatcmpl-1", include_usage=True), True),
            (Reply(garbage=b"\x00\xff<html>not json</html>", request_id="req_1"), False),
            (Reply(garbage=b"data: {oops\n\nevent: x\ndata: [\n\n", request_id="req_1"), True),
            (Reply(garbage=b"", request_id="req_1"), False),
            (Reply(text="one two three four five", request_id="chatcmpl-1", cut_stream_after=3), True),
            (Reply(status=503, error="try later", request_id="req_1"), False),
            (Reply(status=429, error="slow down", request_id="req_1"), True),
        ],
        ids=["json", "sse", "sse-usage", "garbage", "garbage-sse", "empty", "truncated", "503", "429-stream"],
    )
    def test_bytes_identical(
        self, fake: FakeProvider, url: str, http: Any, reply: Reply, stream: bool
    ) -> None:
        body = {**self.BODY, "stream": True} if stream else self.BODY
        fake.add(reply)
        plain = raw(http, url + "/v1/chat/completions", body, stream=stream)
        fake.add(reply)
        with llmtally.track() as t:
            tracked = raw(http, url + "/v1/chat/completions", body, stream=stream)
        assert plain == tracked
        if reply.cut_stream_after is not None:
            assert plain[3] is not None and plain[3][0] == "RemoteProtocolError"
        else:
            assert plain[3] is None
        # Every request is settled exactly once, whatever it carried.
        assert len(t.calls) == 1
        assert t.calls[0].stream is (stream and reply.status < 400)
        if reply.status >= 400:
            assert (t.calls[0].ok, t.calls[0].status, t.failed_requests) == (False, reply.status, 1)
        elif reply.cut_stream_after is None:
            assert (t.calls[0].ok, t.successful_requests) == (True, 1)
