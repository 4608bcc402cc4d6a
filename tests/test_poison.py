"""Poison from the server never becomes a silent 0, and never blocks the ledger: usage values that
are no token count make the call an offline estimate; exact integers sent as floats or text count."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from _postgres import PostgresServer, postgres_fixture

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.ledger import _writer as writer_module
from llmtally.ledger import open_ledger, to_row
from llmtally.ledger._records import NAMES
from llmtally.ledger._writer import Writer
from llmtally.testing import FakeProvider, Reply
from llmtally.wire import NOTHING, bad_count
from llmtally.wire._base import MAX_COUNT, as_int
from llmtally.wire.openai import ChatCompletions

MESSAGES = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture(autouse=True)
def nothing_noted() -> None:
    """Start from a clean note (a test elsewhere may parse garbage on this thread and leave it)."""
    bad_count()


@pytest.mark.parametrize(("value", "count"), [(12, 12), (12.0, 12), ("12", 12), (" 7 ", 7), (None, 0)])
def test_exact_integers_in_any_dress_are_taken(value: Any, count: int) -> None:
    assert as_int(value) == count and bad_count() is NOTHING


@pytest.mark.parametrize(
    "value", [-5, 12.5, 2**63, MAX_COUNT + 1, "abc", "1e3", "-3", True, [1], {}, float("nan"), float("inf")]
)
def test_anything_else_is_noted(value: Any) -> None:
    assert as_int(value) == 0
    assert bad_count() is value  # noted once...
    assert bad_count() is NOTHING  # ...and forgotten once read


def test_a_stated_null_count_is_noted() -> None:
    ChatCompletions().body({"usage": {"prompt_tokens": None, "completion_tokens": 3}})
    assert bad_count() is None
    ChatCompletions().body({"usage": {"prompt_tokens": 4}})  # completion absent (embeddings): fine
    assert bad_count() is NOTHING


def calls(value: Any, *, stream: bool) -> list[llmtally.Call]:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=value, completion_tokens=7, model="gpt-4o"))
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            if stream:
                chunks = client.chat.completions.create(
                    model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
                for _ in chunks:
                    pass
            else:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    return t.calls


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("value", [-5, 2**63, 12.5])
def test_poison_through_the_sdk_is_estimated_not_zero(
    value: Any, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmtally"):
        (call,) = calls(value, stream=stream)
    assert call.estimated and call.usage is not None
    assert call.usage.prompt_tokens > 0 and call.usage.completion_tokens > 0  # counted offline, not 0
    assert call.cost is not None and call.cost > 0
    assert "no token count" in caplog.text


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_an_exact_float_is_exact(stream: bool) -> None:
    (call,) = calls(12.0, stream=stream)
    assert not call.estimated and call.usage is not None and call.usage.prompt_tokens == 12


ANSWER = "the quick brown fox jumps over the lazy dog " * 5


@contextlib.contextmanager
def serving(body: dict[str, Any] | list[dict[str, Any]]) -> Iterator[str]:
    """A loopback server answering every POST with ``body`` (a list: as server-sent events): usage
    no fake provider would send."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            if isinstance(body, list):
                data = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in body)
                kind = "text/event-stream"
            else:
                data, kind = json.dumps(body).encode(), "application/json"
            self.send_response(200)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "usage",
    [{"input_tokens": None, "output_tokens": 5}, {"input_tokens": 5, "output_tokens": None},
     {"input_tokens": -1, "output_tokens": 5}, {"input_tokens": 5, "output_tokens": 2.5}, {}],
    ids=["input null", "output null", "input negative", "output fractional", "empty"],
)  # fmt: skip
def test_anthropic_poison_is_estimated_from_the_answer(usage: dict[str, Any]) -> None:
    """A stated null input was a silent 0; a bad count was estimated with an output of 0 (the answer's
    text was not read from a body that had a usage)."""
    import anthropic

    body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn",
            "usage": usage}  # fmt: skip
    with serving(body) as url, llmtally.track() as t:
        client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
        got = client.messages.create(model="claude-3-5-haiku-20241022", max_tokens=100, messages=MESSAGES)
    assert got.content[0].text == ANSWER  # the caller's answer, untouched
    (call,) = t.calls
    assert call.estimated and call.usage is not None
    assert call.usage.prompt_tokens > 0 and call.usage.completion_tokens >= 40  # the answer, counted


@pytest.mark.parametrize(
    "usage",
    [
        {"promptTokenCount": 5, "candidatesTokenCount": None},
        {"promptTokenCount": None, "candidatesTokenCount": 5},
        {},
    ],
    ids=["candidates null", "prompt null", "empty"],
)
def test_gemini_stated_nulls_are_estimated(usage: dict[str, Any]) -> None:
    from google import genai
    from google.genai import types

    content = {"parts": [{"text": ANSWER}], "role": "model"}
    body = {"candidates": [{"content": content, "finishReason": "STOP"}], "usageMetadata": usage,
            "modelVersion": "gemini-2.0-flash"}  # fmt: skip
    with serving(body) as url, llmtally.track() as t:
        client = genai.Client(api_key="AIza-not-a-real-key", http_options=types.HttpOptions(base_url=url))
        got = client.models.generate_content(model="gemini-2.0-flash", contents="hello there")
    assert got.text == ANSWER
    (call,) = t.calls
    assert call.estimated and call.usage is not None and call.usage.completion_tokens >= 40


def anthropic_stream(start: dict[str, Any], delta: dict[str, Any]) -> list[dict[str, Any]]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
               "content": [], "stop_reason": None, "usage": start}  # fmt: skip
    words = ANSWER.split(" ")
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w + " "}}
          for w in words),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta},
        {"type": "message_stop"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "delta"),
    [({"input_tokens": 9, "output_tokens": 1}, {"output_tokens": None}),
     ({"input_tokens": None, "output_tokens": 1}, {"output_tokens": 45}),
     ({"input_tokens": 9, "output_tokens": 1}, {"output_tokens": -1}),
     ({"input_tokens": 9, "output_tokens": 1}, {"output_tokens": "x"}),
     ({"input_tokens": 9, "output_tokens": 1}, {})],
    ids=["output null", "input null", "output negative", "output text", "delta empty"],
)  # fmt: skip
def test_anthropic_stream_poison_is_estimated_from_the_streamed_text(
    start: dict[str, Any], delta: dict[str, Any]
) -> None:
    """Was: a null output count kept message_start's placeholder (1), a null input count was a silent
    0, and a bad output count was estimated as 0 (the streamed text was dropped at message_delta)."""
    import anthropic

    with serving(anthropic_stream(start, delta)) as url, llmtally.track() as t:
        client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0)
        with client.messages.stream(
            model="claude-3-5-haiku-20241022", max_tokens=100, messages=MESSAGES
        ) as stream:
            text = "".join(stream.text_stream)
    assert text.strip() == ANSWER.strip()  # the caller's stream, untouched
    (call,) = t.calls
    assert call.estimated and call.usage is not None
    assert call.usage.prompt_tokens > 0 and call.usage.completion_tokens >= 40


# ---- the ledger: a bad record is set apart, the good ones are written, now and later ----

postgres = postgres_fixture()


def good_call(i: int) -> Call:
    call = Call("openai", "chat.completions", "gpt-4o")
    call.started_at, call.latency = 1_790_000_000.0 + i, 0.25
    call.usage, call.ok, call.status = Usage(10 + i, 5), True, 200
    return call


def poisoned(row: tuple[object, ...], column: str, value: object) -> tuple[object, ...]:
    at = NAMES.index(column)
    return (*row[:at], value, *row[at + 1 :])


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path, isolated_spool: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        yield server.new_database("poison")


def stored_ids(url: str) -> list[str]:
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return sorted(r[0] for r in conn.execute("SELECT id FROM calls"))
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(url) as conn:
        return sorted(r[0] for r in conn.execute("SELECT id FROM calls").fetchall())


def write_batches(url: str, *batches: list[tuple[object, ...]]) -> Writer:
    """Each batch written as the writer writes one."""
    led = open_ledger(url)
    assert led is not None
    writer = Writer(led, interval=60)
    for rows in batches:
        _write(writer, rows)
    return writer


def _write(writer: Writer, rows: list[tuple[object, ...]]) -> None:
    # The writer's own path for one batch (``_write`` takes Calls; these are rows already).
    try:
        writer._catch_up()
        writer._write_rows(list(rows))  # type: ignore[arg-type]
    except Exception as exc:
        writer._failed(exc)
        writer._keep(list(rows))  # type: ignore[arg-type]


class TestBadRecordsNeverBlockGoodOnes:
    @pytest.mark.parametrize(
        ("column", "value"),
        [("prompt_tokens", 2**63), ("cost_pico", 2**64), ("model", "nul\x00inside"), ("started_at", None)],
    )
    def test_a_poison_row_is_set_apart_and_the_rest_written(
        self, ledger_url: str, column: str, value: object
    ) -> None:
        rows = [to_row(good_call(i)) for i in range(5)]
        bad = poisoned(to_row(good_call(99)), column, value)
        batch = [*rows[:2], bad, *rows[2:]]
        writer = write_batches(ledger_url, batch, [to_row(good_call(i)) for i in range(5, 8)])
        try:
            stored = stored_ids(ledger_url)
            if column == "model" and ledger_url.startswith("sqlite"):
                # SQLite stores a NUL inside text: no poison there, and nothing is set apart.
                assert len(stored) == 9 and writer.spool is not None and writer.spool.quarantined() == []
                return
            want = sorted(str(r[0]) for r in batch if r is not bad)
            assert set(want) <= set(stored) and str(bad[0]) not in stored and len(stored) == 8
            assert writer.spool is not None and not writer.spool.pending()  # nothing left waiting
            (dead,) = writer.spool.quarantined()
            assert dead["record"]["id"] == bad[0] and column in dead["reason"]
        finally:
            writer.close()

    def test_a_refusal_no_check_names_is_found_by_splitting(
        self, ledger_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The ledger refuses a row for a reason check_row does not know: halving finds it."""
        monkeypatch.setattr(writer_module, "check_row", lambda row: None)
        rows = [to_row(good_call(i)) for i in range(9)]
        bad = poisoned(to_row(good_call(99)), "completion_tokens", 2**63)
        writer = write_batches(ledger_url, [*rows[:4], bad, *rows[4:]])
        try:
            assert len(stored_ids(ledger_url)) == 9
            assert writer.spool is not None
            (dead,) = writer.spool.quarantined()
            assert dead["record"]["id"] == bad[0] and "refused by the ledger" in dead["reason"]
        finally:
            writer.close()

    def test_an_outage_is_spooled_never_quarantined(
        self, tmp_path: Path, isolated_spool: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ledger that refuses everything (a locked file) is an outage: rows wait in the spool."""
        import sqlite3

        from llmtally.ledger import sqlite as sqlite_ledger

        monkeypatch.setattr(sqlite_ledger, "BUSY_TIMEOUT", 0.1)
        path = tmp_path / "locked.db"
        url = f"sqlite:///{path}"
        led = open_ledger(url)
        assert led is not None
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        writer = Writer(led, interval=60)
        try:
            _write(writer, [to_row(good_call(i)) for i in range(4)])
            assert writer.spool is not None and len(writer.spool.read()) == 4
            assert writer.spool.quarantined() == []
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
            writer.close()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"null", "not a record but a JSON NoneType"),
        (b"[1, 2, 3]", "not a record but a JSON list"),
        (b'{"id": "x"}', "is missing"),
        (b"{not json", "not JSON"),
    ],
)
def test_a_spool_line_that_is_no_record_never_blocks_the_rest(ledger_url: str, line: bytes, why: str) -> None:
    led = open_ledger(ledger_url)
    assert led is not None
    writer = Writer(led, interval=60)
    try:
        assert writer.spool is not None
        good = [to_row(good_call(i)) for i in range(3)]
        writer.spool.append(good[:2])
        with open(writer.spool.path, "ab") as f:
            f.write(line + b"\n")
        writer.spool.append(good[2:])
        wrong_type = poisoned(to_row(good_call(50)), "pid", "not a pid")
        with open(writer.spool.path, "ab") as f:
            f.write(json.dumps(dict(zip(NAMES, wrong_type, strict=True))).encode() + b"\n")
        _write(writer, [to_row(good_call(9))])
        assert len(stored_ids(ledger_url)) == 4 and not writer.spool.pending()
        reasons = [d["reason"] for d in writer.spool.quarantined()]
        assert len(reasons) == 2 and why in reasons[0] and "pid" in reasons[1]
    finally:
        writer.close()


def test_a_huge_count_from_the_server_reaches_the_ledger_as_an_estimate(ledger_url: str) -> None:
    """The issue's first row, end to end: once a server sent 2**63, the ledger took nothing again."""
    llmtally.configure(ledger=ledger_url)
    try:
        for value in (2**63, 12):
            fake = FakeProvider(handler=lambda req, v=value: Reply(prompt_tokens=v, completion_tokens=3))
            with fake.serve() as url:
                client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert llmtally.flush()
        (row,) = [r for r in llmtally.report(ledger=ledger_url, by=["model"])]
        assert row.requests == 2 and row.estimated_requests == 1 and row.prompt_tokens < 10**6
    finally:
        llmtally.configure(ledger="none")


def test_breaker_findings_on_counts() -> None:
    """A 5,000-digit count (int() refuses it) is noted, not an exception; Anthropic's and Gemini's
    stated null counts are noted as OpenAI's are."""
    from llmtally.wire.anthropic import Messages
    from llmtally.wire.gemini import GenerateContent

    assert as_int("9" * 5000) == 0 and bad_count() == "9" * 5000
    Messages().body({"type": "message", "usage": {"input_tokens": 3, "output_tokens": None}})
    assert bad_count() is None
    GenerateContent().body({"usageMetadata": {"promptTokenCount": None, "candidatesTokenCount": 3}})
    assert bad_count() is None


def test_a_bad_spool_line_is_set_apart_once_however_often_the_replay_fails(isolated_spool: Path) -> None:
    from llmtally.ledger._spool import Spool

    spool = Spool("sqlite:///nowhere.db")
    spool.append([to_row(good_call(1))])
    with open(spool.path, "ab") as f:
        f.write(b"[1, 2]\n")

    def down(rows: object) -> None:
        raise OSError("the ledger is down")

    for _ in range(3):
        with pytest.raises(OSError):
            spool.replay(down)
    assert len(spool.quarantined()) == 1 and len(spool.read()) == 1
