"""Reports over a PostgreSQL ledger, against a real server: the same rows as over SQLite."""

from __future__ import annotations

import json
import traceback
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from _postgres import PostgresServer, _free_port, postgres_fixture
from test_report import CALLS, DAY, T0, make_call

import llmtally
from llmtally._core.usage import Call
from llmtally._report import spend_over_time
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger.postgres import PostgresLedger
from llmtally.ledger.sqlite import SQLiteLedger

postgres = postgres_fixture()


def server_url(server: PostgresServer, dbname: str = "postgres", password: str | None = None) -> str:
    return server.url_for(dbname, password)


@pytest.fixture
def db(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the test server, for this test alone."""
    return postgres.new_database("r")


def without_latency(text: str, is_json: bool) -> Any:
    """A report's JSON or CSV without its latency (exact over PostgreSQL, approximate over SQLite),
    the latencies checked to agree within the histogram's precision."""
    import csv
    import io

    from llmtally.ledger._read import LATENCY_PRECISION

    names = ("latency_p50_ms", "latency_p95_ms")
    rows = json.loads(text)["rows"] if is_json else list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        if "others)" in str(next(iter(row.values()))):
            continue  # the groups past --top, summed: no percentile of theirs is kept
        for name in names:
            assert float(row[name]) > 0 and 500 * (1 - LATENCY_PRECISION) <= float(row[name]) <= 500 * (
                1 + LATENCY_PRECISION
            )
    if not is_json:
        return [{k: v for k, v in row.items() if k not in names} for row in rows]
    doc = json.loads(text)
    doc.pop("latency_exact")
    for row in [*doc["rows"], doc["totals"]]:
        for name in names:
            row.pop(name)
    return doc


def write_postgres(url: str, calls: Sequence[Call]) -> None:
    led = PostgresLedger(url)
    try:
        led.write([to_row(c) for c in calls])
    finally:
        led.close()


def write_sqlite(path: Path, calls: Sequence[Call]) -> str:
    led = SQLiteLedger(str(path))
    try:
        led.write([to_row(c) for c in calls])
    finally:
        led.close()
    return f"sqlite:///{path}"


@pytest.fixture
def ledgers(db: str, tmp_path: Path) -> tuple[str, str]:
    """(PostgreSQL URL, SQLite URL), each holding the known CALLS of test_report."""
    write_postgres(db, CALLS)
    return db, write_sqlite(tmp_path / "ledger.db", CALLS)


class TestSameAsSQLite:
    """llmtally.report gives the very rows over PostgreSQL that it gives over SQLite."""

    @pytest.mark.parametrize(
        "by",
        [
            ["model"],
            ["day"],
            ["hour"],
            ["scope"],
            ["tag:team", "model"],
            ["provider"],
            ["endpoint"],
            ["day", "model"],
            ["currency"],
            ["price_source", "model"],
        ],
    )
    def test_groups(self, ledgers: tuple[str, str], by: list[str]) -> None:
        pg, lite = ledgers
        rows = llmtally.report(ledger=pg, by=by)
        assert rows == llmtally.report(ledger=lite, by=by)
        assert sum(r.requests for r in rows) == len(CALLS)

    def test_mixed_currencies(self, db: str, tmp_path: Path) -> None:
        from test_report import TestCurrencies

        lite, calls = TestCurrencies.mixed(tmp_path)
        write_postgres(db, calls)
        for by in (["model"], ["currency"], ["day", "model"]):
            for rates in ({}, {"EUR": "1.08"}):
                rows = llmtally.report(ledger=db, by=by, currency="USD", rates=rates)
                assert rows == llmtally.report(ledger=lite, by=by, currency="USD", rates=rates)
                assert rows.rates == ({"EUR": Decimal("1.08")} if rates else {})
        (row,) = llmtally.report(ledger=db, by=["currency"], currency="USD", rates={}, top=1)
        assert row.keys == ("USD",) and not row.unconverted

    def test_values(self, ledgers: tuple[str, str]) -> None:
        # Not only equal to SQLite's: right (the types too, Decimal cost and int counts).
        pg, _ = ledgers
        rows = {r.keys: r for r in llmtally.report(ledger=pg, by=["model"])}
        gpt4 = rows[("gpt-4",)]
        assert (gpt4.requests, gpt4.failed_requests, gpt4.prompt_tokens, gpt4.completion_tokens) == (
            3,
            1,
            3000,
            300,
        )
        assert gpt4.cost == llmtally.report(ledger=pg)[0].cost
        assert str(gpt4.cost) == "0.108"
        assert all(type(r.requests) is type(r.prompt_tokens) is int for r in rows.values())
        assert type(rows[("gpt-4o-mini",)].prompt_tokens) is int
        assert rows[("my-finetune",)].unpriced_requests == 1
        assert rows[("gpt-4o-mini",)].estimated_requests == 1
        days = {r.keys[0]: r.requests for r in llmtally.report(ledger=pg, by=["day"])}
        assert days == {"2026-11-01": 2, "2026-11-02": 2, "2026-11-03": 2}
        teams = {r.keys for r in llmtally.report(ledger=pg, by=["tag:team"])}
        assert teams == {("search",), ("ads",), ("(none)",)}

    @pytest.mark.parametrize(
        "since, until",
        [
            ("2026-11-02", "2026-11-03"),
            (T0 + 2 * DAY - 60, None),
            (None, "2026-11-02"),
            (T0, T0 + DAY),  # the bounds exactly: since included, until excluded
            ("2027-01-01", None),  # nothing
        ],
    )
    def test_time_window(self, ledgers: tuple[str, str], since: Any, until: Any) -> None:
        pg, lite = ledgers
        for by in (["model"], ["day", "tag:team"]):
            rows = llmtally.report(ledger=pg, since=since, until=until, by=by)
            assert rows == llmtally.report(ledger=lite, since=since, until=until, by=by)
        window = llmtally.report(ledger=pg, since="2026-11-02", until="2026-11-03", by=["model"])
        assert {r.keys[0] for r in window} == {"gpt-4", "my-finetune"}

    def test_top(self, ledgers: tuple[str, str]) -> None:
        pg, lite = ledgers
        assert llmtally.report(ledger=pg, by=["model"], top=2) == llmtally.report(
            ledger=lite, by=["model"], top=2
        )

    def test_spend_over_time(self, ledgers: tuple[str, str]) -> None:
        pg, lite = ledgers
        assert spend_over_time(pg) == spend_over_time(lite)
        assert spend_over_time(pg, stack_by="tag:team") == spend_over_time(lite, stack_by="tag:team")

    def test_tag_values_of_every_json_type(self, db: str, tmp_path: Path) -> None:
        # Tags may be numbers, booleans or null; and tag names with dots or dashes. (Not 3 and "3"
        # both: SQLite's GROUP BY keeps them apart, as two rows with the key "3"; PostgreSQL not.)
        calls = [
            make_call(0, "gpt-4", 10, 1, tags={"n": 3, "flag": True, "a.b-c": "x"}),
            make_call(0, "gpt-4", 10, 1, tags={"n": 2.5, "flag": False, "a.b-c": "y"}),
            make_call(1, "gpt-4", 10, 1, tags={"n": None, "flag": True}),
            make_call(1, "gpt-4", 10, 1, tags={"n": "three"}),
            make_call(2, "gpt-4", 10, 1),
        ]
        write_postgres(db, calls)
        lite = write_sqlite(tmp_path / "tags.db", calls)
        for by in (["tag:n"], ["tag:flag"], ["tag:a.b-c"], ["tag:missing"], ["tag:n", "tag:flag"]):
            assert llmtally.report(ledger=db, by=by) == llmtally.report(ledger=lite, by=by), by

    def test_tag_names(self, ledgers: tuple[str, str]) -> None:
        pg, _ = ledgers
        with pytest.raises(ValueError, match="bad tag name"):
            llmtally.report(ledger=pg, by=["tag:x') OR 1=1 --"])
        # A name that needs quoting in SQL text but is a valid tag name works as one.
        assert {r.keys for r in llmtally.report(ledger=pg, by=["tag:te.am"])} == {("(none)",)}

    def test_ledger_from_the_environment(
        self, ledgers: tuple[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        pg, lite = ledgers
        monkeypatch.setenv("LLMTALLY_LEDGER", pg.replace("postgresql://", "postgres://"))
        assert llmtally.report(by=["scope"]) == llmtally.report(ledger=lite, by=["scope"])


class TestCommand:
    """llmtally report --ledger postgresql://... prints what it prints for SQLite."""

    @pytest.mark.parametrize(
        "extra",
        [
            [],
            ["--by", "day", "--by", "model"],
            ["--by", "tag:team", "--since", "2026-11-02"],
            ["--by", "scope", "--top", "1"],
            ["--format", "csv", "--by", "hour"],
        ],
    )
    def test_same_output(
        self, ledgers: tuple[str, str], extra: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        pg, lite = ledgers
        fmt = [] if "--format" in extra else ["--format", "json"]
        assert cli_logic(["report", "--ledger", pg, *fmt, *extra]) == 0
        from_pg = capsys.readouterr().out
        assert cli_logic(["report", "--ledger", lite, *fmt, *extra]) == 0
        from_lite = capsys.readouterr().out
        # The same, but for the latency: exact over PostgreSQL, from a histogram over SQLite.
        assert without_latency(from_pg, bool(fmt)) == without_latency(from_lite, bool(fmt))
        if fmt:
            doc = json.loads(from_pg)
            assert doc["rows"] and doc["totals"]["requests"] == (len(CALLS) if "--since" not in extra else 4)

    def test_json(self, ledgers: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
        pg, lite = ledgers
        assert cli_logic(["report", "--ledger", pg, "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert cli_logic(["report", "--ledger", lite, "--format", "json"]) == 0
        assert without_latency(json.dumps(doc), True) == without_latency(capsys.readouterr().out, True)
        assert [r["model"] for r in doc["rows"]] == ["gpt-4", "gpt-4o-mini", "my-finetune"]

    def test_chart(
        self, ledgers: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        chart = tmp_path / "spend.html"
        assert cli_logic(["report", "--ledger", ledgers[0], "--chart", str(chart)]) == 0
        assert "gpt-4" in chart.read_text()

    def test_error_exit(self, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
        url = server_url(postgres, password="cli-secret-9d2e")
        assert cli_logic(["report", "--ledger", url]) == 2
        err = capsys.readouterr().err
        assert "password authentication failed" in err and "cli-secret-9d2e" not in err


class TestErrors:
    """Clear LedgerErrors, naming the ledger without its password."""

    @staticmethod
    def raised(url: str, match: str, secret: str) -> llmtally.LedgerError:
        with pytest.raises(llmtally.LedgerError, match=match) as info:
            llmtally.report(ledger=url)
        text = "".join(traceback.format_exception(info.type, info.value, info.tb))
        assert secret not in text  # neither in the message nor in a chained driver error
        return info.value

    def test_wrong_password(self, postgres: PostgresServer) -> None:
        url = server_url(postgres, password="wrong-pass-7f3a9")
        err = self.raised(
            url,
            "cannot connect to the PostgreSQL ledger .*password authentication failed",
            "wrong-pass-7f3a9",
        )
        assert ":***@127.0.0.1" in str(err)

    def test_refused_connection(self, postgres: PostgresServer) -> None:
        url = f"postgresql://{postgres.user}:{postgres.password}@127.0.0.1:{_free_port()}/x"
        self.raised(url, "cannot connect to the PostgreSQL ledger .*refused", postgres.password)

    def test_bad_url(self) -> None:
        # libpq quotes the whole URL, password included, in this one.
        err = self.raised(
            "postgresql://u:url-secret-5678@[::1/db", "bad PostgreSQL ledger URL", "url-secret-5678"
        )
        assert ":***@" in str(err)

    def test_no_calls_table(self, db: str, postgres: PostgresServer) -> None:
        err = self.raised(db, "no calls table in the PostgreSQL ledger", postgres.password)
        assert ":***@127.0.0.1" in str(err)

    def test_report_does_not_create_anything(self, db: str) -> None:
        with pytest.raises(llmtally.LedgerError):
            llmtally.report(ledger=db)
        with psycopg.connect(db) as conn:
            tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert tables == []
