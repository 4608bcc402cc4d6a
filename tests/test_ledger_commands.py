"""``llmtally ledger``: status, the records set apart and their reimport, the integrity check, pruning."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from _postgres import PostgresServer, postgres_fixture

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.cli import cli_logic
from llmtally.ledger import open_ledger, to_row
from llmtally.ledger._records import NAMES
from llmtally.ledger._spool import Spool

postgres = postgres_fixture()
DAY = 86400.0
T0 = 1_790_000_000.0 // 3600 * 3600


def make(i: int, day: float = 0, model: str = "gpt-4o") -> Call:
    call = Call("openai", "chat.completions", model)
    call.started_at, call.latency = T0 + day * DAY + i, 0.1
    call.usage, call.ok, call.status = Usage(100 + i, 10), True, 200
    call.cost = llmtally.cost_of(model, input_tokens=100 + i, output_tokens=10)
    return call


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path, isolated_spool: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database("cmd")


def fill(url: str, calls: list[Call]) -> None:
    led = open_ledger(url)
    assert led is not None
    led.write([to_row(c) for c in calls])
    led.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli_logic(["ledger", *argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_status_and_the_records_set_apart(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    fill(url, [make(i) for i in range(3)])
    led = open_ledger(url)
    assert led is not None
    spool = Spool(led.url)
    led.close()
    hostile = to_row(make(9, model="\x1b]0;pwned\x07evil"))
    bad = (*hostile[: NAMES.index("prompt_tokens")], 2**63, *hostile[NAMES.index("prompt_tokens") + 1 :])
    spool.quarantine([(bad, "prompt_tokens is not a count the ledger can hold"), (b"{torn", "not JSON")])
    code, out = run(capsys, "status", "--ledger", url)
    assert code == 0 and "calls: 3" in out and "set apart: 2 record(s)" in out
    code, out = run(capsys, "quarantined", "--ledger", url)
    assert code == 0 and "not a count the ledger can hold" in out and "\x1b" not in out and "\\x1b" in out
    code, out = run(capsys, "quarantined", "--ledger", url, "--format", "json")
    assert [e["reason"] for e in json.loads(out)][1] == "not JSON"

    # Fixed by hand in the dead-letter file, then reimported: written once, the torn line stays.
    entries = [json.loads(line) for line in Path(spool.dead_path).read_text().splitlines()]
    entries[0]["record"]["prompt_tokens"] = 109
    Path(spool.dead_path).write_text("".join(json.dumps(e) + "\n" for e in entries))
    code, out = run(capsys, "reimport", "--ledger", url)
    assert code == 1 and "reimported 1 record(s); 1 still set apart" in out
    (row,) = [r for r in llmtally.report(ledger=url, by=["model"]) if "evil" in r.keys[0]]
    assert row.requests == 1 and row.prompt_tokens == 109
    code, out = run(capsys, "reimport", "--ledger", url)
    assert "reimported 0" in out and len(llmtally.report(ledger=url, by=["model"])) == 2


def test_check(tmp_path: Path, isolated_spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    fill(url, [make(i, day=d) for d in range(3) for i in range(4)])
    code, out = run(capsys, "check", "--ledger", url)
    assert code == 0 and "12 calls, no problem found" in out
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute(
        "UPDATE calls_hourly SET requests = requests + 1 WHERE hour = (SELECT MIN(hour) FROM calls_hourly)"
    )
    conn.commit()
    conn.close()
    code, out = run(capsys, "check", "--ledger", url)
    assert code == 1 and "5 calls" in out and "4 calls" in out


def test_check_finds_one_record_at_two_times(
    tmp_path: Path, isolated_spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A spool line whose time was edited by hand, replayed: SQLite's key is (started_at, id), so the
    record is stored twice. The check says so rather than leave it silent."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first, second = to_row(make(1)), to_row(make(2))
    led = open_ledger(url)
    assert led is not None
    led.write([first, second])
    spool = Spool(led.url)
    led.close()
    at = NAMES.index("started_at")
    spool.append([(*first[:at], first[at] + 60, *first[at + 1 :])])
    llmtally.configure(ledger=url)  # replays the spool
    assert llmtally.flush()
    llmtally.configure(ledger="none")
    code, out = run(capsys, "check", "--ledger", url)
    assert code == 1 and f"record {first[0]!r} is stored 2 times, at different times" in out


def test_prune_keeping_or_dropping_the_totals(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    calls = [make(i, day=d) for d in range(4) for i in range(5)]
    fill(url, calls)
    total = sum((c.cost or Decimal(0) for c in calls), Decimal(0))
    before = datetime.fromtimestamp(T0 + 2 * DAY, UTC).strftime("%Y-%m-%dT%H:%M")
    if url.startswith("postgresql"):
        code, out = run(capsys, "prune", "--ledger", url, "--before", before)
        assert code == 2 and "--totals drop" in out
    else:
        code, out = run(capsys, "prune", "--ledger", url, "--before", before)
        assert code == 0 and "pruned 10 call(s)" in out and "kept in reports" in out
        (row,) = llmtally.report(ledger=url, by=["model"])
        assert row.requests == 20 and row.cost == total  # the totals of what was pruned are kept
    code, out = run(capsys, "prune", "--ledger", url, "--before", before, "--totals", "drop")
    assert code == 0
    (row,) = llmtally.report(ledger=url, by=["model"])
    assert row.requests == 10 and row.cost == sum((c.cost or 0 for c in calls[10:]), Decimal(0))
    code, out = run(capsys, "prune", "--ledger", url)
    assert code == 2 and "needs --before" in out
