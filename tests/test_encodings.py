"""Bodies and streams in every content coding the clients decode (br, zstd, stacked codings), over
real loopback HTTP through every client, read decoded and raw: counted exactly, the caller's bytes
the same as without llmtally; a garbled one never raises from llmtally; a missing library is said
and the call still counted, as an estimate."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import httpx2
import openai
import pytest
import requests
import urllib3

import llmtally
from llmtally._capture import codings
from llmtally.testing import FakeProvider, Reply
from llmtally.testing._encoding import Compressor, compress

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "Tell me a joke"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
ANSWER = "Why did the chicken cross the road? To get to the other side."
PATH = "/v1/chat/completions"
CODINGS = ["br", "zstd", "gzip, br"]
BODIES = {"json": CHAT, "sse": STREAM}


def reply(coding: str | None) -> Reply:
    return Reply(
        text=ANSWER,
        prompt_tokens=11,
        completion_tokens=13,
        model="gpt-4",
        request_id="chatcmpl-1",
        encoding=coding,
    )


@pytest.fixture(autouse=True)
def same_bytes_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer the same bytes (its `created` time fixed), so runs can be compared byte for byte."""
    from llmtally.testing import _openai

    monkeypatch.setattr(_openai, "now", lambda: 1_700_000_000)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    provider = FakeProvider()
    with provider.serve():
        yield provider


def sent(body: dict[str, Any], coding: str | None) -> bytes:
    """The bytes the server sends for ``body``, encoded in ``coding``."""
    answer = FakeProvider(handler=lambda req: reply(coding)).answer(
        "POST", PATH, {}, json.dumps(body).encode()
    )
    return answer.body if answer.events is None else b"".join(answer.events)


def exact(t: llmtally.Tally, n: int) -> None:
    """``n`` calls, each counted from the usage the server sent."""
    assert (t.requests, t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (n, 11 * n, 13 * n, 0)


def metered(read: Callable[[], Any]) -> tuple[Any, llmtally.Tally]:
    """What ``read`` returns without llmtally (no scope open: the hooks pass the call through), and
    inside a scope: the same."""
    bare = read()
    with llmtally.track() as t:
        got = read()
    assert got == bare
    return got, t


def serve(fake: FakeProvider, coding: str | None) -> str:
    fake.handler = lambda req: reply(coding)
    return fake.url + PATH


# -- counted exactly, and the same bytes ----------------------------------------------------------
# Each client, read every way it offers: decoded by the client itself (which worked before) and
# raw, as relays and botocore read bodies (which did not), or left encoded by the client.


@pytest.mark.parametrize("coding", CODINGS)
def test_openai_sdk(fake: FakeProvider, coding: str) -> None:
    """The openai SDK, on httpx2: the answers it builds are the ones it builds without llmtally."""
    serve(fake, coding)
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="sk-test", max_retries=0)

    def read() -> tuple[Any, list[Any]]:
        body = client.chat.completions.create(**CHAT).model_dump()
        chunks = [c.model_dump() for c in client.chat.completions.create(**STREAM)]
        return body, chunks

    (body, chunks), t = metered(read)
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"]) == ANSWER
    exact(t, 2)
    assert [call.stream for call in t.calls] == [False, True]


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("module", [httpx, httpx2], ids=["httpx", "httpx2"])
@pytest.mark.parametrize("kind", BODIES)
class TestHttpx:
    def test_decoded_and_raw(self, fake: FakeProvider, module: Any, kind: str, coding: str) -> None:
        url = serve(fake, coding)

        def read() -> tuple[bytes, bytes, bytes]:
            with module.Client() as client:
                whole = client.post(url, json=BODIES[kind]).content
                with client.stream("POST", url, json=BODIES[kind]) as r:
                    decoded = b"".join(r.iter_bytes())
                with client.stream("POST", url, json=BODIES[kind]) as r:
                    raw = b"".join(r.iter_raw())
            return whole, decoded, raw

        (whole, decoded, raw), t = metered(read)
        assert whole == decoded == sent(BODIES[kind], None) and raw == sent(BODIES[kind], coding)
        exact(t, 3)

    async def test_async(self, fake: FakeProvider, module: Any, kind: str, coding: str) -> None:
        url = serve(fake, coding)
        async with module.AsyncClient() as client, llmtally.track() as t:
            async with client.stream("POST", url, json=BODIES[kind]) as r:
                decoded = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert decoded == sent(BODIES[kind], None)
        exact(t, 1)


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("kind", BODIES)
def test_requests(fake: FakeProvider, coding: str, kind: str) -> None:
    """Bodies and ``iter_content`` decoded by urllib3; ``response.raw`` as a relay reads it, as sent
    (requests turns urllib3's decoding off)."""
    url = serve(fake, coding)
    body = BODIES[kind]

    def read() -> list[Any]:
        got: list[Any] = [requests.post(url, json=body).content]
        with requests.post(url, json=body, stream=True) as r:
            got.append(list(r.iter_lines()))
        with requests.post(url, json=body, stream=True) as r:
            got.append(r.raw.read())
        with requests.post(url, json=body, stream=True) as r:
            got.append(b"".join(r.raw.stream(16)))
        return got

    (whole, lines, raw, streamed), t = metered(read)
    assert whole == sent(body, None) and raw == streamed == sent(body, coding)
    assert [line for line in lines if line] == [line for line in sent(body, None).split(b"\n") if line]
    exact(t, 4)


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("kind", BODIES)
def test_urllib3(fake: FakeProvider, coding: str, kind: str) -> None:
    """Preloaded (decoded), and streamed decoded and raw."""
    url = serve(fake, coding)
    body = BODIES[kind]
    pool = urllib3.PoolManager()

    def read() -> list[bytes]:
        got = [pool.request("POST", url, json=body).data]
        for decode in (True, False):
            r = pool.request("POST", url, json=body, preload_content=False)
            got.append(b"".join(r.stream(7, decode_content=decode)))
            r.release_conn()
        return got

    got, t = metered(read)
    assert got == [sent(body, None), sent(body, None), sent(body, coding)]
    exact(t, 3)


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("kind", BODIES)
def test_aiohttp(fake: FakeProvider, coding: str, kind: str) -> None:
    """Read whole and line by line, decompressed by aiohttp and not (``auto_decompress=False``)."""
    url = serve(fake, coding)
    body = BODIES[kind]

    async def read() -> list[bytes]:
        got = []
        for decompress in (True, False):
            async with aiohttp.ClientSession(auto_decompress=decompress) as session:
                async with session.post(url, json=body) as r:
                    got.append(await r.read())
                async with session.post(url, json=body) as r:
                    got.append(b"".join([line async for line in r.content]))
        return got

    got, t = metered(lambda: asyncio.run(read()))
    # aiohttp decompresses one coding, never a stacked list: that, it hands over as sent.
    decompressed = sent(body, None if "," not in coding else coding)
    assert got == [decompressed, decompressed, sent(body, coding), sent(body, coding)]
    exact(t, 4)


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("kind", BODIES)
def test_http_client_reads_raw(fake: FakeProvider, coding: str, kind: str) -> None:
    """http.client never decodes: the caller gets the bytes as sent, the exchange decodes them."""
    url = urlsplit(serve(fake, coding))

    def read() -> bytes:
        conn = http.client.HTTPConnection(url.netloc)
        conn.request("POST", url.path, json.dumps(BODIES[kind]), {"content-type": "application/json"})
        response = conn.getresponse()
        data = b"".join(iter(lambda: response.read(5), b""))
        conn.close()
        return data

    got, t = metered(read)
    assert got == sent(BODIES[kind], coding)
    exact(t, 1)


def test_decoded_as_the_caller_reads(fake: FakeProvider) -> None:
    """A long stream is decoded chunk by chunk as the caller reads it, not kept to the end."""
    fake.handler = lambda req: Reply(
        text="word " * 4000, prompt_tokens=5, completion_tokens=4000, encoding="br"
    )
    seen: list[int] = []
    with llmtally.track() as t, httpx.Client() as client:
        with client.stream("POST", fake.url + PATH, json=STREAM) as r:
            ex = r.stream._ex  # the tap's
            for _ in r.iter_raw(256):
                seen.append(ex.stream_parser.chunks)
    assert (t.prompt_tokens, t.completion_tokens, t.estimated_requests) == (5, 4000, 0)
    assert seen[len(seen) // 2] > 0  # events read mid-stream, not at the end


@pytest.mark.parametrize("coding", CODINGS)
def test_in_memory_transport(coding: str) -> None:
    """``FakeProvider.httpx2_transport()`` sends ``Reply(encoding=...)`` encoded too, without a socket."""
    fake = FakeProvider(handler=lambda req: reply(coding))
    client = openai.OpenAI(
        base_url="http://fake/v1",
        api_key="sk-test",
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )
    with llmtally.track() as t:
        body = client.chat.completions.create(**CHAT)
        chunks = list(client.chat.completions.create(**STREAM))
    assert body.choices[0].message.content == ANSWER and chunks[-1].usage.completion_tokens == 13
    exact(t, 2)


# -- garbled ----------------------------------------------------------------------------------------


def garbled(coding: str, seed: int) -> bytes:
    """A stream that starts well in ``coding`` and turns to noise."""
    good = Compressor(coding).push(sent(STREAM, None)[:200])
    noise = random.Random(seed).randbytes(300)
    return good + noise


@pytest.mark.parametrize("coding", ["br", "zstd"])
@pytest.mark.parametrize("seed", range(3))
class TestGarbled:
    """Whatever the client makes of a broken body, llmtally adds nothing to it and counts the call."""

    def serve_garbage(self, fake: FakeProvider, coding: str, seed: int) -> str:
        data = garbled(coding, seed)
        fake.handler = lambda req: Reply(garbage=data, headers={"content-encoding": coding})
        return fake.url + PATH

    def test_read_raw(
        self, fake: FakeProvider, coding: str, seed: int, caplog: pytest.LogCaptureFixture
    ) -> None:
        url = self.serve_garbage(fake, coding, seed)
        parts = urlsplit(url)

        def read() -> list[bytes]:
            conn = http.client.HTTPConnection(parts.netloc)
            conn.request("POST", parts.path, json.dumps(STREAM), {"content-type": "application/json"})
            via_http_client = conn.getresponse().read()
            conn.close()
            r = urllib3.request("POST", url, json=STREAM, preload_content=False)
            via_urllib3 = b"".join(r.stream(9, decode_content=False))
            with requests.post(url, json=STREAM, stream=True) as rr:
                via_requests = rr.raw.read()
            return [via_http_client, via_urllib3, via_requests]

        with caplog.at_level(logging.WARNING, "llmtally"):
            got, t = metered(read)
        assert got == [garbled(coding, seed)] * 3
        assert t.requests == 3 and all(call.ok for call in t.calls)
        assert "Traceback" not in caplog.text  # said as a warning, if the noise breaks the decoder

    def test_decoding_clients(self, fake: FakeProvider, coding: str, seed: int) -> None:
        """httpx and requests fail to decode it as they do without llmtally: the same error, no other."""
        url = self.serve_garbage(fake, coding, seed)

        def outcome(read: Callable[[], Any]) -> tuple[str, Any]:
            try:
                return "ok", read()
            except Exception as exc:
                return type(exc).__name__, None

        def with_httpx2() -> bytes:
            with httpx2.Client() as client, client.stream("POST", url, json=STREAM) as r:
                return b"".join(r.iter_bytes())

        def with_requests() -> list[bytes]:
            with requests.post(url, json=STREAM, stream=True) as r:
                return list(r.iter_lines())

        for read in (with_httpx2, with_requests):
            bare = outcome(read)
            with llmtally.track() as t:
                assert outcome(read) == bare
            assert t.requests == 1


# -- a missing library ------------------------------------------------------------------------------

LIBRARIES = {"br": ["brotli", "brotlicffi"], "zstd": ["compression.zstd", "backports.zstd", "zstandard"]}


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Makes a coding's libraries uninstalled, for llmtally (which has not imported them yet)."""

    def block(coding: str) -> None:
        monkeypatch.setattr(codings, "_modules", {})
        monkeypatch.setattr(codings, "_said", set())
        for name in LIBRARIES[coding]:
            monkeypatch.setitem(sys.modules, name, None)

    return block


@pytest.mark.parametrize("coding", ["br", "zstd"])
class TestMissingLibrary:
    def serve_encoded(self, fake: FakeProvider, coding: str) -> str:
        """Answers compressed before the libraries go: the server cannot compress after."""
        encoded = {kind: sent(body, coding) for kind, body in BODIES.items()}
        fake.handler = lambda req: Reply(
            garbage=encoded["sse" if req.stream else "json"], headers={"content-encoding": coding}
        )
        return fake.url + PATH

    def check(self, t: llmtally.Tally, n: int, caplog: pytest.LogCaptureFixture, coding: str) -> None:
        assert (t.requests, t.successful_requests, t.estimated_requests) == (n, n, n)
        assert all(call.usage is not None and call.usage.prompt_tokens > 0 for call in t.calls)
        said = [r.getMessage() for r in caplog.records if "Content-Encoding" in r.getMessage()]
        assert len(said) == 1 and {"br": "'brotli'", "zstd": "'zstandard'"}[coding] in said[0]
        assert "could not" not in caplog.text and "is not" not in caplog.text

    def test_read_raw(
        self,
        fake: FakeProvider,
        coding: str,
        unreadable: Callable[[str], None],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        url = urlsplit(self.serve_encoded(fake, coding))
        expected = [sent(body, coding) for body in BODIES.values()]
        unreadable(coding)

        def read() -> list[bytes]:
            got = []
            for body in BODIES.values():
                conn = http.client.HTTPConnection(url.netloc)
                conn.request("POST", url.path, json.dumps(body), {"content-type": "application/json"})
                got.append(conn.getresponse().read())
                conn.close()
            return got

        with caplog.at_level(logging.WARNING, "llmtally"):
            got, t = metered(read)
        assert got == expected
        self.check(t, 2, caplog, coding)

    def test_clients_without_it(
        self,
        fake: FakeProvider,
        coding: str,
        unreadable: Callable[[str], None],
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """httpx2 and urllib3 without the library hand the body over as it came: counted, estimated."""
        url = self.serve_encoded(fake, coding)
        expected = sent(CHAT, coding), sent(STREAM, coding)
        unreadable(coding)
        monkeypatch.delitem(httpx2._decoders.SUPPORTED_DECODERS, coding)
        monkeypatch.setattr(
            urllib3.response.BaseHTTPResponse, "CONTENT_DECODERS", ["gzip", "x-gzip", "deflate"]
        )

        def read() -> list[bytes]:
            with httpx2.Client() as client:
                got = [client.post(url, json=CHAT).content]
                with client.stream("POST", url, json=STREAM) as r:
                    got.append(b"".join(r.iter_bytes()))
            got += [urllib3.request("POST", url, json=body).data for body in (CHAT, STREAM)]
            with requests.post(url, json=STREAM, stream=True) as r:
                got.append(b"".join(r.iter_content(10)))
            return got

        with caplog.at_level(logging.WARNING, "llmtally"):
            got, t = metered(read)
        assert got == [*expected, *expected, expected[1]]
        self.check(t, 5, caplog, coding)


# -- the decoders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br", "br, zstd", "deflate, zstd, gzip", "x-gzip"])
@pytest.mark.parametrize("step", [1, 3, 64])
def test_decoded_chunk_by_chunk(coding: str, step: int) -> None:
    from llmtally._capture.exchange import _inflater

    text = sent(STREAM, None) * 3
    body = compress(text, coding)
    decode = _inflater(coding)
    assert b"".join(decode.decompress(body[i : i + step]) for i in range(0, len(body), step)) == text


@pytest.mark.parametrize("library", ["compression.zstd", "backports.zstd", "zstandard"])
def test_zstd_frames_one_after_another(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zstd body of several frames, as urllib3 and httpx2 read it, with every zstd library."""
    from llmtally._capture.exchange import _inflater

    monkeypatch.setattr(codings, "_modules", {"zstd": pytest.importorskip(library)})
    body = compress(b"first ", "zstd") + compress(b"second", "zstd")
    for step in (1, 5, len(body)):
        decode = _inflater("zstd")
        assert (
            b"".join(decode.decompress(body[i : i + step]) for i in range(0, len(body), step))
            == b"first second"
        )


@pytest.mark.parametrize(
    "library", ["brotli", "brotlicffi", "compression.zstd", "backports.zstd", "zstandard"]
)
def test_each_library(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The libraries the clients use, each on its own: whichever is installed decodes."""
    from llmtally._capture.exchange import _inflater

    module = pytest.importorskip(library)
    coding = "br" if "brotli" in library else "zstd"
    monkeypatch.setattr(codings, "_modules", {coding: module})
    text = sent(STREAM, None)
    body = compress(text, coding)
    decode = _inflater(coding)
    assert b"".join(decode.decompress(body[i : i + 7]) for i in range(0, len(body), 7)) == text


def test_unknown_coding_counted_and_said(
    fake: FakeProvider, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codings, "_said", set())
    fake.handler = lambda req: Reply(garbage=b"\x00\x01", headers={"content-encoding": "compress"})
    with caplog.at_level(logging.WARNING, "llmtally"), llmtally.track() as t:
        r = urllib3.request("POST", fake.url + PATH, json=STREAM, preload_content=False)
        assert b"".join(r.stream(decode_content=False)) == b"\x00\x01"
    assert (t.requests, t.estimated_requests) == (1, 1)
    assert "'compress' and llmtally does not know this coding" in caplog.text
    assert "could not" not in caplog.text and "is not" not in caplog.text


def test_import_stays_light() -> None:
    """``import llmtally`` imports no compression library: they come with the first such body."""
    import subprocess

    libraries = {"brotli", "brotlicffi", "zstandard", "backports.zstd", "compression.zstd"}
    code = f"import sys, llmtally, llmtally.testing\nbad = {libraries!r} & set(sys.modules)\nassert not bad\n"
    subprocess.run([sys.executable, "-c", code], check=True)
