"""Refusals in the ledger: a request a limit stopped (or warn mode let through) is recorded once,
through the writer's queue, in SQLite and PostgreSQL, spooled through an outage and replayed once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import openai
import pytest
from _postgres import postgres_fixture
from _sqlite import locked
from _ui import dashboard, iso

import llmtally
from llmtally.ledger import open_ledger
from llmtally.ledger._records import SCHEMA_VERSION, RefusalRow, from_spool, to_spool
from llmtally.ledger._spool import Spool
from llmtally.testing import FakeProvider, Reply

postgres = postgres_fixture()
CALL = Decimal("0.00111")  # gpt-4, 11 prompt + 13 completion tokens
HOSTILE = "<script>alert('x')</script>"


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(
        handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )


@pytest.fixture
def client(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )


def ask(client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "secret prompt text"}], max_tokens=13
    )


def rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM refusals ORDER BY at")]
    finally:
        conn.close()


class TestRecorded:
    """What a refusal leaves in the ledger."""

    def test_a_refused_request_is_recorded_once(
        self, tmp_path: Path, fake: FakeProvider, client: Any
    ) -> None:
        path = tmp_path / "l.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        with llmtally.track("job", tags={"team": "search"}), llmtally.track("agent", max_cost=CALL * 2):
            ask(client)
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert llmtally.flush()
        (r,) = rows(path)
        assert len(fake.requests) == 2
        assert r["action"] == "refused" and r["refused_by"] == "agent" and r["by_kind"] == "scope"
        assert r["limit_kind"] == "cost" and r["allowed"] == "0.00222" and r["spent"] == "0.00222"
        assert r["currency"] == "USD" and r["worst"] is None
        assert json.loads(r["scope_path"]) == ["job", "agent"] and json.loads(r["tags"]) == {"team": "search"}
        assert r["requested_model"] == "gpt-4" and r["provider"] == "openai" and r["pid"] == os.getpid()
        assert "secret prompt" not in json.dumps(r)

    def test_requests_limit_and_preflight(self, tmp_path: Path, client: Any) -> None:
        path = tmp_path / "l.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        with llmtally.track("a", max_requests=1):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        with llmtally.track("b", max_cost="0.0001", preflight=True), pytest.raises(llmtally.BudgetExceeded):
            ask(client)
        assert llmtally.flush()
        first, second = rows(path)
        assert (first["limit_kind"], first["allowed"], first["spent"]) == ("requests", "1", "1")
        assert second["refused_by"] == "b" and second["worst"] is not None and Decimal(second["worst"]) > 0

    def test_warn_mode_is_recorded_as_a_warning(
        self, tmp_path: Path, fake: FakeProvider, client: Any
    ) -> None:
        path = tmp_path / "l.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        with llmtally.track("w", max_requests=1, on_exceed="warn"):
            for _ in range(3):
                ask(client)
        assert llmtally.flush()
        found = rows(path)
        assert len(fake.requests) == 3  # sent
        assert [(r["action"], r["spent"]) for r in found] == [("warned", "1"), ("warned", "2")]

    def test_shared_budget(self, tmp_path: Path, client: Any) -> None:
        path = tmp_path / "l.db"
        url = f"sqlite:///{path}"
        llmtally.configure(ledger=url)
        with llmtally.budget("team", max_cost=CALL, ledger=url):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert llmtally.flush()
        (r,) = rows(path)
        assert r["refused_by"] == "team" and r["by_kind"] == "budget" and r["limit_kind"] == "cost"
        assert Decimal(r["spent"]) == CALL and Decimal(r["allowed"]) == CALL

    def test_without_a_ledger_nothing_is_made(self, client: Any) -> None:
        llmtally.configure(ledger="none")
        with llmtally.track("x", max_requests=0), pytest.raises(llmtally.BudgetExceeded):
            ask(client)  # nothing to record it in: no failure either

    def test_read_back_filtered(self, tmp_path: Path, client: Any) -> None:
        url = f"sqlite:///{tmp_path / 'l.db'}"
        llmtally.configure(ledger=url)
        for name in ("a", HOSTILE):
            with (
                llmtally.track(name, max_requests=0, tags={"who": name}),
                pytest.raises(llmtally.BudgetExceeded),
            ):
                ask(client)
        assert llmtally.flush()
        ledger = open_ledger(url, create=False)
        assert ledger is not None
        assert [r["refused_by"] for r in ledger.refusals(None, None)] == [HOSTILE, "a"]
        assert [r["refused_by"] for r in ledger.refusals(None, None, (("scope", ("a",)),))] == ["a"]
        assert [r["refused_by"] for r in ledger.refusals(None, None, (("tag:who", (HOSTILE,)),))] == [HOSTILE]
        assert ledger.refusals(None, None, (("model", ("gpt-4o",)),)) == []
        assert ledger.refusals(None, None, limit=None) == [{"action": "refused", "count": 2}]
        ledger.close()


class TestSchema:
    """Older ledgers and spools."""

    def test_an_older_ledger_reads_then_migrates(self, tmp_path: Path) -> None:
        path = tmp_path / "old.db"
        url = f"sqlite:///{path}"
        ledger = open_ledger(url)
        assert ledger is not None
        ledger.close()
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE refusals")  # as schema 12 left it
        conn.execute("DELETE FROM llmtally_schema WHERE version = ?", (SCHEMA_VERSION,))
        conn.commit()
        conn.close()
        old = open_ledger(url, create=False)
        assert (
            old is not None and old.refusals(None, None) == [] and old.refusals(None, None, limit=None) == []
        )
        old.close()
        llmtally.configure(ledger=url)  # opened to write: migrated in place
        assert rows(path) == []

    def test_spool_lines_of_both_kinds(self, tmp_path: Path) -> None:
        spool = Spool("sqlite:///x.db", str(tmp_path))
        call = from_spool({"id": "c1", "started_at": 1.0})  # an old line: no kind
        refusal = RefusalRow(
            ("r1", 2.0, "refused", "s", "scope", "cost", "1", "1", *[None] * 5, "[]", None, "h", 1, None)
        )
        assert type(call) is tuple and to_spool(refusal)["kind"] == "refusal"
        spool.append([refusal])
        (back,) = spool.read()
        assert type(back) is RefusalRow and back == refusal


class TestOutage:
    """The ledger cannot be written: refusals spool with the calls and land exactly once."""

    def test_locked_then_replayed_once(self, tmp_path: Path, client: Any, isolated_spool: Path) -> None:
        path = tmp_path / "l.db"
        url = f"sqlite:///{path}"
        llmtally.configure(ledger=url)
        llmtally.configure(ledger="none")  # the ledger exists
        with locked(path):
            llmtally.configure(ledger=url, flush_interval=0.05)
            with llmtally.track("s", max_requests=1):
                ask(client)
                with pytest.raises(llmtally.BudgetExceeded):
                    ask(client)
            assert llmtally.flush()  # spooled
            spooled = [
                json.loads(line)
                for f in isolated_spool.glob("*.jsonl")
                for line in f.read_text().splitlines()
            ]
            assert sorted(str(e.get("kind")) for e in spooled) == ["None", "refusal"]
        assert llmtally.flush()
        assert llmtally.flush()
        assert [r["refused_by"] for r in rows(path)] == ["s"]
        assert not list(isolated_spool.glob("*.jsonl"))

    def test_a_forked_childs_refusal_lands(self, tmp_path: Path, isolated_spool: Path) -> None:
        """A child forked from a SQLite writer spools; the parent moves its refusal in, once."""
        code = textwrap.dedent(
            f"""
            import os, httpx2, llmtally, sqlite3
            from llmtally.testing import FakeProvider, Reply
            llmtally.configure(ledger="sqlite:///{tmp_path / "l.db"}", flush_interval=60)
            fake = FakeProvider(handler=lambda r: Reply(text="x"))
            client = httpx2.Client(transport=fake.httpx2_transport())
            pid = os.fork()
            if pid == 0:
                try:
                    with llmtally.track("child", max_requests=0):
                        body = {{"model": "gpt-4", "messages": []}}
                        client.post("http://fake/v1/chat/completions", json=body)
                except llmtally.BudgetExceeded:
                    pass
                os._exit(0 if llmtally.flush() else 1)
            assert os.waitpid(pid, 0)[1] == 0
            assert llmtally.flush()
            assert llmtally.flush()
            db = sqlite3.connect("{tmp_path / "l.db"}")
            print(db.execute("SELECT refused_by, pid != ? FROM refusals", (os.getpid(),)).fetchall())
            """
        )
        env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "[('child', 1)]"


class TestPostgres:
    """The same in PostgreSQL, and its outage."""

    def test_recorded_once(self, postgres: Any, client: Any) -> None:
        url = postgres.new_database("refusals")
        llmtally.configure(ledger=url)
        with llmtally.track("pg", max_requests=1, tags={"k": "v"}):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert llmtally.flush()
        ledger = open_ledger(url, create=False)
        assert ledger is not None
        (r,) = ledger.refusals(None, None)
        assert (r["refused_by"], r["limit_kind"], r["spent"], r["allowed"]) == ("pg", "requests", "1", "1")
        assert json.loads(r["scope_path"]) == ["pg"] and json.loads(r["tags"]) == {"k": "v"}
        assert ledger.refusals(None, None, (("tag:k", ("v",)),), limit=None) == [
            {"action": "refused", "count": 1}
        ]
        ledger.close()

    def test_down_then_replayed_once(self, postgres: Any, client: Any, isolated_spool: Path) -> None:
        url = postgres.new_database("refusals_down")
        llmtally.configure(ledger=url, flush_interval=0.05)
        llmtally.configure(ledger="none")  # created
        postgres.stop()
        try:
            llmtally.configure(ledger=url, flush_interval=0.05)
            with llmtally.track("pgdown", max_requests=0), pytest.raises(llmtally.BudgetExceeded):
                ask(client)
            assert llmtally.flush()
            assert any("refusal" in f.read_text() for f in isolated_spool.glob("*.jsonl"))
        finally:
            postgres.start()
        assert llmtally.flush()
        assert llmtally.flush()
        ledger = open_ledger(url, create=False)
        assert ledger is not None
        assert [r["refused_by"] for r in ledger.refusals(None, None)] == ["pgdown"]
        ledger.close()


def get(dash: Any, path: str, **query: Any) -> Any:
    url = dash.address + path + ("?" + urlencode(query, doseq=True) if query else "")
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


class TestDashboard:
    """The Budgets view's recent refusals, and its API."""

    def test_api(self, tmp_path: Path, client: Any) -> None:
        url = f"sqlite:///{tmp_path / 'l.db'}"
        llmtally.configure(ledger=url)
        with llmtally.track(HOSTILE, max_requests=1, tags={"team": "red"}):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        with llmtally.track("quiet", max_requests=0, on_exceed="warn"):
            ask(client)
        with llmtally.budget("team", max_cost=CALL, ledger=url):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert llmtally.flush()
        with dashboard(url) as dash:
            doc = get(dash, "api/overview")["refusals"]
            assert (doc["refused"], doc["warned"]) == (2, 1)
            assert [(r["refused_by"], r["by"], r["action"]) for r in doc["rows"]] == [
                ("team", "budget", "refused"),
                ("quiet", "scope", "warned"),
                (HOSTILE, "scope", "refused"),
            ]
            mine = doc["rows"][2]
            assert mine["scope"] == HOSTILE and mine["limit"] == "requests" and mine["model"] == "gpt-4"
            assert (mine["allowed"], mine["spent"], mine["tags"]) == ("1", "1", {"team": "red"})
            assert doc["rows"][0]["shown"]["allowed"] == "$0.00111"
            only = get(dash, "api/refusals", tag="team=red")
            assert [r["refused_by"] for r in only["rows"]] == [HOSTILE] and only["refused"] == 1
            assert get(dash, "api/refusals", scope="quiet")["warned"] == 1
            assert get(dash, "api/refusals", model="gpt-4o") == {"refused": 0, "warned": 0, "rows": []}
            later = get(dash, "api/refusals", since=iso(time.time() + 3600))
            assert later["rows"] == [] and later["refused"] == 0
            assert len(get(dash, "api/refusals", limit="1")["rows"]) == 1


class TestCommand:
    """``llmtally ledger refusals``."""

    def test_lists_them(self, tmp_path: Path, client: Any, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        url = f"sqlite:///{tmp_path / 'l.db'}"
        llmtally.configure(ledger=url)
        with llmtally.track("nightly", max_cost=CALL):
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client)
        assert llmtally.flush()
        llmtally.configure(ledger="none")
        capsys.readouterr()
        assert cli_logic(["ledger", "refusals", "--ledger", url]) == 0
        out = capsys.readouterr().out
        assert "1 request(s) refused, 0 sent past a limit" in out
        assert "refused  nightly  cost limit of nightly: $0.00111 of $0.00111  model gpt-4" in out
        assert (
            cli_logic(["ledger", "refusals", "--ledger", url, "--where", "scope=other", "--format", "json"])
            == 0
        )
        assert json.loads(capsys.readouterr().out) == {"refused": 0, "warned": 0, "rows": []}
        # A filter a refusal cannot answer (it has no currency, no price) is an error, never ignored.
        assert cli_logic(["ledger", "refusals", "--ledger", url, "--where", "currency=EUR"]) != 0
        assert "cannot be filtered by currency" in capsys.readouterr().err

    def test_a_bad_refusal_is_set_apart_then_reimported(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        from llmtally.cli import cli_logic
        from llmtally.ledger._writer import Writer

        url = f"sqlite:///{tmp_path / 'l.db'}"
        ledger = open_ledger(url)
        assert ledger is not None
        writer = Writer(ledger)
        good = RefusalRow(
            ("g", 1.0, "refused", "s", "scope", "cost", "1", "1", *[None] * 5, "[]", None, "h", 1, None)
        )
        bad = RefusalRow(("b", 2.0, None, *good[3:]))  # no action: NOT NULL
        writer._write_rows([good, bad])  # the ledger refuses the bad one alone
        writer.close()
        assert [r["id"] for r in rows(tmp_path / "l.db")] == ["g"]
        capsys.readouterr()
        assert cli_logic(["ledger", "quarantined", "--ledger", url]) == 0
        assert "refusal b (s)" in capsys.readouterr().out
        spool = Spool(url)
        dead = Path(spool.dead_path)
        dead.write_text(dead.read_text().replace('"action": null', '"action": "warned"'))
        assert cli_logic(["ledger", "reimport", "--ledger", url]) == 0
        assert sorted(r["id"] for r in rows(tmp_path / "l.db")) == ["b", "g"]
