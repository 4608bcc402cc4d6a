"""``llmtally prices update``: opt-in catalogue updates from a loopback server; a bad download leaves
the catalogue in force unchanged; the next prices come from the new catalogue, said so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import llmtally
from llmtally import _catalogue, _pricing
from llmtally.cli import cli_logic

CATALOGUE = [
    {
        "id": "openai",
        "name": "OpenAI",
        "api_pattern": "https://api\\.openai\\.com",
        "models": [
            {"id": "gpt-4o", "match": {"equals": "gpt-4o"}, "prices": {"input_mtok": 3, "output_mtok": 12}},
            {"id": "gpt-9", "match": {"starts_with": "gpt-9"}, "prices": {"input_mtok": 1, "output_mtok": 2}},
        ],
    }
]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, bytes | int], str]]:
    monkeypatch.setenv("LLMTALLY_DATA_DIR", str(tmp_path))
    answer: dict[str, bytes | int] = {"body": json.dumps(CATALOGUE).encode(), "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answer["body"]
            assert isinstance(body, bytes)
            self.send_response(int(answer["status"]))
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield answer, f"http://127.0.0.1:{server.server_port}/data.json"
    finally:
        server.shutdown()
        server.server_close()
        _catalogue._loaded[0] = None
        _pricing.reset_caches()


def cost() -> Decimal | None:
    return llmtally.cost_of("gpt-4o", provider="openai", input_tokens=1_000_000, output_tokens=0)


def test_update_then_priced_from_it(
    served: tuple[dict[str, bytes | int], str], capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = served
    assert cost() == Decimal("2.5")  # the bundled catalogue
    assert cli_logic(["prices", "update", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "catalogue updated from" in out and "+ openai/gpt-9" in out
    assert "~ openai/gpt-4o: $2.5/input MTok" in out and "-> $3/input MTok" in out
    assert cost() == Decimal(3)
    found = _pricing.resolve("gpt-9-mini", "openai")
    assert found is not None and found.source.startswith("genai-prices catalogue of ")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"<html>not json</html>", 200, "not JSON"),
        (b'{"providers": []}', 200, "expected a list of providers"),
        (b'[{"id": "openai"}]', 200, "not a valid genai-prices catalogue"),
        (b"[]", 200, "expected a list of providers"),
        (b"gone", 500, "HTTP Error 500"),
    ],
)
def test_a_bad_download_changes_nothing(
    served: tuple[dict[str, bytes | int], str],
    capsys: pytest.CaptureFixture[str],
    body: bytes,
    status: int,
    message: str,
) -> None:
    answer, url = served
    assert cli_logic(["prices", "update", "--url", url]) == 0  # a good one first
    capsys.readouterr()
    answer.update(body=body, status=status)
    assert cli_logic(["prices", "update", "--url", url]) == 2
    err = capsys.readouterr().err
    assert message in err and url in err and "unchanged" in err
    _catalogue._loaded[0] = None
    _pricing.reset_caches()
    assert cost() == Decimal(3)  # still the good update in force


def test_never_fetched_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMTALLY_DATA_DIR", str(tmp_path))
    _catalogue._loaded[0] = None
    _pricing.reset_caches()
    assert _catalogue.snapshot() is None and cost() == Decimal("2.5")
    assert not list(tmp_path.iterdir())
    _catalogue._loaded[0] = None


def test_the_default_url_is_genai_prices() -> None:
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    assert _catalogue.DEFAULT_URL == DEFAULT_UPDATE_URL


def test_hostile_names_in_a_download_reach_the_terminal_escaped(
    served: tuple[dict[str, bytes | int], str], capsys: pytest.CaptureFixture[str]
) -> None:
    answer, url = served
    hostile = json.loads(json.dumps(CATALOGUE))
    hostile[0]["models"].append(
        {"id": "evil\x1b]0;owned\x07\x1b[2J", "match": {"equals": "evil"}, "prices": {"input_mtok": 1}}
    )
    answer["body"] = json.dumps(hostile).encode()
    assert cli_logic(["prices", "update", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "evil\\x1b]0;owned\\x07\\x1b[2J" in out
    assert cli_logic(["price", "evil", "--provider", "openai"]) == 0, capsys.readouterr().err
    assert "\x1b" not in capsys.readouterr().out
