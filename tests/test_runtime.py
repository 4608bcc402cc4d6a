"""The runtime: which ledger every verb uses, start and stop, and kinds carried end to end."""

from __future__ import annotations

import json
import sqlite3
import time
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

import llmtally
from llmtally._core.usage import KINDS, TOKEN_NAMES, Usage
from llmtally._runtime import RUNTIME
from llmtally.cli import cli_logic
from llmtally.ledger._records import SCHEMA_VERSION, V1_KINDS, columns_at
from llmtally.testing import FakeProvider, Reply

CHAT = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


def one_hour_write(req: object) -> Reply:
    """An Anthropic answer that wrote 1,000 tokens to the one-hour cache (of 3,000 written)."""
    return Reply(
        text="ok",
        prompt_tokens=3_500,
        completion_tokens=20,
        cache_write_tokens=3_000,
        cache_write_1h_tokens=1_000,
        model="claude-sonnet-4-5",
    )


def post_messages(client: httpx2.Client) -> None:
    r = client.post("http://fake/v1/messages", json=CHAT)
    assert r.status_code == 200


class TestWhichLedger:
    """One rule everywhere: the URL given, else the configured one, else LLMTALLY_LEDGER, else the default."""

    def test_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        configured, env = f"sqlite:///{tmp_path / 'conf.db'}", f"sqlite:///{tmp_path / 'env.db'}"
        monkeypatch.delenv("LLMTALLY_LEDGER", raising=False)
        assert RUNTIME.ledger_url() == "sqlite://"
        assert RUNTIME.ledger_url(default=None) is None
        monkeypatch.setenv("LLMTALLY_LEDGER", env)
        assert RUNTIME.ledger_url() == env
        llmtally.configure(ledger=configured)
        assert RUNTIME.ledger_url() == configured
        assert RUNTIME.ledger_url("sqlite:///given.db") == "sqlite:///given.db"
        llmtally.configure(ledger="none")  # recording nothing: reads fall back to the environment
        assert RUNTIME.ledger_url() == env

    def test_report_reads_the_configured_ledger(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Another ledger in the environment, with a call of its own: report() must not read it.
        other = tmp_path / "other.db"
        monkeypatch.setenv("LLMTALLY_LEDGER", f"sqlite:///{other}")
        fake = FakeProvider(
            handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
        )
        client = httpx2.Client(transport=fake.httpx2_transport())
        llmtally.configure(ledger=f"sqlite:///{other}")
        client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
        llmtally.flush()
        mine = tmp_path / "mine.db"
        llmtally.configure(ledger=f"sqlite:///{mine}")
        for _ in range(3):
            client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
        llmtally.flush()
        (row,) = llmtally.report(by=["model"])
        assert row.requests == 3 and row.cost == Decimal("0.00333")
        (env_row,) = llmtally.report(ledger=f"sqlite:///{other}")
        assert env_row.requests == 1

    def test_budget_and_cli_use_the_same_rule(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("LLMTALLY_LEDGER", raising=False)
        with pytest.raises(ValueError, match="a shared budget lives in a ledger"):
            llmtally.budget("b", max_cost="1")
        url = f"sqlite:///{tmp_path / 'b.db'}"
        llmtally.configure(ledger=url)
        llmtally.budget("team", max_cost="2.5", period="day")
        llmtally.configure(ledger="none")
        monkeypatch.setenv("LLMTALLY_LEDGER", url)
        assert cli_logic(["budget", "list"]) == 0


class TestStartStop:
    """start() hooks the clients once; stop() restores them; a scope starts the runtime."""

    def test_round_trip(self) -> None:
        llmtally.uninstrument()
        assert not llmtally.is_instrumented() and not hasattr(httpx2.Client.send, "__llmtally_original__")
        with llmtally.track():
            assert llmtally.is_instrumented() and hasattr(httpx2.Client.send, "__llmtally_original__")
        llmtally.instrument()
        llmtally.instrument()  # idempotent: not wrapped twice
        assert not hasattr(httpx2.Client.send.__wrapped__, "__llmtally_original__")


class TestOneHourCacheWrites:
    """A kind declared once in Usage reaches the Tally, the summary, the ledger and the report."""

    def test_every_kind_is_everywhere(self) -> None:
        from llmtally._report import FIELDS
        from llmtally.ledger._records import NAMES, SUMS

        for name in TOKEN_NAMES:
            assert name in NAMES and name in SUMS and name in FIELDS
        assert [k.name for k in KINDS] == list(TOKEN_NAMES)
        assert {k.within for k in KINDS} <= {None, *TOKEN_NAMES}

    def test_end_to_end(self, tmp_path: Path) -> None:
        path = tmp_path / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        client = httpx2.Client(transport=FakeProvider(handler=one_hour_write).httpx2_transport())
        with llmtally.track() as t:
            post_messages(client)
        assert (t.cache_write_tokens, t.cache_write_1h_tokens) == (3_000, 1_000)
        assert t.by_model["claude-sonnet-4-5"].cache_write_1h_tokens == 1_000
        assert "            1h Cache Write Tokens: 1000" in str(t).splitlines()
        # Priced at the one-hour rate: dearer than the same writes at the five-minute rate.
        five_minutes = llmtally.cost_of(
            "claude-sonnet-4-5", input_tokens=3_500, output_tokens=20, cache_write_tokens=3_000
        )
        assert five_minutes is not None and t.cost > five_minutes
        assert t.cost == llmtally.cost_of(
            "claude-sonnet-4-5",
            input_tokens=3_500,
            output_tokens=20,
            cache_write_tokens=3_000,
            cache_write_1h_tokens=1_000,
        )
        llmtally.flush()
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT cache_write_1h_tokens FROM calls").fetchall() == [(1_000,)]
        assert conn.execute("SELECT SUM(cache_write_1h_tokens) FROM calls_hourly").fetchone() == (1_000,)
        conn.close()
        (row,) = llmtally.report(by=["model"])
        assert row.cache_write_1h_tokens == 1_000 and row.cost == t.cost


def write_v1_ledger(path: Path) -> None:
    """A ledger as llmtally wrote it at schema version 1 (its own migration), with one call in it."""
    from llmtally.ledger.sqlite import _MIGRATIONS

    conn = sqlite3.connect(path)
    v1 = columns_at(1)
    assert [n for n, _ in v1 if n.endswith("_tokens")] == list(V1_KINDS)
    for statement in _MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
    conn.execute("INSERT INTO llmtally_schema VALUES (1, 0)")
    started = time.time() - 7200
    conn.execute(
        f"INSERT INTO calls VALUES ({', '.join('?' * len(v1))})",
        ("old-1", started, started + 1, 1000.0, "openai", "gpt-4", "gpt-4", "chat.completions", None, 200, 1,
         None, 0, 11, 13, 0, 0, 0, "0.00111", 1_110_000_000, "USD", 0, "genai-prices", "[]", None, "h", 1),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO calls_hourly VALUES (?, 'gpt-4', 'openai', 'chat.completions', '[]', '', 1, 0, 11, 13, "
        "0, 0, 0, 1110000000, 0, 0)",
        (int(started // 3600 * 3600),),
    )
    conn.commit()
    conn.close()


class TestMigration:
    """A ledger of schema 1 is migrated forward in place: its records kept, the new kinds recorded."""

    def test_sqlite_v1_to_current(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        write_v1_ledger(path)
        # Read before migrating: a report does not migrate, and sums the missing kinds as 0.
        (before,) = llmtally.report(ledger=f"sqlite:///{path}", since="1d")
        assert before.requests == 1 and before.cache_write_1h_tokens == 0
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT MAX(version) FROM llmtally_schema").fetchone() == (1,)
        conn.close()
        llmtally.configure(ledger=f"sqlite:///{path}")
        client = httpx2.Client(transport=FakeProvider(handler=one_hour_write).httpx2_transport())
        post_messages(client)
        llmtally.flush()
        conn = sqlite3.connect(path)
        conn.row_factory = sqlite3.Row
        versions = [r[0] for r in conn.execute("SELECT version FROM llmtally_schema ORDER BY version")]
        rows = [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY started_at")]
        conn.close()
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert rows[0]["id"] == "old-1" and len(rows) == 2
        assert rows[0]["cache_write_1h_tokens"] is None and rows[1]["cache_write_1h_tokens"] == 1_000
        assert rows[0]["computed_cost"] is None and rows[1]["computed_cost"] is None
        assert json.loads(rows[1]["scope_path"]) == []
        totals = {r.keys[0]: r for r in llmtally.report(since="1d", by=["model"])}
        assert (
            totals["gpt-4"].prompt_tokens == 11 and totals["claude-sonnet-4-5"].cache_write_1h_tokens == 1_000
        )


def test_usage_positional_order_is_stable() -> None:
    """Usage(prompt, completion, cached, cache_write, reasoning): the order existing code relies on."""
    assert Usage(1, 2, 3, 4, 5) == Usage(
        prompt_tokens=1, completion_tokens=2, cached_tokens=3, cache_write_tokens=4, reasoning_tokens=5
    )
