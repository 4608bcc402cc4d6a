"""Every outage spools and comes back, exactly once: PostgreSQL down at start, SQLite locked at start
and at exit, the file deleted while running, a full disk, forks while the writer is busy."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx2
import pytest
from _postgres import PostgresServer, _free_port, postgres_fixture
from _sqlite import locked

import llmtally
from llmtally.ledger import sqlite as sqlite_ledger
from llmtally.testing import FakeProvider, Reply

postgres = postgres_fixture()


@pytest.fixture
def client() -> httpx2.Client:
    fake = FakeProvider(handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13))
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


class Proxy:
    """A TCP forwarder to the test PostgreSQL on a port of its own: "the server" can be down, then up."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = _free_port()
        self.listener: socket.socket | None = None

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


def test_postgresql_down_at_start_then_back(
    postgres: PostgresServer, client: httpx2.Client, isolated_spool: Path
) -> None:
    """Nothing was recorded for the process's life before: now the calls wait in the spool, the
    ledger is created once the server answers, and every record lands once."""
    import psycopg

    db = postgres.new_database("down")
    proxy = Proxy(postgres.port)
    url = db.replace(f":{postgres.port}/", f":{proxy.port}/")
    llmtally.configure(ledger=url, flush_interval=0.05)  # the server is down: no error
    try:
        with llmtally.track():
            call(client, 5)
        assert llmtally.flush()
        spooled = list(isolated_spool.glob("*.jsonl"))
        assert spooled and sum(len(f.read_text().splitlines()) for f in spooled) == 5
        proxy.up()
        with llmtally.track():
            call(client, 2)
        assert llmtally.flush()
        with psycopg.connect(db) as conn:
            (n, distinct) = conn.execute("SELECT COUNT(*), COUNT(DISTINCT id) FROM calls").fetchone()  # type: ignore[misc]
        assert (n, distinct) == (7, 7)
        assert not [f for f in isolated_spool.glob("*.jsonl") if not f.name.endswith(".dead.jsonl")]
    finally:
        llmtally.configure(ledger="none")
        proxy.close()


def test_run_starts_the_program_with_the_server_down(postgres: PostgresServer, tmp_path: Path) -> None:
    url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{_free_port()}/x"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmtally",
            "run",
            "--ledger",
            url,
            "--",
            sys.executable,
            "-c",
            "print('ran')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LLMTALLY_SPOOL_DIR": str(tmp_path / "spool")},
    )
    assert out.returncode == 0 and "ran" in out.stdout, out.stderr
    assert postgres.password not in out.stderr


class TestSQLiteLocked:
    def test_locked_at_start_opens_at_once_then_lands(
        self, tmp_path: Path, client: httpx2.Client, isolated_spool: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sqlite_ledger, "WRITE_TIMEOUT", 0.2)
        path = tmp_path / "ledger.db"
        url = f"sqlite:///{path}"
        llmtally.configure(ledger=url)
        llmtally.configure(ledger="none")  # a current ledger exists
        with locked(path):
            started = time.monotonic()
            llmtally.configure(ledger=url, flush_interval=0.05)  # was: a 30 s stall, then an error
            assert time.monotonic() - started < 5
            with llmtally.track():
                call(client, 3)
            assert llmtally.flush()  # spooled: on disk
        call(client, 1)
        assert llmtally.flush()
        assert len(set(ids(path))) == len(ids(path)) == 4

    def test_an_old_ledger_locked_at_start_is_migrated_later(
        self, tmp_path: Path, client: httpx2.Client, isolated_spool: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from llmtally.ledger.sqlite import _MIGRATIONS

        monkeypatch.setattr(sqlite_ledger, "WRITE_TIMEOUT", 0.2)
        monkeypatch.setattr(sqlite_ledger, "BUSY_TIMEOUT", 0.2)
        path = tmp_path / "old.db"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
        for statement in _MIGRATIONS[1]:
            conn.execute(statement)
        conn.execute("INSERT INTO llmtally_schema VALUES (1, 0)")
        conn.commit()
        conn.close()
        with locked(path):
            llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=0.05)
            call(client, 2)
            assert llmtally.flush()
        call(client, 1)
        assert llmtally.flush()
        assert len(ids(path)) == 3
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT MAX(version) FROM llmtally_schema").fetchone()[0] > 1
        conn.close()

    def test_locked_at_exit_nothing_is_lost(self, tmp_path: Path, isolated_spool: Path) -> None:
        """Was: the exit flush gave up after 10 s, before SQLite's 30 s wait: 100/101 lost."""
        path = tmp_path / "ledger.db"
        url = f"sqlite:///{path}"
        code = textwrap.dedent(
            f"""
            import sys, httpx2, llmtally
            from llmtally.ledger import sqlite
            from llmtally.testing import FakeProvider, Reply
            sqlite.WRITE_TIMEOUT = 1.0
            llmtally.configure(ledger={url!r}, flush_interval=60)
            fake = FakeProvider(handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13))
            client = httpx2.Client(transport=fake.httpx2_transport())
            for _ in range(101):
                client.post("http://fake/v1/chat/completions", json={{"model": "gpt-4", "messages": []}})
            print("made", flush=True)
            sys.stdin.readline()  # the test locks the ledger now, then lets the program end
            """
        )
        llmtally.configure(ledger=url)
        llmtally.configure(ledger="none")
        env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "made"
        with locked(path):
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.wait(60) == 0
        assert ids(path) == []
        llmtally.configure(ledger=url)  # a later process replays the spool
        assert llmtally.flush()
        assert len(set(ids(path))) == len(ids(path)) == 101


def test_the_file_deleted_while_running(tmp_path: Path, client: httpx2.Client, isolated_spool: Path) -> None:
    """Was: writes went on into the deleted file and flush() said True: 700/700 lost in silence."""
    path = tmp_path / "ledger.db"
    llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=0.05)
    call(client, 2)
    assert llmtally.flush()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    call(client, 7)
    assert llmtally.flush()
    assert path.exists() and len(ids(path)) == 7
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_file_replaced_while_running(tmp_path: Path, client: httpx2.Client, isolated_spool: Path) -> None:
    path = tmp_path / "ledger.db"
    llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=0.05)
    call(client, 1)
    assert llmtally.flush()
    os.replace(tmp_path / "ledger.db", tmp_path / "moved.db")
    path.write_bytes(b"not a database at all")
    call(client, 3)
    assert llmtally.flush()  # spooled: a file that is no ledger is never written over
    assert path.read_bytes() == b"not a database at all"
    spooled = [f for f in isolated_spool.glob("*.jsonl") if not f.name.endswith(".dead.jsonl")]
    assert sum(len(f.read_text().splitlines()) for f in spooled) == 3


def _tmpfs(where: Path, size: str) -> bool:
    where.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        return False
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    return out.returncode == 0


def test_a_full_disk_loses_nothing_and_recovers(
    tmp_path: Path, client: httpx2.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ledger and spool on one small filesystem, filled up: no torn spool line, and every record
    lands once space is freed."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "2m"):
        pytest.skip("needs root on Linux to mount a small tmpfs (CI runs as root); nothing else is skipped")
    try:
        monkeypatch.setenv("LLMTALLY_SPOOL_DIR", str(disk / "spool"))
        path = disk / "ledger.db"
        llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=0.05)
        call(client, 3)
        assert llmtally.flush()
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        for _ in range(20):
            call(client, 50)
            llmtally.flush(timeout=30)
        for spool in (disk / "spool").glob("*.jsonl"):
            for line in spool.read_text().splitlines():
                json.loads(line)  # no torn line
        filler.unlink()
        call(client, 1)
        assert llmtally.flush()
        assert llmtally.flush()
        got = ids(path)
        assert len(got) == len(set(got)) == 3 + 20 * 50 + 1
    finally:
        llmtally.configure(ledger="none")
        import gc

        gc.collect()  # the ledger's connections in other threads' locals
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=False)


STILL_FULL_AT_EXIT = """
import os, sys, httpx2, llmtally
from llmtally.testing import FakeProvider, Reply

disk = sys.argv[1]
llmtally.configure(ledger=f"sqlite:///{disk}/ledger.db", flush_interval=0.05)
client = httpx2.Client(transport=FakeProvider(handler=lambda r: Reply(text="x")).httpx2_transport())
post = lambda: client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
post()
assert llmtally.flush()
fd = os.open(f"{disk}/filler", os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while os.write(fd, b"\\0" * 4096):
        pass
except OSError:
    pass
for _ in range(200):
    post()
llmtally.flush(timeout=30)
"""


def test_a_disk_still_full_at_exit_says_what_is_lost(tmp_path: Path) -> None:
    """Records neither the ledger nor the spool could take were lost at exit without a word."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("needs root on Linux to mount a small tmpfs (CI runs as root); nothing else is skipped")
    try:
        env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(disk / "spool")}
        out = subprocess.run(
            [sys.executable, "-c", STILL_FULL_AT_EXIT, str(disk)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        lost = [line for line in out.stderr.splitlines() if "lost at exit" in line]
        assert len(lost) == 1, out.stderr[-3000:]
        n = int(lost[0].split("llmtally: ")[1].split()[0])
        assert 0 < n <= 200, lost
        assert "ledger.db" in lost[0] and "UTC" in lost[0]
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=False)


FORKS = """
import json, os, sqlite3, sys, threading, time
import httpx2, llmtally
from llmtally.testing import FakeProvider, Reply

path = sys.argv[1]
llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=0.01)
fake = FakeProvider(handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13))
client = httpx2.Client(transport=fake.httpx2_transport())

def call():
    r = client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    assert r.status_code == 200

call()  # a process that has made calls (what loads on a first call is loaded), then forks busily
stop, made = threading.Event(), [0]
def busy():
    with llmtally.track("parent"):
        while not stop.is_set() and made[0] < 20000:
            call()
            made[0] += 1
worker = threading.Thread(target=busy)
worker.start()
time.sleep(0.2)
children = []
for i in range(40):
    pid = os.fork()
    if pid == 0:
        with llmtally.track(f"child-{i}"):
            call(); call()
        os._exit(0 if llmtally.flush() else 3)
    children.append(pid)
    time.sleep(0.005)
hung = 0
codes = []
deadline = time.time() + 120
for pid in children:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            codes.append(os.waitstatus_to_exitcode(status))
            break
        if time.time() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
stop.set()
worker.join()
assert llmtally.flush()
conn = sqlite3.connect(path)
rows = conn.execute("SELECT id, scope_path FROM calls").fetchall()
scopes = {}
for _, path_json in rows:
    name = (json.loads(path_json) or ["-"])[0]
    scopes[name] = scopes.get(name, 0) + 1
distinct = len({r[0] for r in rows})
import glob
left = [f for f in glob.glob(os.environ["LLMTALLY_SPOOL_DIR"] + "/*") if not f.endswith(".dead.jsonl")]
print(json.dumps({"made": made[0], "scopes": scopes, "rows": len(rows), "ids": distinct, "hung": hung,
                  "codes": codes, "left": left}))
"""


def test_forty_forks_while_the_writer_is_busy(tmp_path: Path, isolated_spool: Path) -> None:
    """Was: 571-899 duplicate rows a run, ~1 child in 180 hanging, 1-5 children losing records."""
    env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
    out = subprocess.run(
        [sys.executable, "-c", FORKS, str(tmp_path / "fork.db")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["hung"] == 0 and got["codes"] == [0] * 40 and got["left"] == [], got
    assert got["rows"] == got["ids"]  # no duplicates
    assert got["scopes"].pop("-") == 1  # the warm-up call, outside any scope
    assert got["scopes"].pop("parent") == got["made"]  # the parent's calls, once each
    assert got["scopes"] == {f"child-{i}": 2 for i in range(40)}  # every child's, once each


def test_a_forked_child_never_touches_sqlite(tmp_path: Path, isolated_spool: Path) -> None:
    """SQLite's own mutexes may be held by a parent's thread at fork (a child then waited for ever on
    its first connection, ~1 in 180): a child's records go to the spool, the parent moves them in."""
    code = textwrap.dedent(
        f"""
        import os, httpx2, llmtally, sqlite3
        from llmtally._runtime import RUNTIME
        from llmtally.testing import FakeProvider, Reply
        llmtally.configure(ledger="sqlite:///{tmp_path / "l.db"}", flush_interval=60)
        client = httpx2.Client(transport=FakeProvider(handler=lambda r: Reply(text="x")).httpx2_transport())
        pid = os.fork()
        if pid == 0:
            opened = []
            real = sqlite3.connect
            sqlite3.connect = lambda *a, **k: opened.append(a) or real(*a, **k)
            with llmtally.track("child"):
                client.post("http://fake/v1/chat/completions", json={{"model": "gpt-4", "messages": []}})
            ok = llmtally.flush() and RUNTIME.writer.spool_only and not opened
            os._exit(0 if ok else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert llmtally.flush()
        n = sqlite3.connect("{tmp_path / "l.db"}").execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        print(n)
        """
    )
    env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "1"  # the child's call, moved in by the parent


def test_a_child_forked_from_a_thread_exits(tmp_path: Path, isolated_spool: Path) -> None:
    """A child forked from a non-main thread that ends with sys.exit: a writer thread started at the
    fork kept it alive for ever; it starts on the child's first call instead."""
    code = textwrap.dedent(
        f"""
        import os, sys, threading, time, llmtally
        llmtally.configure(ledger="sqlite:///{tmp_path / "l.db"}")
        res = []
        def forker():
            pid = os.fork()
            if pid == 0:
                sys.exit(0)
            t = time.time()
            while time.time() - t < 20:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    res.append("exited")
                    return
                time.sleep(0.05)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            res.append("hung")
        th = threading.Thread(target=forker)
        th.start()
        th.join()
        print(res[0])
        """
    )
    env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "exited", out.stderr[-2000:]


CHILD_ENDS = """
import os, sqlite3, sys, threading, time, httpx2, llmtally
from llmtally.testing import FakeProvider, Reply

path, how = sys.argv[1], sys.argv[2]
llmtally.configure(ledger=f"sqlite:///{path}", flush_interval=60)  # nothing written by the interval
client = httpx2.Client(transport=FakeProvider(handler=lambda r: Reply(text="x")).httpx2_transport())

def child():
    with llmtally.track("child"):
        for _ in range(3):
            client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    if how == "os._exit":
        os._exit(0)
    sys.exit(0)

def fork():
    pid = os.fork()
    if pid == 0:
        child()
    deadline = time.time() + 30
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("hung")
            return
        time.sleep(0.02)
    print("exited")

if how == "os._exit":
    fork()
else:  # from a thread: the child's only thread ends with sys.exit, and atexit never runs there
    t = threading.Thread(target=fork)
    t.start()
    t.join()
assert llmtally.flush()
q = "SELECT COUNT(*) FROM calls WHERE scope_path LIKE '%child%'"
print(sqlite3.connect(path).execute(q).fetchone()[0])
"""


@pytest.mark.parametrize("how", ["os._exit", "sys.exit in a thread"])
def test_a_forked_child_that_ends_at_once_keeps_its_records(
    tmp_path: Path, isolated_spool: Path, how: str
) -> None:
    """A forked child ending with ``os._exit`` (no atexit) lost the calls made since its writer's last
    write; one forked from a thread that made calls and ended with sys.exit never exited (its writer
    thread kept the process alive)."""
    env = {**os.environ, "LLMTALLY_SPOOL_DIR": str(isolated_spool)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD_ENDS, str(tmp_path / "l.db"), how],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["exited", "3"], out.stderr[-2000:]
