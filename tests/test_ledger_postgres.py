"""The PostgreSQL ledger, against a real server: records, several processes, foreign databases,
bad URLs and passwords, and the spool that keeps records while the server is down."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from _postgres import PostgresServer, _free_port, postgres_fixture
from psycopg.rows import dict_row
from test_ledger import CHILD

import llmtally
from llmtally._runtime import RUNTIME
from llmtally.ledger._records import SCHEMA_VERSION
from llmtally.testing import FakeProvider, Reply

ALL_VERSIONS = [(v,) for v in range(1, SCHEMA_VERSION + 1)]

postgres = postgres_fixture()


def admin_url(server: PostgresServer, dbname: str = "postgres") -> str:
    return server.url_for(dbname)


@pytest.fixture
def db(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the test server, for this test alone."""
    return postgres.new_database("t")


@pytest.fixture
def spool_dir(isolated_spool: Path) -> Path:
    return isolated_spool


def rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM calls ORDER BY started_at, id").fetchall()


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        got = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).fetchall()
    return [r[0] for r in got]


@pytest.fixture
def client() -> httpx2.Client:
    fake = FakeProvider(
        handler=lambda req: Reply(
            text="an answer", prompt_tokens=11, completion_tokens=13, model="gpt-4-0613"
        )
    )
    return httpx2.Client(transport=fake.httpx2_transport())


def call(client: httpx2.Client) -> None:
    r = client.post(
        "http://fake/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200


class TestRecords:
    """Each call becomes one row with exact fields, as in the SQLite ledger."""

    def test_record_fields(self, db: str, client: httpx2.Client) -> None:
        llmtally.configure(ledger=db)
        call(client)
        with llmtally.track("job", tags={"user": "u42"}), llmtally.track("step", tags={"team": "search"}):
            call(client)
        assert llmtally.flush()
        first, second = rows(db)
        assert first["model"] == "gpt-4-0613" and first["requested_model"] == "gpt-4"
        assert first["endpoint"] == "chat.completions" and first["provider"] == "openai"
        assert (first["prompt_tokens"], first["completion_tokens"]) == (11, 13)
        assert first["cost"] == "0.00111" and first["cost_pico"] == 1_110_000_000
        assert Decimal(first["cost"]) == llmtally.cost_of("gpt-4", input_tokens=11, output_tokens=13)
        assert first["ok"] == 1 and first["status"] == 200 and first["estimated"] == 0
        assert first["stream"] == 0 and first["currency"] == "USD"
        assert first["pid"] == os.getpid() and first["host"]
        assert isinstance(first["started_at"], float) and first["ended_at"] >= first["started_at"]
        assert json.loads(first["scope_path"]) == [] and first["tags"] is None
        assert json.loads(second["scope_path"]) == ["job", "step"]
        assert json.loads(second["tags"]) == {"team": "search", "user": "u42"}
        assert first["price_source"].startswith("genai-prices")

    def test_schema_and_reopen(self, db: str, client: httpx2.Client) -> None:
        llmtally.configure(ledger=db)
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT version FROM llmtally_schema").fetchall() == ALL_VERSIONS
        call(client)
        llmtally.flush()
        # Reopening (postgres:// is the same scheme) keeps the rows and does not migrate again.
        llmtally.configure(ledger=db.replace("postgresql://", "postgres://"))
        call(client)
        llmtally.flush()
        assert len(rows(db)) == 2
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM llmtally_schema").fetchone() == (SCHEMA_VERSION,)

    def test_repr_and_url_hide_the_password(self, db: str, postgres: PostgresServer) -> None:
        llmtally.configure(ledger=db)
        writer = RUNTIME.writer
        assert writer is not None
        assert postgres.password not in writer.ledger.url and ":***@" in writer.ledger.url
        assert postgres.password not in repr(writer.ledger)

    def test_reconnects_after_a_restart(
        self, db: str, postgres: PostgresServer, client: httpx2.Client, spool_dir: Path
    ) -> None:
        llmtally.configure(ledger=db)
        call(client)
        assert llmtally.flush()
        postgres.stop()
        postgres.start()
        call(client)  # the writer's connection died with the old server: a new one, no spool
        assert llmtally.flush()
        assert len(rows(db)) == 2
        assert not spool_dir.exists() or not list(spool_dir.iterdir())

    def test_a_forked_child_leaves_the_parent_connection_alone(self, db: str, client: httpx2.Client) -> None:
        llmtally.configure(ledger=db)
        call(client)
        assert llmtally.flush()
        ledger = RUNTIME.writer.ledger  # type: ignore[union-attr]
        conn = ledger._conn
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                call(client)
                code = 0 if llmtally.flush() else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        call(client)
        assert llmtally.flush()
        # Had the child closed its inherited copy, the server would have ended this session.
        assert ledger._conn is conn and not conn.broken
        got = rows(db)
        assert len(got) == 3 and len({r["pid"] for r in got}) == 2


class TestMigration:
    """A PostgreSQL ledger of schema 1 is migrated in place: rows kept, the new kinds' columns added."""

    def test_v1_to_current(self, db: str, client: httpx2.Client) -> None:
        from llmtally.ledger.postgres import _MIGRATIONS

        with psycopg.connect(db, autocommit=True) as conn:
            for statement in _MIGRATIONS[1]:  # the ledger as schema version 1 made it
                conn.execute(statement)
            conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at FLOAT)")
            conn.execute("INSERT INTO llmtally_schema VALUES (1, 0)")
            conn.execute(
                "INSERT INTO calls (id, started_at, ended_at, latency_ms, endpoint, ok, stream, "
                "prompt_tokens, completion_tokens, currency, estimated, scope_path, host, pid, cost, "
                "cost_pico) VALUES ('old-1', 1, 2, 1000, 'chat.completions', 1, 0, 11, 13, 'USD', 0, '[]', "
                "'h', 1, '0.00111', 1110000000)"
            )
        (before,) = llmtally.report(ledger=db)  # read without migrating: the new kinds sum to 0
        assert before.requests == 1 and before.cache_write_1h_tokens == 0
        llmtally.configure(ledger=db)
        call(client)
        llmtally.flush()
        got = rows(db)
        assert got[0]["id"] == "old-1" and len(got) == 2
        assert "cache_write_1h_tokens" in got[0] and got[0]["cache_write_1h_tokens"] is None
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT version FROM llmtally_schema ORDER BY 1").fetchall() == ALL_VERSIONS


class TestProcesses:
    """Several processes creating and writing one new ledger at once."""

    def test_four_processes_at_once(self, db: str) -> None:
        env = {**os.environ, "LEDGER": db}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, "150", "0.1", "exit"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        got = rows(db)
        assert len(got) == 600 and len({r["id"] for r in got}) == 600
        assert len({r["pid"] for r in got}) == 4
        assert sum(Decimal(r["cost"]) for r in got) == Decimal("0.00111") * 600
        assert sum(r["cost_pico"] for r in got) == 1_110_000_000 * 600
        with psycopg.connect(db) as conn:  # created once, by whichever process came first
            assert conn.execute("SELECT version FROM llmtally_schema").fetchall() == ALL_VERSIONS

    def test_concurrent_first_opens_migrate_once(self, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Eight openers of one new ledger at the same moment: no "already exists", one schema row."""
        from llmtally.ledger.postgres import PostgresLedger

        start = threading.Barrier(8)
        errors: list[BaseException] = []
        opened: list[PostgresLedger] = []
        connect = PostgresLedger._connect

        def connect_then_wait(self: PostgresLedger) -> Any:
            conn = connect(self)
            start.wait()  # all connected: the eight migrations start together
            return conn

        monkeypatch.setattr(PostgresLedger, "_connect", connect_then_wait)

        def open_it() -> None:
            try:
                opened.append(PostgresLedger(db))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for led in opened:
            led.close()
        assert errors == [] and len(opened) == 8
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT version FROM llmtally_schema").fetchall() == ALL_VERSIONS


class TestBadInput:
    """Foreign databases, bad URLs, wrong passwords: a clear LedgerError, no password, no change."""

    def test_foreign_database_refused_and_untouched(self, db: str) -> None:
        with psycopg.connect(db) as conn:
            conn.execute("CREATE TABLE calls (caller TEXT, minutes INTEGER)")
            conn.execute("INSERT INTO calls VALUES ('alice', 3)")
        with pytest.raises(llmtally.LedgerError, match="not an llmtally ledger"):
            llmtally.configure(ledger=db)
        assert tables(db) == ["calls"]
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT * FROM calls").fetchall() == [("alice", 3)]
            cols = conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'calls' "
                "ORDER BY ordinal_position"
            ).fetchall()
        assert cols == [("caller",), ("minutes",)]

    def test_other_tables_are_fine(self, db: str, client: httpx2.Client) -> None:
        # A shared application database without a calls table of its own is usable.
        with psycopg.connect(db) as conn:
            conn.execute("CREATE TABLE users (id INTEGER)")
        llmtally.configure(ledger=db)
        call(client)
        llmtally.flush()
        assert tables(db) == ["calls", "llmtally_schema", "refusals", "users"]
        assert len(rows(db)) == 1

    @staticmethod
    def raised(url: str, match: str, secret: str) -> llmtally.LedgerError:
        with pytest.raises(llmtally.LedgerError, match=match) as info:
            llmtally.configure(ledger=url)
        text = "".join(traceback.format_exception(info.type, info.value, info.tb))
        assert secret not in text  # neither in the message nor in a chained driver error
        return info.value

    def test_wrong_password(self, postgres: PostgresServer) -> None:
        url = admin_url(postgres).replace(postgres.password, "wrong-pass-7f3a9")
        err = self.raised(url, "password authentication failed", "wrong-pass-7f3a9")
        assert ":***@127.0.0.1" in str(err)

    def test_a_server_down_is_not_an_error_and_its_password_is_not_logged(
        self, postgres: PostgresServer, caplog: pytest.LogCaptureFixture, isolated_spool: Path
    ) -> None:
        """Connection refused is a server down: configure() works, the records wait in the spool
        (tests/test_outages.py sees them land once it is back), the password is in no message."""
        url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{_free_port()}/x"
        with caplog.at_level(logging.WARNING, logger="llmtally"):
            llmtally.configure(ledger=url)
        assert "Connection refused" in caplog.text and "spooled until it can be reached" in caplog.text
        assert postgres.password not in caplog.text

    @pytest.mark.parametrize(
        "url, match",
        [
            # libpq quotes the whole URL, password included, in this one.
            ("postgresql://u:{pw}@[::1/db", "bad PostgreSQL ledger URL .*IPv6 host address"),
            ("postgresql://u:{pw}@127.0.0.1:notaport/db", 'invalid integer value "notaport"'),
            ("postgresql://u:{pw}@127.0.0.1:{port}/db?nosuchoption=1", "bad PostgreSQL ledger URL"),
            (
                "postgresql://u:{pw}@127.0.0.1:{port}/db?password=second-secret-1234",
                "password authentication failed",
            ),
        ],
    )
    def test_bad_url(self, postgres: PostgresServer, url: str, match: str) -> None:
        err = self.raised(url.format(pw="first-secret-5678", port=postgres.port), match, "first-secret-5678")
        assert "second-secret-1234" not in str(err) and ":***@" in str(err)

    def test_env_value_logged_without_password(self, postgres: PostgresServer) -> None:
        url = admin_url(postgres).replace(postgres.password, "env-secret-4242")
        code = "import llmtally\nwith llmtally.track():\n    pass\nprint('ran')"
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "LLMTALLY_LEDGER": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0 and out.stdout.strip() == "ran"
        assert "password authentication failed" in out.stderr
        assert "env-secret-4242" not in out.stderr


def spooled(spool_dir: Path) -> list[dict[str, Any]]:
    files = list(spool_dir.glob("*.jsonl")) if spool_dir.exists() else []
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


class TestSpool:
    """While the server is down, records go to the spool; when it is back, they arrive once."""

    def test_server_down_then_back(
        self,
        db: str,
        postgres: PostgresServer,
        client: httpx2.Client,
        spool_dir: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="llmtally")
        llmtally.configure(ledger=db)
        for _ in range(3):
            call(client)
        assert llmtally.flush()
        before = {r["id"] for r in rows(db)}
        assert len(before) == 3
        postgres.stop()
        try:
            with llmtally.track("outage", tags={"k": "v"}) as t:
                for _ in range(5):
                    call(client)
            assert len(t.calls) == 5  # calls keep working
            assert llmtally.flush()  # and flushing does not raise
            for _ in range(2):
                call(client)
            assert llmtally.flush()
            held = spooled(spool_dir)
            assert len(held) == 7 and not {r["id"] for r in held} & before
            assert json.loads(held[0]["scope_path"]) == ["outage"] and held[0]["cost"] == "0.00111"
            (spool_file,) = spool_dir.glob("*.jsonl")
            assert postgres.password not in spool_file.name + spool_file.read_text()
            assert any(r.levelno == logging.WARNING and "spool" in r.getMessage() for r in caplog.records)
            assert postgres.password not in caplog.text
        finally:
            postgres.start()
        assert llmtally.flush()
        got = rows(db)
        assert len(got) == 10 and len({r["id"] for r in got}) == 10
        assert {r["id"] for r in got} == before | {r["id"] for r in held}
        outage = [r for r in got if json.loads(r["scope_path"]) == ["outage"]]
        assert len(outage) == 5 and all(r["cost_pico"] == 1_110_000_000 for r in outage)
        assert not spool_file.exists()
        assert any(
            r.levelno == logging.INFO and "replayed 7 spooled records" in r.getMessage()
            for r in caplog.records
        )
        call(client)  # and business as usual
        assert llmtally.flush()
        assert len(rows(db)) == 11

    def test_replay_skips_rows_already_written(self, db: str, client: httpx2.Client) -> None:
        # A batch whose COMMIT reached the server but whose reply was lost is spooled anyway.
        llmtally.configure(ledger=db)
        call(client)
        assert llmtally.flush()
        writer = RUNTIME.writer
        assert writer is not None and writer.spool is not None
        (row,) = rows(db)
        writer.spool.append([tuple(row.values())])
        assert llmtally.flush()
        assert len(rows(db)) == 1 and not writer.spool.pending()

    def test_a_later_process_replays_the_spool(
        self, db: str, postgres: PostgresServer, client: httpx2.Client, spool_dir: Path
    ) -> None:
        llmtally.configure(ledger=db)
        postgres.stop()
        try:
            call(client)
            assert llmtally.flush()
            llmtally.configure(ledger="none")  # the process "exits" with records spooled
        finally:
            postgres.start()
        assert len(spooled(spool_dir)) == 1
        llmtally.configure(ledger=db)
        assert llmtally.flush()
        assert len(rows(db)) == 1 and spooled(spool_dir) == []
