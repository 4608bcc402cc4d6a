"""Reports filtered with ``where`` (``--where GROUP=VALUE``): a filtered report holds exactly the calls
of that group's row, over the hourly rollup and over the calls, in SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from _postgres import postgres_fixture
from test_report import CALLS, DAY, T0, make_call
from test_report_postgres import write_postgres, write_sqlite

import llmtally
from llmtally._core.usage import Call
from llmtally._report import report, totals
from llmtally.cli import cli_logic
from llmtally.ledger._read import parse_where

postgres = postgres_fixture()

#: Groups a report can be filtered on, each with a report grouped by it to take values from.
FILTERABLE = ["model", "provider", "endpoint", "scope", "currency", "price_source", "tag:team"]
#: Windows: everything; whole hours only (the rollup); cut mid-hour at both ends (rollup and calls);
#: inside one hour (the calls alone).
WINDOWS = [
    (None, None),
    (T0 - 3600, T0 + 2 * DAY + 3600),
    (T0 - 1800, T0 + DAY + 900),
    (T0 - 60, T0 + 60),
]


def more_calls() -> list[Call]:
    """test_report's calls, and calls a filter must tell apart: a numeric tag, no tags, another
    provider, nested scopes, and a call mid-hour at the window's edges."""
    calls = list(CALLS)
    odd = make_call(1, "gpt-4o", 10, 1, scope=("job", "step", "inner"), tags={"team": "search", "n": 5})
    odd.provider = "azure"
    half = make_call(0, "gpt-4", 10, 1, scope=(), tags={"flag": True})
    half.started_at = T0 - 1700
    late = make_call(1, "gpt-4o-mini", 10, 1, tags={"team": "ads"})
    late.started_at = T0 + DAY + 600
    return [*calls, odd, half, late]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return write_sqlite(tmp_path / "ledger.db", more_calls())


def values_of(url: str, group: str) -> list[str]:
    return [r.keys[0] for r in report(url, by=[group], latency=False)]


class TestSameAsTheRow:
    """A report filtered on a group's value is that group's row of the report grouped by it."""

    @pytest.mark.parametrize("group", FILTERABLE)
    @pytest.mark.parametrize("window", WINDOWS)
    def test_every_value(
        self, sqlite_url: str, group: str, window: tuple[float | None, float | None]
    ) -> None:
        since, until = window
        rows = report(sqlite_url, by=[group], since=since, until=until)
        assert rows
        for row in rows:
            kept = report(sqlite_url, by=["model"], since=since, until=until, where={group: row.keys[0]})
            total = totals(kept)
            assert (total.requests, total.cost, total.unpriced_requests, total.prompt_tokens) == (
                row.requests,
                row.cost,
                row.unpriced_requests,
                row.prompt_tokens,
            ), (group, row.keys)
            # The latency of the filtered calls is the row's.
            assert kept.latency == (row.latency_p50_ms, row.latency_p95_ms)

    def test_none_of_a_tag(self, sqlite_url: str) -> None:
        """``(none)``: the calls without that tag, as the report's row of them."""
        rows = {r.keys[0]: r for r in report(sqlite_url, by=["tag:team"])}
        assert "(none)" in rows
        kept = totals(report(sqlite_url, where="tag:team=(none)"))
        assert kept.requests == rows["(none)"].requests

    def test_a_number_and_a_boolean_tag(self, sqlite_url: str) -> None:
        """Tag values that are JSON numbers or booleans match as the report shows them."""
        assert totals(report(sqlite_url, where="tag:n=5")).requests == 1
        assert totals(report(sqlite_url, where="tag:flag=1")).requests == 1

    def test_scope_is_the_path_not_its_children(self, sqlite_url: str) -> None:
        paths = values_of(sqlite_url, "scope")
        assert {"job", "job > step", "job > step > inner", "(no scope)"} <= set(paths)
        assert totals(report(sqlite_url, where="scope=job > step")).requests == 1
        assert totals(report(sqlite_url, where="scope=(no scope)")).requests == 1

    def test_alternatives_and_all(self, sqlite_url: str) -> None:
        """One group's values are alternatives; different groups must all match."""
        by_model = {r.keys[0]: r for r in report(sqlite_url, by=["model"])}
        both = totals(report(sqlite_url, where=["model=gpt-4", "model=gpt-4o-mini"]))
        assert both.requests == by_model["gpt-4"].requests + by_model["gpt-4o-mini"].requests
        assert both.cost == by_model["gpt-4"].cost + by_model["gpt-4o-mini"].cost
        crossed = report(sqlite_url, by=["model", "tag:team"])
        want = sum(r.requests for r in crossed if r.keys == ("gpt-4o-mini", "ads"))
        assert (
            want
            and totals(report(sqlite_url, where={"model": "gpt-4o-mini", "tag:team": "ads"})).requests == want
        )

    def test_nothing_matches(self, sqlite_url: str) -> None:
        assert list(report(sqlite_url, where="model=no-such-model")) == []


class TestCommandLine:
    """``llmtally report --where``."""

    def test_where(self, sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", sqlite_url, "--format", "json", "--by", "model"]) == 0
        rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
        args = ["report", "--ledger", sqlite_url, "--format", "json", "--where", "model=gpt-4"]
        assert cli_logic(args) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [r["model"] for r in doc["rows"]] == ["gpt-4"]
        assert doc["rows"][0] == rows["gpt-4"]

    @pytest.mark.parametrize(
        ("where", "says"),
        [
            ("model", "GROUP=VALUE"),
            ("day=2026-11-01", "since and until"),
            ("colour=red", "cannot"),
            ("tag:bad key=x", "bad tag name"),
        ],
    )
    def test_bad_filters(
        self, sqlite_url: str, where: str, says: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli_logic(["report", "--ledger", sqlite_url, "--where", where]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err

    def test_the_chart_is_filtered_too(self, sqlite_url: str, tmp_path: Path) -> None:
        pytest.importorskip("matplotlib")
        chart = tmp_path / "c.html"
        args = ["report", "--ledger", sqlite_url, "--where", "model=gpt-4", "--chart", str(chart)]
        assert cli_logic(args) == 0
        assert "gpt-4o-mini" not in chart.read_text()


class TestParse:
    def test_forms(self) -> None:
        assert parse_where("model=a") == (("model", ("a",)),)
        assert parse_where(["model=a", ("model", "b"), "tag:team=x=y"]) == (
            ("model", ("a", "b")),
            ("tag:team", ("x=y",)),
        )
        assert parse_where({"provider": ["p", "q"]}) == (("provider", ("p", "q")),)
        assert parse_where(parse_where("model=a")) == (("model", ("a",)),)
        assert parse_where(None) == ()

    def test_the_facade_takes_it(self, sqlite_url: str) -> None:
        rows = llmtally.report(ledger=sqlite_url, where="model=gpt-4")
        assert [r.keys for r in rows] == [("gpt-4",)]


class TestPostgres:
    """The same filtered rows from PostgreSQL as from SQLite."""

    @pytest.fixture
    def ledgers(self, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
        server = request.getfixturevalue("postgres")
        pg = server.new_database("w")
        write_postgres(pg, more_calls())
        return pg, write_sqlite(tmp_path / "ledger.db", more_calls())

    @pytest.mark.parametrize("group", FILTERABLE)
    def test_same_rows(self, ledgers: tuple[str, str], group: str) -> None:
        pg, lite = ledgers
        for value in values_of(lite, group):
            for since, until in WINDOWS:
                a = report(pg, by=["model", "tag:team"], since=since, until=until, where={group: value})
                b = report(lite, by=["model", "tag:team"], since=since, until=until, where={group: value})
                assert a == b, (group, value, since)
                assert sum((r.cost for r in a), Decimal(0)) == sum((r.cost for r in b), Decimal(0))

    def test_where_with_tags_and_none(self, ledgers: tuple[str, str]) -> None:
        pg, lite = ledgers
        for where in ("tag:n=5", "tag:flag=1", "tag:team=(none)", "scope=(no scope)", "scope=job > step"):
            assert report(pg, where=where) == report(lite, where=where), where
