"""Shared budgets in the ledger database: atomic reservations across processes, SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest
from _postgres import postgres_fixture

import llmtally
from llmtally.cli import cli_logic
from llmtally.testing import FakeProvider, Reply

postgres = postgres_fixture()
CALL = Decimal("0.00111")  # gpt-4: 11 prompt (as estimated offline) + 13 completion tokens


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


class TestSQLite:
    """One process: reservations stop spending at the budget, and the spend is remembered."""

    def test_budget_stops_and_persists(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        c = client()
        with llmtally.budget("team", max_cost=CALL * 3, ledger=url) as t:
            for _ in range(3):
                ask(c)
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(c)
        assert t.successful_requests == 3 and info.value.scope == "team"
        assert "shared budget 'team'" in str(info.value)  # was called a scope
        # Another scope on the same budget (a later run) starts from what was spent.
        with pytest.raises(llmtally.BudgetExceeded), llmtally.budget("team", ledger=url):
            ask(c)
        assert cli_logic(["budget", "list", "--ledger", url]) == 0
        assert cli_logic(["budget", "reset", "team", "--ledger", url]) == 0
        with llmtally.budget("team", ledger=url):
            ask(c)  # room again

    def test_a_failing_budget_database_releases_what_was_reserved(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        org = llmtally.budget("org", max_cost="1", ledger=f"sqlite:///{tmp_path / 'a.db'}")
        team = llmtally.budget("team", max_cost="1", ledger=f"sqlite:///{tmp_path / 'b.db'}")

        def down(*args: object) -> bool:
            raise llmtally.LedgerError("server down")

        assert team._limits is not None and team._limits.shared is not None
        monkeypatch.setattr(team._limits.shared.store, "reserve", down)
        c = client()
        for _ in range(5):
            with org, team:
                ask(c)  # sent: a budget that cannot be checked does not stop the work (logged)
        assert org._limits is not None and org._limits.shared is not None
        state = org._limits.shared.store.get("org")
        assert state is not None and state.reserved == 0 and state.spent == CALL * 5

    def test_a_dropped_stream_releases_its_reservation(self, tmp_path: Path) -> None:
        """A streamed answer dropped unread and unclosed was sent: counted when collected, its
        worst-case reservation settled at what it cost, not held for ever."""
        import gc

        c = client()
        with llmtally.budget("drops", max_cost="1", ledger=f"sqlite:///{tmp_path / 'l.db'}") as b:
            for _ in range(3):
                stream = c.chat.completions.create(
                    model="gpt-4",
                    messages=[{"role": "user", "content": "Tell me a joke"}],
                    max_tokens=13,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                del stream
            gc.collect()  # may run anywhere, in a store's lock even: the calls are only queued
        assert b.requests == 3  # a safe point: the queue is settled, reservations with it
        assert b._limits is not None and b._limits.shared is not None
        state = b._limits.shared.store.get("drops")
        assert state is not None and state.reserved == 0 and state.spent == b.cost

    def test_collection_only_queues(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The collector runs wherever an allocation triggers it, inside a store's lock even (a
        PostgreSQL budget deadlocked so): a dropped stream's call is queued there, never settled."""
        import gc

        from llmtally._core.pipeline import PIPELINE

        c = client()
        with llmtally.budget("gc", max_cost="1", ledger=f"sqlite:///{tmp_path / 'l.db'}") as b:
            stream = c.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=13, stream=True
            )
            flushes: list[int] = []
            with monkeypatch.context() as m:
                m.setattr(PIPELINE, "flush", lambda: flushes.append(1))
                del stream
                gc.collect()
            assert flushes == [] and len(PIPELINE.pending) == 1
        assert b.requests == 1 and b._limits is not None and b._limits.shared is not None
        state = b._limits.shared.store.get("gc")
        assert state is not None and state.reserved == 0 and state.spent == b.cost

    def test_a_fork_does_not_settle_the_parents_stream(self, tmp_path: Path) -> None:
        """A child's copy of a stream the parent opened is the parent's: collected in the child, it
        is not counted there, and the reservation is settled once, by the parent."""
        import gc

        import requests

        fake = FakeProvider(handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13))
        with fake.serve() as url:
            with llmtally.budget("fork", max_cost="1", ledger=f"sqlite:///{tmp_path / 'l.db'}") as b:
                body = {"model": "gpt-4", "messages": [], "max_tokens": 13, "stream": True,
                        "stream_options": {"include_usage": True}}  # fmt: skip
                r = requests.post(url + "/v1/chat/completions", json=body, stream=True)
                pid = os.fork()
                if pid == 0:  # the child drops its copy and settles whatever it has
                    del r
                    gc.collect()
                    llmtally.flush()
                    os._exit(0)
                os.waitpid(pid, 0)
                b"".join(r.iter_content(None))
        assert b.requests == 1 and b._limits is not None and b._limits.shared is not None
        state = b._limits.shared.store.get("fork")
        assert state is not None and state.reserved == 0 and state.spent == b.cost == CALL

    @pytest.mark.parametrize("ledger", [True, False], ids=["with-ledger", "budget-only"])
    def test_a_stream_open_at_exit_settles(self, tmp_path: Path, ledger: bool) -> None:
        """A stream still held, unread, when the program exits: its call is recorded (with a ledger)
        and its reservation settled, not held for ever."""
        db = tmp_path / "l.db"
        code = textwrap.dedent(
            f"""
            import requests, llmtally
            from llmtally.testing import FakeProvider, Reply
            fake = FakeProvider(handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13))
            url = fake.start()
            if {ledger}:
                llmtally.configure(ledger="sqlite:///{db}")
            budget = llmtally.budget("exit", max_cost="1", ledger="sqlite:///{db}")
            budget.__enter__()
            body = {{"model": "gpt-4", "messages": [], "max_tokens": 13, "stream": True,
                     "stream_options": {{"include_usage": True}}}}
            KEEP = requests.post(url + "/v1/chat/completions", json=body, stream=True)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        state = llmtally.budget("exit", ledger=f"sqlite:///{db}")._limits.shared.store.get("exit")  # type: ignore[union-attr]
        assert state is not None and state.reserved == 0
        if ledger:
            (row,) = llmtally.report(ledger=f"sqlite:///{db}", since="1d")
            assert row.requests == 1

    def test_warn_mode_charges_what_was_spent(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'w.db'}"
        b = llmtally.budget("team", max_cost="0.001", ledger=url, on_exceed="warn")
        c = client()
        for _ in range(3):
            with b:
                ask(c)  # each over the budget's room: warned, sent, and charged
        assert b._limits is not None and b._limits.shared is not None
        state = b._limits.shared.store.get("team")
        assert state is not None and state.spent == CALL * 3 and state.reserved == 0

    def test_a_refused_request_is_not_counted_as_sent(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'r.db'}"
        llmtally.budget("tiny", max_cost="0.0001", ledger=url)
        c = client()
        with llmtally.track("run", max_requests=2) as run:
            for _ in range(2):
                with pytest.raises(llmtally.BudgetExceeded), llmtally.budget("tiny", ledger=url):
                    ask(c)
            ask(c)  # the two refused requests were never sent: the run has room for two
            ask(c)
            with pytest.raises(llmtally.BudgetExceeded, match="request limit: 2 of 2"):
                ask(c)
        assert run.successful_requests == 2

    def test_unknown_budget(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no budget named 'nope'"):
            llmtally.budget("nope", ledger=f"sqlite:///{tmp_path / 'l.db'}")


WORKER = textwrap.dedent(
    """
    import sys, httpx2, openai, llmtally
    from llmtally.testing import FakeProvider, Reply
    url = sys.argv[1]
    fake = FakeProvider(
        handler=lambda req: Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")
    )
    c = openai.OpenAI(api_key="x", base_url="http://fake/v1", max_retries=0,
                      http_client=httpx2.Client(transport=fake.httpx2_transport()))
    sent = 0
    with llmtally.budget("shared", ledger=url):
        while True:
            try:
                c.chat.completions.create(
                    model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], max_tokens=13
                )
            except llmtally.BudgetExceeded:
                break
            sent += 1
    print(sent)
    """
)


class TestAcrossProcesses:
    """4 processes on one real PostgreSQL: together they spend the budget and not a cent more."""

    def test_four_processes(self, postgres) -> None:  # type: ignore[no-untyped-def]
        url = postgres.url
        limit = CALL * 25
        llmtally.budget("shared", max_cost=limit, ledger=url)  # set it once
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ),
            )
            for _ in range(4)
        ]
        sent = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            sent.append(int(out.strip()))
        assert sum(sent) == 25  # no overshoot: each call reserved its worst case, which is its cost
        from llmtally.ledger import open_ledger
        from llmtally.ledger.budgets import BudgetStore

        ledger = open_ledger(url)
        assert ledger is not None
        state = BudgetStore(ledger).get("shared")
        assert state is not None and state.spent == limit and state.reserved == 0
