"""Shared-budget reservations are leases: released when their process dies, cleared by reset,
reclaimed exactly once however many processes reclaim at once. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from _postgres import postgres_fixture

import llmtally
from llmtally.cli import cli_logic
from llmtally.ledger import Ledger, open_ledger
from llmtally.ledger.budgets import BudgetStore
from llmtally.testing import FakeProvider, Reply

postgres = postgres_fixture()
CALL = Decimal("0.00111")  # gpt-4: 11 prompt (as estimated offline) + 13 completion tokens


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres").new_database("leases"))


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    opened = open_ledger(url)
    assert opened is not None
    yield opened
    opened.close()


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def line_of(proc: subprocess.Popen[str]) -> str:
    """The child's next line of output; its errors if it ended instead."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        raise AssertionError(f"the child ended (exit {proc.returncode}): {proc.communicate()[1]}")
    return line.strip()


def counter(ledger: Ledger, name: str) -> tuple[int, int]:
    """The budget's reserved_pico as stored, and the sum of its leases."""
    p = ledger.placeholder
    ((reserved,),) = ledger.execute(f"SELECT reserved_pico FROM llmtally_budgets WHERE name = {p}", (name,))
    ((leased,),) = ledger.execute(
        f"SELECT COALESCE(SUM(amount_pico), 0) FROM llmtally_reservations WHERE budget = {p}", (name,)
    )
    return int(reserved), int(leased)


def client() -> openai.OpenAI:
    fake = FakeProvider(
        handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )


def ask(c: openai.OpenAI) -> None:
    c.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], max_tokens=13
    )


# Reserves the whole budget for a call the provider never answers, then waits to be killed.
STUCK_CALL = """
    import sys, threading, httpx2, openai, llmtally
    from llmtally.testing import FakeProvider

    def never(request):
        print("sent", flush=True)
        threading.Event().wait()

    fake = FakeProvider(handler=never)
    c = openai.OpenAI(api_key="x", base_url="http://fake/v1", max_retries=0,
                      http_client=httpx2.Client(transport=fake.httpx2_transport()))
    with llmtally.budget("team", ledger=sys.argv[1]):
        c.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], max_tokens=13
        )
"""


def test_a_killed_call_releases_its_reservation(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL during a call: the reservation it held no longer blocks anyone (same host: at once)."""
    store = BudgetStore(open_ledger(url))  # type: ignore[arg-type]
    store.set("team", CALL)  # room for exactly one call
    proc = spawn(STUCK_CALL, url)
    try:
        assert line_of(proc) == "sent"
        # While it is alive, its reservation holds the room.
        assert not store.reserve("team", CALL, None)
        assert cli_logic(["budget", "list", "--ledger", url]) == 0
        assert f"in flight ${CALL}" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait(30)
    assert cli_logic(["budget", "list", "--ledger", url]) == 0
    assert "spent $0 of $0.00111 (no period); in flight $0\n" in capsys.readouterr().out
    with llmtally.budget("team", ledger=url):
        ask(client())  # the room is back
    state = store.get("team")
    assert state is not None and state.spent == CALL and state.reserved == 0


# Reserves as a process of another host (its pid cannot be checked from here), with a short lease,
# then kills itself.
OTHER_HOST = """
    import os, signal, sys
    from decimal import Decimal
    from llmtally.ledger import budgets, open_ledger

    budgets.HOST = "another-host"
    store = budgets.BudgetStore(open_ledger(sys.argv[1]))
    store.lease_seconds = float(sys.argv[2])
    assert store.reserve("team", Decimal("1"), None)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_lease_of_a_process_elsewhere_expires(url: str) -> None:
    store = BudgetStore(open_ledger(url))  # type: ignore[arg-type]
    store.set("team", "1")
    lease = 4.0
    proc = spawn(OTHER_HOST, url, str(lease))
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, proc.communicate()[1]
    killed = time.time()
    assert not store.reserve("team", Decimal("1"), None)  # another host's process may be alive
    deadline = killed + lease + 20
    while not store.reserve("team", Decimal("1"), None):
        assert time.time() < deadline, "the dead process's lease never expired"
        time.sleep(0.2)


def test_a_live_process_renews_its_leases(url: str) -> None:
    """A call that takes many lease times (a long stream) keeps its reservation."""
    store = BudgetStore(open_ledger(url))  # type: ignore[arg-type]
    store.lease_seconds = 0.4
    store.set("team", "1")
    lease = store.reserve("team", Decimal("1"), None)
    assert lease
    time.sleep(1.5)
    assert not store.reclaim("team")
    assert not store.reserve("team", Decimal("0.5"), None)
    state = store.get("team")
    assert state is not None and state.reserved == 1
    store.settle("team", Decimal("0.25"), lease=lease, period=None)
    state = store.get("team")
    assert state is not None and state.reserved == 0 and state.spent == Decimal("0.25")
    assert store.reserve("team", Decimal("0.75"), None)


def test_reset_clears_the_reservations(url: str, ledger: Ledger) -> None:
    store = BudgetStore(ledger)
    store.set("team", "1")
    held = store.reserve("team", Decimal("0.6"), None)
    assert held
    store.settle("team", Decimal("0.3"), lease=None, period=None)  # spent by a call in warn mode
    assert cli_logic(["budget", "reset", "team", "--ledger", url]) == 0
    state = store.get("team")
    assert state is not None and state.spent == 0 and state.reserved == 0
    fresh = store.reserve("team", Decimal("1"), None)  # all the room is back
    assert fresh
    # The call that held the cleared reservation ends: charged, but its reservation is not
    # released a second time (that would free room the new reservation holds).
    store.settle("team", Decimal("0.5"), lease=held, period=None)
    assert counter(ledger, "team") == (10**12, 10**12)
    assert not store.reserve("team", Decimal("0.000001"), None)
    state = store.get("team")
    assert state is not None and state.spent == Decimal("0.5") and state.reserved == 1


# Waits for the go file, reserves one dollar, says whether it got it, and holds it until told.
RECLAIMER = """
    import os, sys, time
    from decimal import Decimal
    from llmtally.ledger import budgets, open_ledger

    store = budgets.BudgetStore(open_ledger(sys.argv[1]))
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.001)
    print("held" if store.reserve("team", Decimal("1"), None) else "refused", flush=True)
    sys.stdin.readline()
    os._exit(0)
"""

# Takes all ten dollars of the budget as ten reservations, then dies.
HOARDER = """
    import os, signal, sys
    from decimal import Decimal
    from llmtally.ledger import budgets, open_ledger

    store = budgets.BudgetStore(open_ledger(sys.argv[1]))
    for _ in range(10):
        assert store.reserve("team", Decimal("1"), None)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_concurrent_reclaims_release_each_lease_once(url: str, ledger: Ledger, tmp_path: Path) -> None:
    """8 processes find the budget full of a dead process's leases at the same moment: each lease's
    amount leaves the budget once, so the budget still holds exactly what it allows."""
    store = BudgetStore(ledger)
    store.set("team", "10")
    hoarder = spawn(HOARDER, url)
    hoarder.wait(60)
    assert hoarder.returncode == -signal.SIGKILL, hoarder.communicate()[1]
    assert counter(ledger, "team") == (10 * 10**12, 10 * 10**12)
    go = tmp_path / "go"
    workers = [spawn(RECLAIMER, url, str(go)) for _ in range(8)]
    try:
        for w in workers:
            assert line_of(w) == "ready"
        go.touch()
        assert [line_of(w) for w in workers] == ["held"] * 8
        # 8 of 10 dollars held by live processes: room for 2 more, not 3.
        assert counter(ledger, "team") == (8 * 10**12, 8 * 10**12)
        assert not store.reserve("team", Decimal("3"), None)
        assert store.reserve("team", Decimal("2"), None)
        assert not store.reserve("team", Decimal("0.000001"), None)
    finally:
        for w in workers:
            w.communicate("\n", timeout=60)


OLD_BUDGETS = (
    "CREATE TABLE llmtally_budgets (name TEXT PRIMARY KEY, max_pico BIGINT NOT NULL, "
    "period TEXT, window_start DOUBLE PRECISION NOT NULL, spent_pico BIGINT NOT NULL, "
    "reserved_pico BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)"
)


def test_a_database_from_before_leases(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Budgets made before leases, with reservations stuck in them: the spend is kept, and what was
    reserved becomes a lease that expires (or that reset clears)."""
    p = ledger.placeholder
    ledger.execute(OLD_BUDGETS)
    dollars = 10**12
    for name in ("team", "other"):  # 10 dollars, 3 spent, 5 reserved by processes long dead
        ledger.execute(
            f"INSERT INTO llmtally_budgets VALUES ({p}, {p}, NULL, 0, {p}, {p}, {p})",
            (name, 10 * dollars, 3 * dollars, 5 * dollars, time.time()),
        )
    monkeypatch.setattr(BudgetStore, "lease_seconds", 2.0)
    store = BudgetStore(ledger)
    BudgetStore(ledger)  # opened again: the old reservations are taken over once
    state = store.get("team")
    assert state is not None and state.spent == 3 and state.reserved == 5
    assert counter(ledger, "team") == (5 * dollars, 5 * dollars)
    # Until the lease expires those 5 may still be in flight (an older llmtally still running).
    assert not store.reserve("team", Decimal("3"), None)
    small = store.reserve("team", Decimal("2"), None)
    assert small
    store.reset("other")
    assert store.reserve("other", Decimal("10"), None)
    time.sleep(2.2)
    assert store.reserve("team", Decimal("5"), None)  # 3 spent + 2 + 5
    store.settle("team", Decimal("2"), lease=small, period=None)
    state = store.get("team")
    assert state is not None and state.spent == 5 and state.reserved == 5
    assert not store.reserve("team", Decimal("0.000001"), None)


def test_a_forked_child_does_not_renew_its_parents_leases(tmp_path: Path) -> None:
    """After fork the child is another process: leases taken there are its own, and the parent's
    renewal goes on in the parent only."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = BudgetStore(open_ledger(url))  # type: ignore[arg-type]
    store.lease_seconds = 0.4
    store.set("team", "2")
    parent = store.reserve("team", Decimal("1"), None)
    assert parent
    pid = os.fork()
    if pid == 0:  # the child: its own lease, then it dies without settling
        store.ledger.after_fork()
        code = 0 if store.reserve("team", Decimal("1"), None) else 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The child is gone: its lease is reclaimed, the parent's (renewed) is not.
    time.sleep(1.0)
    assert store.reclaim("team")
    state: Any = store.get("team")
    assert state.reserved == 1
    store.settle("team", Decimal("0"), lease=parent, period=None)
    assert store.get("team").reserved == 0  # type: ignore[union-attr]
