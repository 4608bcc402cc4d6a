"""``llmtally ui`` the command, and who may read the dashboard: loopback by default, the Host
checked there, a token beyond it; the extra imported only by the command."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _ui import record_calls
from starlette.testclient import TestClient

from llmtally.cli import cli_logic
from llmtally.ledger import open_ledger
from llmtally.ui.app import COOKIE, Guard, create_app
from llmtally.ui.server import Dashboard, is_loopback


@pytest.fixture
def ledger_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    record_calls(url)
    return url


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


class TestCommand:
    def test_serves_until_interrupted(self, ledger_url: str) -> None:
        """`llmtally ui --port 0`: says where, answers there, stops on Ctrl-C (SIGINT)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmtally", "ui", "--ledger", ledger_url, "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            assert match, line
            assert "token" not in line
            deadline = time.monotonic() + 30
            while True:  # uvicorn starts serving just after the line is printed
                try:
                    with urllib.request.urlopen(match.group(1) + "api/overview?since=all", timeout=10) as r:
                        doc = json.loads(r.read())
                    break
                except urllib.error.URLError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            assert doc["totals"]["requests"] > 0
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def test_no_ledger(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["ui", "--ledger", f"sqlite:///{tmp_path / 'none.db'}", "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("llmtally ui: no ledger at") and err.count("\n") == 1

    def test_without_the_extra(
        self, ledger_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One line naming the install command, no traceback."""
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
        )
        assert cli_logic(["ui", "--ledger", ledger_url]) == 2
        err = capsys.readouterr().err
        assert "pip install 'llmtally[ui]'" in err and err.count("\n") == 1

    def test_port_taken(self, ledger_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        ledger = open_ledger(ledger_url, create=False)
        assert ledger is not None
        held = Dashboard(ledger, port=0)
        try:
            assert cli_logic(["ui", "--ledger", ledger_url, "--port", str(held.port)]) == 2
            assert "cannot listen on" in capsys.readouterr().err
        finally:
            held.socket.close()
            ledger.close()


class TestImports:
    def test_import_llmtally_loads_no_web_server(self) -> None:
        code = (
            "import sys, llmtally, llmtally.cli\n"
            "llmtally.report\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'anyio') "
            "or m.startswith('llmtally.ui')]\n"
            "assert not bad, bad\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

    def test_nothing_else_reports_through_it(self, ledger_url: str) -> None:
        code = (
            "import sys\nfrom llmtally.cli import cli_logic\n"
            f"assert cli_logic(['report', '--ledger', {ledger_url!r}, '--format', 'json']) == 0\n"
            "assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True)


class TestLoopback:
    def test_binds_loopback_without_token(self, ledger_url: str) -> None:
        ledger = open_ledger(ledger_url, create=False)
        assert ledger is not None
        dash = Dashboard(ledger, port=0)
        try:
            assert dash.socket.getsockname()[0] == "127.0.0.1"
            assert dash.token is None and "token" not in dash.url
        finally:
            dash.socket.close()
            ledger.close()

    def test_another_host_name_is_refused(self, ledger_url: str) -> None:
        """A page that rebinds its own name to 127.0.0.1 still sends its name: refused."""
        from _ui import dashboard

        with dashboard(ledger_url) as dash:
            assert status(dash.address) == 200
            assert status(f"http://localhost:{dash.port}/") == 200
            assert status(dash.address + "api/overview", {"Host": f"evil.example:{dash.port}"}) == 421
            assert status(dash.address, {"Host": "evil.example"}) == 421

    @pytest.mark.parametrize(
        ("host", "loopback"),
        [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("10.1.2.3", False)],
    )
    def test_is_loopback(self, host: str, loopback: bool) -> None:
        assert is_loopback(host) is loopback


class TestToken:
    """Beyond loopback every request carries the token the command printed."""

    @pytest.fixture
    def client(self, ledger_url: str) -> TestClient:
        ledger = open_ledger(ledger_url, create=False)
        assert ledger is not None
        return TestClient(Guard(create_app(ledger), hosts=None, token="s3cret-token"))

    def test_refused_without(self, client: TestClient) -> None:
        for path in ("/", "/api/overview", "/api/calls", "/api/export.csv", "/static/app.js"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert "token" in response.text
        assert client.get("/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/?token=wrong").status_code == 401

    def test_the_printed_address_then_the_cookie(self, client: TestClient) -> None:
        first = client.get("/?token=s3cret-token&since=30d", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/?since=30d"  # the token leaves the address bar
        cookie = first.headers["set-cookie"]
        assert (
            cookie.startswith(f"{COOKIE}=s3cret-token")
            and "HttpOnly" in cookie
            and "strict" in cookie.lower()
        )
        assert client.get("/api/overview").status_code == 200  # the client keeps the cookie

    def test_bearer(self, client: TestClient) -> None:
        assert (
            client.get("/api/overview", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        )

    def test_made_and_printed_beyond_loopback(self, ledger_url: str) -> None:
        ledger = open_ledger(ledger_url, create=False)
        assert ledger is not None
        dash = Dashboard(ledger, host="0.0.0.0", port=0)  # bound, never served
        try:
            assert dash.token and len(dash.token) >= 24
            assert dash.url.endswith(f"?token={dash.token}")
        finally:
            dash.socket.close()
            ledger.close()

    def test_headers(self, client: TestClient) -> None:
        response = client.get("/api/overview", headers={"Authorization": "Bearer s3cret-token"})
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
