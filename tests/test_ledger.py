"""The SQLite ledger: records, privacy, bad input, several processes, SIGTERM and SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

import llmtally
from llmtally.ledger._records import SCHEMA_VERSION
from llmtally.testing import FakeProvider, Reply

ALL_VERSIONS = [(v,) for v in range(1, SCHEMA_VERSION + 1)]

SECRET_PROMPT = "my-very-private-prompt-text-1234"
API_KEY = "sk-secret-key-never-stored-987"


def rows(path: Path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM calls ORDER BY started_at")]
    finally:
        conn.close()


@pytest.fixture
def ledger(tmp_path: Path):
    path = tmp_path / "ledger.db"
    llmtally.configure(ledger=f"sqlite:///{path}")
    yield path
    llmtally.configure(ledger="none")


def call(client: httpx2.Client, content: str = SECRET_PROMPT) -> None:
    r = client.post(
        "http://fake/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": content}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert r.status_code == 200


@pytest.fixture
def client() -> httpx2.Client:
    fake = FakeProvider(
        handler=lambda req: Reply(
            text="an answer", prompt_tokens=11, completion_tokens=13, model="gpt-4-0613"
        )
    )
    return httpx2.Client(transport=fake.httpx2_transport())


class TestRecords:
    """Each call becomes one record with every field; no text, key or header."""

    def test_record_fields(self, ledger: Path, client: httpx2.Client) -> None:
        call(client)  # no scope open: recorded anyway once a ledger is configured
        with llmtally.track("job", tags={"user": "u42"}), llmtally.track("step", tags={"team": "search"}):
            call(client)
        assert llmtally.flush()
        got = rows(ledger)
        assert len(got) == 2
        first, second = got
        assert first["model"] == "gpt-4-0613" and first["requested_model"] == "gpt-4"
        assert first["endpoint"] == "chat.completions" and first["provider"] == "openai"
        assert (first["prompt_tokens"], first["completion_tokens"]) == (11, 13)
        assert first["cost"] == "0.00111" and first["cost_pico"] == 1_110_000_000
        assert Decimal(first["cost"]) == llmtally.cost_of("gpt-4", input_tokens=11, output_tokens=13)
        assert first["ok"] == 1 and first["status"] == 200 and first["estimated"] == 0
        assert first["pid"] == os.getpid() and first["host"]
        assert first["ended_at"] >= first["started_at"] and first["latency_ms"] >= 0
        assert json.loads(first["scope_path"]) == [] and first["tags"] is None
        assert json.loads(second["scope_path"]) == ["job", "step"]
        assert json.loads(second["tags"]) == {"team": "search", "user": "u42"}
        assert first["price_source"].startswith("genai-prices")

    def test_no_text_keys_or_headers(self, ledger: Path, client: httpx2.Client) -> None:
        call(client)
        llmtally.flush()
        llmtally.configure(ledger="none")  # closes the file
        data = b"".join(p.read_bytes() for p in ledger.parent.iterdir() if p.name.startswith("ledger.db"))
        assert SECRET_PROMPT.encode() not in data
        assert API_KEY.encode() not in data
        assert b"an answer" not in data
        assert b"Bearer" not in data

    def test_schema_version(self, ledger: Path, client: httpx2.Client) -> None:
        conn = sqlite3.connect(ledger)
        assert conn.execute("SELECT version FROM llmtally_schema").fetchall() == ALL_VERSIONS
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
        call(client)
        llmtally.flush()
        # Reopening an existing ledger keeps its records and does not migrate again.
        llmtally.configure(ledger=f"sqlite:///{ledger}")
        call(client)
        llmtally.flush()
        assert len(rows(ledger)) == 2
        conn = sqlite3.connect(ledger)
        assert conn.execute("SELECT COUNT(*) FROM llmtally_schema").fetchone()[0] == SCHEMA_VERSION
        conn.close()

    def test_none_records_nothing(self, tmp_path: Path, client: httpx2.Client) -> None:
        path = tmp_path / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}")
        llmtally.configure(ledger="none")
        call(client)
        llmtally.flush()
        assert rows(path) == []

    def test_failed_calls_are_recorded(self, ledger: Path) -> None:
        fake = FakeProvider([Reply(status=429, error="slow down")])
        client = httpx2.Client(transport=fake.httpx2_transport())
        client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
        llmtally.flush()
        (row,) = rows(ledger)
        assert (row["ok"], row["status"], row["cost"], row["error"]) == (0, 429, "0", "HTTP 429")


class TestBadInput:
    """Bad URLs and foreign files get a clear error, and nothing is overwritten."""

    @pytest.mark.parametrize(
        "url, message",
        [
            ("mysql://x/y", "unknown ledger scheme 'mysql'"),
            ("just-a-path.db", "not a ledger URL"),
            ("sqlite:relative.db", "not a ledger URL"),
        ],
    )
    def test_bad_url(self, url: str, message: str) -> None:
        with pytest.raises(llmtally.LedgerError, match=message):
            llmtally.configure(ledger=url)

    def test_not_sqlite(self, tmp_path: Path) -> None:
        path = tmp_path / "notes.txt"
        path.write_text("my notes, not a database\n" * 10)
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(llmtally.LedgerError, match="is not a SQLite database"):
            llmtally.configure(ledger=f"sqlite:///{path}")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before

    def test_foreign_sqlite(self, tmp_path: Path) -> None:
        path = tmp_path / "app.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER)")
        conn.execute("INSERT INTO users VALUES (1)")
        conn.commit()
        conn.close()
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        with pytest.raises(llmtally.LedgerError, match="not an llmtally ledger"):
            llmtally.configure(ledger=f"sqlite:///{path}")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before

    def test_bad_env_value_is_logged_not_raised(self, tmp_path: Path) -> None:
        code = "import llmtally\nwith llmtally.track() as t:\n    pass\nprint('ran')"
        env = {**os.environ, "LLMTALLY_LEDGER": "mysql://nope"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and out.stdout.strip() == "ran"
        assert "LLMTALLY_LEDGER" in out.stderr and "mysql" in out.stderr


CHILD = textwrap.dedent(
    """
    import os, sys, time, httpx2, llmtally
    from llmtally.testing import FakeProvider, Reply
    n, interval, then = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    llmtally.configure(ledger=os.environ["LEDGER"], flush_interval=interval)
    fake = FakeProvider(
        handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    client = httpx2.Client(transport=fake.httpx2_transport())
    for _ in range(n):
        client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    if then == "wait":
        time.sleep(3 * interval)  # longer than the flush interval: everything is on disk
    print("ready", flush=True)
    if then != "exit":
        time.sleep(120)
    """
)


def child(ledger: Path, n: int, interval: float, then: str) -> subprocess.Popen[str]:
    env = {**os.environ, "LEDGER": f"sqlite:///{ledger}"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(n), str(interval), then],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class TestProcesses:
    """Several writers at once; what survives SIGTERM and SIGKILL."""

    def test_four_processes_at_once(self, tmp_path: Path) -> None:
        path = tmp_path / "shared.db"
        procs = [child(path, 150, 0.1, "exit") for _ in range(4)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        got = rows(path)
        assert len(got) == 600
        assert len({r["pid"] for r in got}) == 4
        assert sum(Decimal(r["cost"]) for r in got) == Decimal("0.00111") * 600

    def test_sigterm_flushes(self, tmp_path: Path) -> None:
        path = tmp_path / "term.db"
        # A flush interval far longer than the test: only the SIGTERM flush can write the records.
        p = child(path, 40, 600, "sleep")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        assert p.returncode == -signal.SIGTERM  # it still dies of SIGTERM, as it would have
        assert len(rows(path)) == 40

    def test_sigkill_loses_at_most_the_last_interval(self, tmp_path: Path) -> None:
        path = tmp_path / "kill.db"
        p = child(path, 40, 0.2, "wait")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        p.kill()
        p.wait(timeout=60)
        assert len(rows(path)) == 40

    def test_sigkill_before_the_interval_loses_those_calls(self, tmp_path: Path) -> None:
        # The documented limit, shown: killed before its first flush, a writer has written nothing.
        path = tmp_path / "kill2.db"
        p = child(path, 40, 600, "sleep")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        p.kill()
        p.wait(timeout=60)
        assert len(rows(path)) == 0

    def test_env_var_configures(self, tmp_path: Path) -> None:
        path = tmp_path / "env.db"
        code = textwrap.dedent(
            """
            import httpx2, llmtally
            from llmtally.testing import FakeProvider, Reply
            fake = FakeProvider([Reply(text="x", prompt_tokens=5, completion_tokens=5, model="gpt-4")])
            client = httpx2.Client(transport=fake.httpx2_transport())
            with llmtally.track("from-env"):
                client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
            """
        )
        env = {**os.environ, "LLMTALLY_LEDGER": f"sqlite:///{path}"}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        (row,) = rows(path)
        assert json.loads(row["scope_path"]) == ["from-env"] and row["prompt_tokens"] == 5


FORK_AFTER_CALLS = textwrap.dedent(
    """
    import os, sys, httpx2, llmtally
    from llmtally.testing import FakeProvider, Reply
    llmtally.configure(ledger=sys.argv[1], flush_interval=30)  # nothing written until flushed
    reply = Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    fake = FakeProvider(handler=lambda req: reply)
    client = httpx2.Client(transport=fake.httpx2_transport())
    with llmtally.track("parent"):
        for _ in range(5):
            client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    children = []
    for i in range(3):
        pid = os.fork()
        if pid == 0:  # a child: one call of its own, then flush and leave
            with llmtally.track(f"child-{i}"):
                client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
            llmtally.flush()
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    llmtally.flush()
    print("ok")
    """
)

FORK_RIGHT_AFTER_START = textwrap.dedent(
    """
    import os, sys, httpx2, llmtally
    from llmtally.testing import FakeProvider, Reply
    reply = Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    fake = FakeProvider(handler=lambda req: reply)
    client = httpx2.Client(transport=fake.httpx2_transport())
    llmtally.instrument()  # starts loading the price catalogue in a thread...
    pid = os.fork()        # ...and forks at once, while it may be importing
    if pid == 0:
        with llmtally.track() as t:
            client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
        print(t.cost, flush=True)
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    """
)


class TestFork:
    """A forked child starts clean: it records its own calls, never the parent's, and never hangs."""

    def test_children_do_not_record_the_parents_queued_calls(self, tmp_path: Path) -> None:
        path = tmp_path / "fork.db"
        out = subprocess.run(
            [sys.executable, "-c", FORK_AFTER_CALLS, f"sqlite:///{path}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
        got = rows(path)
        scopes = sorted(json.loads(r["scope_path"])[0] for r in got)
        assert scopes == ["child-0", "child-1", "child-2"] + ["parent"] * 5
        assert len({r["id"] for r in got}) == 8

    def test_fork_while_the_catalogue_loads(self) -> None:
        out = subprocess.run(
            [sys.executable, "-c", FORK_RIGHT_AFTER_START], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0.00111"  # priced: the child's catalogue is whole


def test_a_replayed_bad_row_fails_loudly_never_vanishes(tmp_path: Path) -> None:
    """The replay path skips a record already stored; it used INSERT OR IGNORE, which in SQLite also
    drops a row that breaks NOT NULL, in silence. Now such a row fails the batch, and the writer sets
    it apart (tests/test_poison.py); a true duplicate is still skipped."""
    from llmtally._core.usage import Call, Usage
    from llmtally.ledger import open_ledger, to_row
    from llmtally.ledger._records import NAMES

    led = open_ledger(f"sqlite:///{tmp_path / 'l.db'}")
    assert led is not None
    call = Call("openai", "chat.completions", "gpt-4o", usage=Usage(1, 1), started_at=1_790_000_000.0)
    row = to_row(call)
    led.write([row], ignore_duplicates=True)
    led.write([row], ignore_duplicates=True)  # the same record again: skipped
    assert led.execute("SELECT COUNT(*) FROM calls") == [(1,)]
    at = NAMES.index("endpoint")
    broken = (row[0] + "-2", *row[1:at], None, *row[at + 1 :])
    with pytest.raises(sqlite3.IntegrityError):
        led.write([broken], ignore_duplicates=True)
    assert led.execute("SELECT COUNT(*) FROM calls") == [(1,)]
    led.close()
