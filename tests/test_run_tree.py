"""`llmtally run` meters the whole process tree: subprocesses, multiprocessing (fork, spawn,
forkserver) and os.exec*, with the run's name, tags and run id, all counted in the one summary."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtally.testing import FakeProvider, Reply

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process model")

# One LLM call through http.client (urllib), to the FakeProvider whose URL the test passes down.
CALL = textwrap.dedent(
    """
    import json, os, urllib.request

    def call(_=None):
        req = urllib.request.Request(
            os.environ["FAKE_URL"] + "/v1/chat/completions",
            data=json.dumps({"model": "gpt-4", "messages": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req) as resp:
            resp.read()
        return os.getpid()
    """
)

# The parent: one call of its own, a child python making two, a pool of workers making three.
PARENT = textwrap.dedent(
    """
    import multiprocessing, subprocess, sys
    from calls import call

    if __name__ == "__main__":
        call()
        subprocess.run([sys.executable, "child.py"], check=True)
        method = sys.argv[1] if len(sys.argv) > 1 else "spawn"
        if method == "executor":
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
                list(ex.map(call, range(3)))
        else:
            with multiprocessing.get_context(method).Pool(2) as pool:
                pool.map(call, range(3))
        print("parent done")
    """
)

CHILD = textwrap.dedent(
    """
    from calls import call
    call()
    call()
    """
)


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    fake = FakeProvider(
        handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    with fake.serve() as url:
        yield url


def llmtally_run(
    *args: str, cwd: Path, url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtally", "run", *args],
        cwd=cwd,
        env={**os.environ, "FAKE_URL": url, "LLMTALLY_SPOOL_DIR": str(cwd / "spool"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def rows(db: Path) -> list[tuple[str, str | None, str | None, int]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT scope_path, tags, run_id, pid FROM calls").fetchall()
    finally:
        conn.close()


def write_app(tmp_path: Path) -> None:
    (tmp_path / "calls.py").write_text(CALL)
    (tmp_path / "app.py").write_text(PARENT)
    (tmp_path / "child.py").write_text(CHILD)


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver", "executor"])
def test_tree_counted_in_one_summary(tmp_path: Path, fake_url: str, method: str) -> None:
    write_app(tmp_path)
    db = tmp_path / "tree.db"
    out = llmtally_run(
        "--ledger",
        f"sqlite:///{db}",
        "--name",
        "nightly",
        "--tag",
        "team=search",
        "--",
        sys.executable,
        "app.py",
        method,
        cwd=tmp_path,
        url=fake_url,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "parent done\n"
    # 1 call in the parent, 2 in the subprocess, 3 in the pool's workers.
    assert "Successful Requests: 6\n" in out.stderr, out.stderr
    assert "Tokens Used: 144\n" in out.stderr
    assert "llmtally: nightly" in out.stderr
    assert f"recorded in the ledger sqlite:///{db}" in out.stderr
    found = rows(db)
    assert len(found) == 6
    run_ids = {r for _, _, r, _ in found}
    assert len(run_ids) == 1 and None not in run_ids
    assert {json.loads(s)[0] for s, _, _, _ in found} == {"nightly"}
    assert all(json.loads(t or "{}").get("team") == "search" for _, t, _, _ in found)
    assert len({pid for *_, pid in found}) >= 3  # the parent, the subprocess, the workers
    assert "3 processes" in out.stderr or "4 processes" in out.stderr


def test_second_run_counts_only_its_own(tmp_path: Path, fake_url: str) -> None:
    (tmp_path / "calls.py").write_text(CALL)
    (tmp_path / "one.py").write_text("from calls import call\ncall()\n")
    db = tmp_path / "two.db"
    for _ in range(2):
        out = llmtally_run(
            "--ledger", f"sqlite:///{db}", "--", sys.executable, "one.py", cwd=tmp_path, url=fake_url
        )
        assert out.returncode == 0, out.stderr
        assert "Successful Requests: 1\n" in out.stderr, out.stderr
    assert len({r for _, _, r, _ in rows(db)}) == 2


def test_exec_is_metered_and_counted(tmp_path: Path, fake_url: str) -> None:
    (tmp_path / "calls.py").write_text(CALL)
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "app.py").write_text(
        "import os, sys\nfrom calls import call\ncall()\n"
        "os.execv(sys.executable, [sys.executable, 'child.py'])\n"
    )
    db = tmp_path / "exec.db"
    out = llmtally_run(
        "--ledger", f"sqlite:///{db}", "--", sys.executable, "app.py", cwd=tmp_path, url=fake_url
    )
    assert out.returncode == 0, out.stderr
    assert "Successful Requests: 3\n" in out.stderr, out.stderr  # the call before exec is not lost
    assert out.stderr.count("llmtally: app.py") == 1
    assert len(rows(db)) == 3


def test_no_ledger_says_the_summary_is_this_process_and_its_pool(tmp_path: Path, fake_url: str) -> None:
    """Without a ledger the run's own scope is all there is: the first process's call and its pool's
    three (relayed to the scope), not the two of the python it started with subprocess."""
    write_app(tmp_path)
    out = llmtally_run("--ledger", "none", "--", sys.executable, "app.py", cwd=tmp_path, url=fake_url)
    assert out.returncode == 0, out.stderr
    assert "Successful Requests: 4\n" in out.stderr
    assert "this process and the workers of its process pools only" in out.stderr


class TestCannotStart:
    @pytest.mark.parametrize("flag", ["-I", "-E", "-Is", "-S"])
    def test_isolated_python(self, tmp_path: Path, fake_url: str, flag: str) -> None:
        write_app(tmp_path)
        out = llmtally_run(
            "--ledger", "none", "--", sys.executable, flag, "app.py", cwd=tmp_path, url=fake_url
        )
        assert out.returncode == 2
        assert "metering cannot start" in out.stderr
        assert f"{flag[:2]}" in out.stderr
        assert "parent done" not in out.stdout  # refused before starting it

    def test_python_without_llmtally(self, tmp_path: Path, fake_url: str) -> None:
        venv = tmp_path / "bare"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = venv / "bin" / "python"
        (tmp_path / "hello.py").write_text("print('hello')\n")
        out = llmtally_run("--ledger", "none", "--", str(python), "hello.py", cwd=tmp_path, url=fake_url)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "hello\n"  # the program still runs
        assert "No module named" not in out.stderr
        assert "llmtally is not installed in" in out.stderr and str(python) in out.stderr
        assert "-m pip install llmtally" in out.stderr
        assert sys.executable in out.stderr  # the interpreter that has it


class TestRunName:
    def test_script(self, tmp_path: Path, fake_url: str) -> None:
        (tmp_path / "app.py").write_text("print('hi')\n")
        out = llmtally_run(
            "--ledger", "none", "--", sys.executable, "-u", "app.py", cwd=tmp_path, url=fake_url
        )
        assert "\nllmtally: app.py\n" in out.stderr, out.stderr

    def test_module(self, tmp_path: Path, fake_url: str) -> None:
        pkg = tmp_path / "mypkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "__main__.py").write_text("print('hi')\n")
        out = llmtally_run(
            "--ledger", "none", "--", sys.executable, "-m", "mypkg", cwd=tmp_path, url=fake_url
        )
        assert "\nllmtally: mypkg\n" in out.stderr, out.stderr

    def test_console_script(self, tmp_path: Path, fake_url: str) -> None:
        script = Path(sys.executable).with_name("llmtally")
        if not script.exists():
            pytest.skip("no console script next to this interpreter")
        out = llmtally_run("--ledger", "none", "--", str(script), "cost", "gpt-4", cwd=tmp_path, url=fake_url)
        assert "\nllmtally: llmtally\n" in out.stderr, out.stderr


FORKING = textwrap.dedent(
    """
    import os, sys
    from calls import call

    call()
    pid = os.fork()
    if pid == 0:
        call()
        sys.exit(0)  # ends normally: atexit hooks, the parent's copies among them, run here
    os.waitpid(pid, 0)
    """
)


@pytest.mark.parametrize("ledger", ["none", "sqlite"])
def test_a_forked_child_prints_no_summary_of_its_own(tmp_path: Path, fake_url: str, ledger: str) -> None:
    """Was: a child forked by the program, ending normally, printed a second (and wrong) summary."""
    (tmp_path / "calls.py").write_text(CALL)
    (tmp_path / "forking.py").write_text(FORKING)
    url = "none" if ledger == "none" else f"sqlite:///{tmp_path / 'l.db'}"
    out = llmtally_run("--ledger", url, "--", sys.executable, "forking.py", cwd=tmp_path, url=fake_url)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("llmtally: forking.py") == 1, out.stderr
    assert "Successful Requests: 2\n" in out.stderr, out.stderr
