"""`llmtally run`: a program metered and recorded without changing it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

APP = textwrap.dedent(
    """
    import sys, threading, httpx2
    from llmtally.testing import FakeProvider, Reply
    fake = FakeProvider(
        handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    client = httpx2.Client(transport=fake.httpx2_transport())
    def go():
        client.post("http://fake/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    go()
    t = threading.Thread(target=go)
    t.start()
    t.join()
    print("program output")
    sys.exit(3)
    """
)


def llmtally_run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtally", "run", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def records(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT scope_path, tags, prompt_tokens FROM calls").fetchall()
    finally:
        conn.close()


class TestRun:
    """The program runs as it would; its calls are summed on stderr and recorded."""

    def test_script(self, tmp_path: Path) -> None:
        (tmp_path / "app.py").write_text(APP)
        db = tmp_path / "run.db"
        out = llmtally_run(
            "--ledger",
            f"sqlite:///{db}",
            "--tag",
            "team=search",
            "--name",
            "nightly",
            "--",
            sys.executable,
            "app.py",
            cwd=tmp_path,
        )
        assert out.returncode == 3  # the program's own exit code
        assert out.stdout == "program output\n"  # its output untouched
        assert "llmtally: nightly" in out.stderr
        assert "Tokens Used: 48\n    Prompt Tokens: 22\n    Completion Tokens: 26\n" in out.stderr
        assert "Total Cost (USD): $0.00222" in out.stderr
        rows = records(db)
        assert len(rows) == 2  # the call in the thread too
        assert {(json.loads(s)[0], json.loads(t)["team"]) for s, t, _ in rows} == {("nightly", "search")}

    def test_module_and_default_ledger_from_env(self, tmp_path: Path) -> None:
        pkg = tmp_path / "mypkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "__main__.py").write_text(APP)
        db = tmp_path / "env.db"
        out = llmtally_run(
            "--", sys.executable, "-m", "mypkg", cwd=tmp_path, env={"LLMTALLY_LEDGER": f"sqlite:///{db}"}
        )
        assert out.returncode == 3, out.stderr
        assert "Successful Requests: 2" in out.stderr
        assert len(records(db)) == 2

    def test_users_sitecustomize_still_runs(self, tmp_path: Path) -> None:
        mine = tmp_path / "site"
        mine.mkdir()
        (mine / "sitecustomize.py").write_text("import sys\nsys.stderr.write('user sitecustomize ran\\n')\n")
        (tmp_path / "app.py").write_text(APP)
        out = llmtally_run(
            "--ledger", "none", "--", sys.executable, "app.py", cwd=tmp_path, env={"PYTHONPATH": str(mine)}
        )
        assert out.returncode == 3
        assert "user sitecustomize ran" in out.stderr
        assert "Successful Requests: 2" in out.stderr

    def test_bad_ledger(self, tmp_path: Path) -> None:
        (tmp_path / "app.py").write_text(APP)
        out = llmtally_run("--ledger", "mysql://x", "--", sys.executable, "app.py", cwd=tmp_path)
        assert out.returncode == 2
        assert "unknown ledger scheme 'mysql'" in out.stderr
        assert "program output" not in out.stdout  # refused before starting it

    def test_missing_command(self, tmp_path: Path) -> None:
        out = llmtally_run("--ledger", "none", "--", "no-such-command-xyz", cwd=tmp_path)
        assert out.returncode == 127 and "command not found" in out.stderr

    def test_console_script(self, tmp_path: Path) -> None:
        # A console script is a Python process like any other: here, llmtally's own.
        script = Path(sys.executable).with_name("llmtally")
        if not script.exists():
            pytest.skip("no console script next to this interpreter")
        out = llmtally_run(
            "--ledger", "none", "--", str(script), "cost", "gpt-4", "-i", "11", "-o", "13", cwd=tmp_path
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "$0.00111"
        assert "Successful Requests: 0" in out.stderr  # metered, and it made no LLM call
