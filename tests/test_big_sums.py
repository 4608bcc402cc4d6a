"""Sums past 2**63 picodollars ($9.2M): a team's year of spend in one SQLite ledger, or one hour of
one group. SQLite's SUM raised "integer overflow" there (reports and `ledger check` failed), and an
hour of the rollup past it turned into a float; the sums are exact now, whatever they reach."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx2
import pytest

import llmtally
from llmtally._core import user_prices
from llmtally.ledger._records import COST_HI, ROLLUP_COST_SPLIT
from llmtally.testing import FakeProvider, Reply

BIG = 10**9  # tokens each way in one call: the most a usage count may say (wire.MAX_COUNT)
PER_CALL = 2 * BIG * Decimal(600) / 1_000_000  # $1.2M at $600 per million tokens, input and output


@pytest.fixture(autouse=True)
def pricey() -> Iterator[None]:
    llmtally.set_price("pricey-model", input="600", output="600")
    yield
    user_prices.set_entries(files=(), calls=())


def calls(n: int, tokens: int) -> None:
    reply = Reply(text="x", prompt_tokens=tokens, completion_tokens=tokens, model="pricey-model")
    client = httpx2.Client(transport=FakeProvider(handler=lambda req: reply).httpx2_transport())
    for _ in range(n):
        r = client.post("http://fake/v1/chat/completions", json={"model": "pricey-model", "messages": []})
        assert r.status_code == 200


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtally", *argv], capture_output=True, text=True, timeout=120
    )


def test_twenty_millions_in_one_hour_of_one_group(tmp_path: Path) -> None:
    path = tmp_path / "big.db"
    url = f"sqlite:///{path}"
    llmtally.configure(ledger=url)
    with llmtally.track("big") as t:
        calls(20, BIG)
        calls(5, 10)
    assert llmtally.flush()
    want = 20 * PER_CALL + 5 * 20 * Decimal(600) / 1_000_000
    assert t.cost == want and want > Decimal("9223372.036854775807")
    # Every call in one hour of one group: the rollup's hour carries past one 64-bit column.
    lo, hi = sqlite3.connect(path).execute("SELECT cost_pico, cost_pico_hi FROM calls_hourly").fetchone()
    assert 0 <= lo < COST_HI and hi * COST_HI + lo == want * 10**12
    report = json.loads(cli("report", "--ledger", url, "--format", "json").stdout)
    assert Decimal(report["rows"][0]["cost"]) == want and report["rows"][0]["requests"] == 25
    # A window that cuts into the hour: its edge is summed over the calls, exactly too.
    report = json.loads(cli("report", "--ledger", url, "--format", "json", "--since", "1h").stdout)
    assert Decimal(report["rows"][0]["cost"]) == want
    check = cli("ledger", "check", "--ledger", url)
    assert check.returncode == 0 and "no problem found" in check.stdout, check.stdout + check.stderr


def test_an_older_ledger_past_one_column_is_split_when_migrated(tmp_path: Path) -> None:
    """A schema-10 ledger whose hour holds $5M (below 2**63, above COST_HI) is migrated exactly."""
    path = tmp_path / "old.db"
    llmtally.configure(ledger=f"sqlite:///{path}")
    calls(1, 10)
    assert llmtally.flush()
    llmtally.configure(ledger="none")
    conn = sqlite3.connect(path)
    (pico,) = conn.execute("SELECT cost_pico FROM calls").fetchone()
    five_m = 5 * 10**18
    with conn:
        conn.execute("UPDATE calls SET cost_pico = ?, cost = '5000000'", (five_m,))
        conn.execute("ALTER TABLE calls_hourly DROP COLUMN cost_pico_hi")
        conn.execute("UPDATE calls_hourly SET cost_pico = ?", (five_m,))
        conn.execute("DELETE FROM llmtally_schema WHERE version >= ?", (ROLLUP_COST_SPLIT,))
    conn.close()
    assert pico < five_m
    llmtally.configure(ledger=f"sqlite:///{path}")  # migrates
    calls(1, 10)
    assert llmtally.flush()
    lo, hi = sqlite3.connect(path).execute("SELECT cost_pico, cost_pico_hi FROM calls_hourly").fetchone()
    assert hi * COST_HI + lo == five_m + pico and lo < COST_HI
    check = cli("ledger", "check", "--ledger", f"sqlite:///{path}")
    assert check.returncode == 0, check.stdout + check.stderr
