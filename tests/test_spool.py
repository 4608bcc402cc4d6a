"""The spool: records kept on local disk while the ledger cannot be written, replayed exactly once."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

import llmtally
from llmtally import ledger as ledger_pkg
from llmtally._runtime import RUNTIME
from llmtally.ledger import sqlite
from llmtally.ledger._records import LATER_COLUMNS
from llmtally.ledger._spool import Spool, spool_dir
from llmtally.ledger._writer import Writer
from llmtally.testing import FakeProvider, Reply


@pytest.fixture
def spool(isolated_spool: Path) -> Path:
    return isolated_spool


@pytest.fixture
def client() -> httpx2.Client:
    fake = FakeProvider(
        handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4-0613")
    )
    return httpx2.Client(transport=fake.httpx2_transport())


def call(client: httpx2.Client, n: int = 1) -> None:
    for _ in range(n):
        r = client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
        assert r.status_code == 200


def ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM calls")]
    finally:
        conn.close()


def spooled(directory: Path) -> list[dict[str, Any]]:
    files = list(directory.glob("*.jsonl")) if directory.exists() else []
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


# In ledger COLUMNS order (then the columns later schema versions added, each None here).
ROW = (
    "id-1", 1700000000.123456789, 1700000001.5, 0.1 + 0.2, "openai", "gpt-4", "gpt-4-0613",
    "chat.completions", None, 200, 1, None, 0, 11, 13, None, None, None, "0.00111", 1_110_000_000,
    "USD", 0, "genai-prices", '["a", "b"]', '{"k": "v"}', "host", 42, *(None,) * len(LATER_COLUMNS),
)  # fmt: skip


class TestSpoolFile:
    """One JSON-lines file per ledger URL; exact round trip; safe against torn lines and races."""

    def test_location_and_name(self, spool: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        s = Spool("postgresql://app:***@db/prod")
        assert Path(s.path).parent == spool and s.path.endswith(".jsonl")
        assert Spool("postgresql://app:***@db/other").path != s.path
        assert "app" not in Path(s.path).name and "prod" not in Path(s.path).name
        monkeypatch.delenv("LLMTALLY_SPOOL_DIR")
        assert spool_dir() == os.path.join(os.path.dirname(ledger_pkg.default_sqlite_path()), "spool")

    def test_round_trip_is_exact(self, spool: Path) -> None:
        s = Spool("sqlite:////x.db")
        assert not s.pending() and s.read() == []
        s.append([ROW, ROW])
        assert s.pending() and s.read() == [ROW, ROW]
        (line, _) = (spool / Path(s.path).name).read_text().splitlines()
        assert json.loads(line)["cost"] == "0.00111" and json.loads(line)["latency_ms"] == 0.1 + 0.2

    def test_replay_deletes_only_after_writing(self) -> None:
        s = Spool("sqlite:////x.db")
        s.append([ROW])

        def fail(rows: Any) -> None:
            raise OSError("disk full")

        with pytest.raises(OSError):
            s.replay(fail)
        assert s.read() == [ROW]  # kept for the next try
        got: list[Any] = []
        assert s.replay(got.extend) == 1
        assert got == [ROW] and not s.pending()
        assert s.replay(got.extend) == 0

    def test_torn_line_does_not_swallow_the_next(self, caplog: pytest.LogCaptureFixture) -> None:
        s = Spool("sqlite:////x.db")
        s.append([ROW])
        with open(s.path, "ab") as f:
            f.write(b'{"id": "torn", "start')  # a process died mid-append
        s.append([("id-2", *ROW[1:])])
        got: list[Any] = []
        assert s.replay(got.extend) == 2
        assert [r[0] for r in got] == ["id-1", "id-2"]
        assert "torn by a crash" in caplog.text
        (dead,) = s.quarantined()  # kept apart with why, not dropped
        assert dead["line"] == '{"id": "torn", "start' and "not JSON" in dead["reason"]

    def test_concurrent_appends_and_replays_lose_nothing(self) -> None:
        """4 processes append while this one replays in a loop: every row comes out exactly once."""
        s = Spool("postgresql://race")
        code = textwrap.dedent(
            """
            import json, sys
            from llmtally.ledger._spool import Spool
            s, who = Spool("postgresql://race"), sys.argv[1]
            row = tuple(json.loads(sys.argv[2]))
            for i in range(100):
                s.append([(f"{who}-{i}-{j}",) + row[1:] for j in range(5)])
            """
        )
        template = json.dumps(list(ROW))
        procs = [subprocess.Popen([sys.executable, "-c", code, str(w), template]) for w in range(4)]
        got: list[Any] = []
        while any(p.poll() is None for p in procs):
            s.replay(got.extend)
        for p in procs:
            assert p.wait(60) == 0
        s.replay(got.extend)
        names = [r[0] for r in got]
        assert len(names) == 2000 and len(set(names)) == 2000


class TestSQLiteSpool:
    """A locked SQLite ledger: calls keep working, records wait in the spool, then arrive once."""

    def test_locked_file(
        self,
        tmp_path: Path,
        spool: Path,
        client: httpx2.Client,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="llmtally")
        monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
        path = tmp_path / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        call(client, 2)
        assert llmtally.flush()
        before = ids(path)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holding the write lock
        try:
            call(client, 3)
            assert llmtally.flush()
            call(client, 1)
            assert llmtally.flush()
            held = spooled(spool)
            assert len(held) == 4 and not {r["id"] for r in held} & set(before)
            assert "cannot write to the ledger" in caplog.text and "database is locked" in caplog.text
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert llmtally.flush()
        got = ids(path)
        assert len(got) == 6 and set(got) == set(before) | {r["id"] for r in held}
        assert spooled(spool) == [] and not list(spool.glob("*.jsonl"))
        assert "replayed 4 spooled records" in caplog.text

    def test_spool_unwritable_falls_back_to_memory(
        self, tmp_path: Path, client: httpx2.Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        monkeypatch.setenv("LLMTALLY_SPOOL_DIR", str(not_a_dir / "spool"))  # root cannot mkdir there either
        monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
        path = tmp_path / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            call(client, 3)
            assert llmtally.flush()
            writer = RUNTIME.writer
            assert writer is not None and len(writer._backlog) == 3
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        call(client)
        assert llmtally.flush()
        assert len(set(ids(path))) == len(ids(path)) == 4


class TestSQLiteIgnoreDuplicates:
    """The replay path of the SQLite backend skips ids already there; the normal path refuses them."""

    def test_ignore_duplicates(self, tmp_path: Path) -> None:
        led = sqlite.SQLiteLedger(str(tmp_path / "l.db"))
        try:
            led.write([ROW])
            with pytest.raises(sqlite3.IntegrityError):
                led.write([ROW, ("id-2", *ROW[1:])])
            led.write([ROW, ("id-2", *ROW[1:])], ignore_duplicates=True)
            assert sorted(ids(tmp_path / "l.db")) == ["id-1", "id-2"]
        finally:
            led.close()


class FlakyLedger:
    """A ledger that is down while ``down`` is set; refuses duplicate ids unless told to skip them."""

    url = "test://flaky"

    def __init__(self) -> None:
        self.down = True
        self.attempts = 0
        self.rows: dict[str, tuple[Any, ...]] = {}

    def write(self, rows: Any, *, ignore_duplicates: bool = False) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("ledger down")
        if not ignore_duplicates and any(r[0] in self.rows for r in rows):
            raise ValueError("duplicate id")
        for r in rows:
            self.rows.setdefault(r[0], r)

    def close(self) -> None:
        pass


class TestWriter:
    """The writer backs off from a failing ledger; a flush tries it anyway, except at exit."""

    def test_backoff_and_flush(self, client: httpx2.Client, spool: Path) -> None:
        ledger = FlakyLedger()
        writer = Writer(ledger, interval=0.02)
        RUNTIME.add_sink(writer.sink)
        try:
            call(client)
            assert writer.flush()
            t0 = time.monotonic()
            assert ledger.attempts == 1 and writer._delay == 0.5
            call(client)
            assert writer.flush(retry=False)  # as at exit: spooled, the failing ledger not tried
            assert ledger.attempts == 1 and len(spooled(spool)) == 2
            call(client, 3)  # queued, picked up every 20 ms, spooled without trying the ledger
            while len(spooled(spool)) < 5 and time.monotonic() - t0 < 0.4:
                time.sleep(0.01)
            assert len(spooled(spool)) == 5
            assert ledger.attempts == 1  # within the first retry delay (0.5 s): no new attempt
            time.sleep(max(0.0, t0 + 0.6 - time.monotonic()))
            call(client)  # after it (or idle, for the spool): tried again, the delay doubled
            while (ledger.attempts < 2 or len(spooled(spool)) < 6) and time.monotonic() - t0 < 5:
                time.sleep(0.01)
            assert ledger.attempts == 2 and writer._delay == 1.0 and len(spooled(spool)) == 6
            ledger.down = False
            assert writer.flush()
            assert len(ledger.rows) == 6 and spooled(spool) == []
            assert writer._delay == 0 and not writer._failing
        finally:
            RUNTIME.remove_sink(writer.sink)
            writer.close()
