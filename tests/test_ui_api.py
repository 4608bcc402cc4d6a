"""The dashboard's API over ledgers written through real SDK calls, SQLite and PostgreSQL: its
numbers are ``llmtally report --format json``'s on the same ledger and window, its listings hold
every call and no prompt text, and it only reads."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from _postgres import postgres_fixture
from _ui import API_KEY, CALLS_MADE, HOSTILE, PROMPT_MARK, dashboard, iso, record_calls, report_json

from llmtally.ledger import open_ledger
from llmtally.ledger.budgets import BudgetStore

postgres = postgres_fixture()


@dataclass
class Recorded:
    url: str
    since: str
    until: str
    path: Path | None


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A ledger of the scenario's real SDK calls, and a window around them cut mid-hour at both
    ends (whole hours from SQLite's rollup, the edges from the calls)."""
    path = None
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("ui") / "ledger.db"
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres").new_database("ui")
    now = time.time()
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMTALLY_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))
    try:
        record_calls(url)
    finally:
        mp.undo()
    yield Recorded(url, iso(now - 3 * 3600 - 1234), iso(now + 3600 + 321), path)


@pytest.fixture(scope="module")
def served(recorded: Recorded) -> Iterator[Any]:
    with dashboard(recorded.url) as dash:
        yield dash


def get(dash: Any, path: str, **query: Any) -> Any:
    url = dash.address + path + ("?" + urlencode(query, doseq=True) if query else "")
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        if response.headers.get_content_type() == "application/json":
            return json.loads(body)
        return body.decode()


def window(r: Recorded, **more: Any) -> dict[str, Any]:
    return {"since": r.since, "until": r.until, **more}


def rows_of(doc_rows: list[dict[str, Any]], latency: bool = True) -> list[dict[str, Any]]:
    """API rows without what only the page uses (the cost rounded for reading), and without their
    latency unless the page shows it (``latency``)."""
    drop = {"shown"} | (set() if latency else LATENCY)
    return [{k: v for k, v in r.items() if k not in drop} for r in doc_rows]


LATENCY = {"latency_p50_ms", "latency_p95_ms"}


@pytest.fixture(scope="module")
def doc(served: Any, recorded: Recorded) -> Any:
    """The overview of the recorded window."""
    return get(served, "api/overview", **window(recorded))


class TestSameAsTheReport:
    """Every number of the overview is the one ``llmtally report --format json`` gives."""

    def test_the_scenario_is_there(self, doc: Any) -> None:
        models = {r["model"] for r in doc["models"]}
        assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5"} <= models
        assert len(models) == 10  # of 12: the top ten
        assert doc["totals"]["requests"] == CALLS_MADE
        assert doc["totals"]["failed_requests"] == 1
        assert doc["totals"]["unpriced_requests"] >= 1
        assert doc["totals"]["estimated_requests"] >= 1

    @pytest.mark.parametrize(
        ("key", "by"), [("models", "model"), ("scopes", "scope"), ("providers", "provider")]
    )
    def test_top_tables(self, doc: Any, recorded: Recorded, key: str, by: str) -> None:
        want = report_json(recorded.url, "--since", recorded.since, "--until", recorded.until, "--by", by)
        # Latency is shown (and read) by model only.
        assert rows_of(doc[key], key == "models") == rows_of(want["rows"][:10], key == "models")
        if key != "models":
            assert all(r["latency_p50_ms"] is None for r in doc[key])

    def test_totals_and_latency(self, doc: Any, recorded: Recorded) -> None:
        want = report_json(recorded.url, "--since", recorded.since, "--until", recorded.until)
        got = rows_of([doc["totals"]])[0]
        assert got == want["totals"]
        assert doc["latency_exact"] == want["latency_exact"]
        assert doc["command"].startswith("llmtally report --ledger ")

    def test_the_printed_command_gives_the_pages_numbers(self, doc: Any, recorded: Recorded) -> None:
        """Was: printed without --ledger (it read the default ledger) nor the currency and rates."""
        import contextlib
        import io
        import shlex

        from llmtally.cli import cli_logic

        argv = shlex.split(doc["command"])
        assert argv[:2] == ["llmtally", "report"] and "--currency" in argv
        if recorded.path is None:  # PostgreSQL: its password is never printed
            assert "***" in doc["command"]
            return
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli_logic([*argv[1:], "--format", "json"]) == 0
        assert rows_of([doc["totals"]])[0] == json.loads(out.getvalue())["totals"]

    def test_tags(self, doc: Any, recorded: Recorded) -> None:
        assert doc["tags"]["keys"][:2] in (["team", "user"], ["user", "team"])
        key = doc["tags"]["key"]
        want = report_json(
            recorded.url, "--since", recorded.since, "--until", recorded.until, "--by", f"tag:{key}"
        )
        assert rows_of(doc["tags"]["rows"], False) == rows_of(want["rows"][:10], False)

    def test_the_chart(self, doc: Any, recorded: Recorded) -> None:
        """Each bar is the report's cost for its hour and model; the labels cover the window."""
        series = doc["series"]
        assert series["bucket"] == "hour"
        assert len(series["labels"]) in (5, 6)
        want = report_json(
            recorded.url,
            "--since",
            recorded.since,
            "--until",
            recorded.until,
            "--by",
            "hour",
            "--by",
            "model",
        )
        bars = {
            (label, s["name"]): Decimal(cost)
            for s in series["stacks"]
            for label, cost in zip(series["labels"], s["costs"], strict=True)
        }
        assert len(series["stacks"]) == 9  # eight models, and the others stacked as one
        others = series["stacks"][-1]["name"]
        assert others.endswith("others)")
        summed: dict[tuple[str, str], Decimal] = {}
        for row in want["rows"]:
            name = row["model"] if (row["hour"], row["model"]) in bars else others
            key = (row["hour"], name)
            summed[key] = summed.get(key, Decimal(0)) + Decimal(row["cost"] or 0)
        for key, cost in summed.items():
            assert bars[key] == cost, key
        assert sum(bars.values()) == Decimal(doc["totals"]["cost"])

    def test_periods(self, doc: Any, recorded: Recorded) -> None:
        """Today, 7 and 30 days, and the span before each, are the report's over those windows."""
        for period in doc["periods"]:
            for span in (period, period["previous"]):
                want = report_json(recorded.url, "--since", iso(span["start"]), "--until", iso(span["end"]))
                assert span["cost"] == want["totals"]["cost"], period["name"]
                assert span["requests"] == want["totals"]["requests"]
        assert doc["periods"][0]["requests"] == CALLS_MADE

    def test_failures_unpriced_estimated(self, doc: Any) -> None:
        assert doc["failures"]["requests"] == 1
        assert doc["failures"]["rate"] == pytest.approx(1 / CALLS_MADE)
        assert [f["model"] for f in doc["failures"]["models"]] == ["broken"]
        unpriced = {u["model"]: u for u in doc["unpriced"]["models"]}
        assert "my-finetune-v1" in unpriced and "no price" in unpriced["my-finetune-v1"]["why"]
        assert "tokenizer" in doc["estimated"]["why"]

    def test_an_unknown_cost_is_never_zero(self, doc: Any, served: Any, recorded: Recorded) -> None:
        alone = get(served, "api/overview", **window(recorded, model="my-finetune-v1"))
        row = alone["models"][0]
        assert row["model"] == "my-finetune-v1" and row["requests"] == 1
        assert row["cost"] is None and row["shown"] == "unknown"
        assert alone["totals"]["cost"] is None and alone["totals"]["shown"] == "unknown"
        assert doc["totals"]["cost_is_partial"] and doc["totals"]["shown"].startswith("≥ $")


class TestFilters:
    """A filtered view is the report with the same ``--where``, and that row of the unfiltered one."""

    @pytest.mark.parametrize(
        ("query", "where", "by"),
        [
            ({"model": "gpt-4o-mini"}, ["model=gpt-4o-mini"], "model"),
            ({"provider": "anthropic"}, ["provider=anthropic"], "provider"),
            ({"tag": "team=ads"}, ["tag:team=ads"], "tag:team"),
            ({"scope": "agent > step"}, ["scope=agent > step"], "scope"),
            ({"model": HOSTILE[0]}, [f"model={HOSTILE[0]}"], "model"),
            ({"model": HOSTILE[3]}, [f"model={HOSTILE[3]}"], "model"),
            ({"model": ["gpt-4o", "gpt-4o-mini"], "tag": "team=search"}, None, None),
        ],
    )
    def test_filter(self, served: Any, recorded: Recorded, query: Any, where: Any, by: Any) -> None:
        doc = get(served, "api/overview", **window(recorded, **query))
        args = ["--since", recorded.since, "--until", recorded.until]
        for w in where or ["model=gpt-4o", "model=gpt-4o-mini", "tag:team=search"]:
            args += ["--where", w]
        want = report_json(recorded.url, *args)
        assert rows_of([doc["totals"]])[0] == want["totals"]
        assert rows_of(doc["models"]) == want["rows"]
        assert doc["totals"]["requests"] > 0
        if by:
            value = where[0].split("=", 1)[1]
            whole = report_json(
                recorded.url, "--since", recorded.since, "--until", recorded.until, "--by", by
            )
            row = next(r for r in whole["rows"] if r[by] == value)
            assert doc["totals"]["requests"] == row["requests"] and doc["totals"]["cost"] == row["cost"]
        assert doc["filters"]

    def test_bad_filter(self, served: Any) -> None:
        with pytest.raises(urllib.error.HTTPError) as err:
            get(served, "api/overview", tag="no-equals-sign")
        assert err.value.code == 400
        assert "KEY=VALUE" in json.loads(err.value.read())["error"]


class TestDrillDown:
    """The calls behind a number: every one of them, paged, and each whole."""

    def pages(self, served: Any, recorded: Recorded, **query: Any) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        before = None
        while True:
            extra = {"before": before} if before else {}
            page = get(served, "api/calls", **window(recorded, limit=3, **query, **extra))
            calls += page["calls"]
            before = page["next"]
            if not before:
                return calls

    def test_every_call_once(self, served: Any, recorded: Recorded) -> None:
        calls = self.pages(served, recorded)
        assert len(calls) == CALLS_MADE == len({c["id"] for c in calls})
        starts = [c["started_at"] for c in calls]
        assert starts == sorted(starts, reverse=True)

    @pytest.mark.parametrize(
        ("query", "count"),
        [
            ({"only": "failed"}, "failed_requests"),
            ({"only": "unpriced"}, "unpriced_requests"),
            ({"only": "estimated"}, "estimated_requests"),
            ({"model": "gpt-4o-mini"}, "requests"),
            ({"tag": "team=search"}, "requests"),
            ({"scope": "agent > step"}, "requests"),
        ],
    )
    def test_the_calls_of_a_number(self, served: Any, recorded: Recorded, query: Any, count: str) -> None:
        filters = {k: v for k, v in query.items() if k != "only"}
        doc = get(served, "api/overview", **window(recorded, **filters))
        calls = self.pages(served, recorded, **query)
        assert len(calls) == doc["totals"][count] > 0
        if query.get("only") == "failed":
            assert all(not c["ok"] for c in calls)

    def test_a_bar(self, served: Any, recorded: Recorded) -> None:
        """A bar's calls: its hour and its model, as the page asks for them."""
        doc = get(served, "api/overview", **window(recorded))
        stack = doc["series"]["stacks"][0]
        i = max(range(len(stack["costs"])), key=lambda j: Decimal(stack["costs"][j]))
        label = doc["series"]["labels"][i]
        since = label.replace(" ", "T")
        until = iso(time.mktime(time.strptime(since, "%Y-%m-%dT%H:%M")) - time.timezone + 3600)
        calls = self.pages(served, recorded, since=since, until=until, model=stack["name"])
        assert calls and all(c["model"] == stack["name"] for c in calls)

    def test_one_call_whole(self, served: Any, recorded: Recorded) -> None:
        listed = get(served, "api/calls", **window(recorded, model="claude-sonnet-4-5"))["calls"][0]
        record = get(served, "api/call", id=listed["id"], at=repr(listed["started_at"]))
        assert record["id"] == listed["id"]
        assert record["provider"] == "anthropic" and record["endpoint"]
        assert record["scope"] == "agent > step" and record["tags"] == {"team": "ads", "user": "u2"}
        assert record["prompt_tokens"] > 0 and Decimal(record["cost"]) > 0
        for column in ("host", "pid", "latency_ms", "request_id", "price_source", "cost_pico"):
            assert column in record
        assert get(served, "api/call", id=listed["id"])["id"] == listed["id"]  # without its time too
        with pytest.raises(urllib.error.HTTPError) as err:
            get(served, "api/call", id="no-such-call")
        assert err.value.code == 404


class TestExport:
    def test_the_overview_is_the_reports_csv(self, served: Any, recorded: Recorded) -> None:
        import contextlib

        from llmtally.cli import cli_logic

        got = get(served, "api/export.csv", **window(recorded, stack="scope"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = ["report", "--ledger", recorded.url, "--since", recorded.since, "--until", recorded.until]
            assert cli_logic([*args, "--by", "scope", "--format", "csv"]) == 0
        assert got == out.getvalue()

    def test_calls_csv_is_escaped(self, served: Any, recorded: Recorded) -> None:
        text = get(served, "api/export.csv", **window(recorded, view="calls"))
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == CALLS_MADE
        models = {r["model"] for r in rows}
        assert "'" + HOSTILE[3] in models  # a formula shown as text, as the report's CSV does
        assert not any(cell.startswith(("=", "+", "@")) for r in rows for cell in r.values() if cell)
        assert "\x1b" not in text


class TestNothingSecret:
    """No prompt text or API key exists in the ledger, so none can reach any answer of the API."""

    def test_no_prompt_no_key(self, served: Any, recorded: Recorded) -> None:
        bodies = [
            json.dumps(get(served, "api/overview", **window(recorded))),
            json.dumps(get(served, "api/calls", **window(recorded, limit=500))),
            get(served, "api/export.csv", **window(recorded, view="calls")),
            get(served, "api/export.csv", **window(recorded)),
        ]
        for c in get(served, "api/calls", **window(recorded, limit=500))["calls"]:
            bodies.append(json.dumps(get(served, "api/call", id=c["id"])))
        for body in bodies:
            assert PROMPT_MARK not in body and API_KEY not in body

    def test_the_page_holds_no_data(self, served: Any) -> None:
        """The page is static: ledger values reach it only as JSON, put in as text by its script."""
        with urllib.request.urlopen(served.address, timeout=30) as response:
            page = response.read().decode()
            policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert "gpt-4o" not in page and "<script>alert" not in page
        js = (Path(__file__).parent.parent / "src/llmtally/ui/static/app.js").read_text()
        assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js


class TestLive:
    @pytest.mark.parametrize("backend", ["sqlite", "postgres"])
    def test_a_new_call_changes_the_stamp(
        self, backend: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """What the page polls changes when a call is written (and not before)."""
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'live.db'}"
        else:
            url = request.getfixturevalue("postgres").new_database("live")
        record_calls(url)
        with dashboard(url) as dash:
            first = get(dash, "api/changed")["stamp"]
            assert get(dash, "api/changed")["stamp"] == first
            assert get(dash, "api/overview", since="all")["totals"]["requests"] == CALLS_MADE
            record_calls(url)
            assert get(dash, "api/changed")["stamp"] != first
            assert get(dash, "api/overview", since="all")["totals"]["requests"] == 2 * CALLS_MADE


class TestReadOnly:
    def test_sqlite_file_untouched(self, served: Any, recorded: Recorded) -> None:
        if recorded.path is None:
            pytest.skip("SQLite only (PostgreSQL reads in READ ONLY transactions)")
        digest = hashlib.sha256(recorded.path.read_bytes()).hexdigest()
        for path in ("api/overview", "api/calls", "api/changed", "api/export.csv"):
            get(served, path, **window(recorded))
        assert hashlib.sha256(recorded.path.read_bytes()).hexdigest() == digest
        assert served.ledger.readonly


class TestBudgets:
    def test_every_budget(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'b.db'}"
        writer = open_ledger(url)
        assert writer is not None
        store = BudgetStore(writer)
        store.set("team-search", "50", "day")
        store.set("tiny", "0.001")
        store.settle("tiny", Decimal("0.002"), lease=None, period=None)
        lease = store.reserve("team-search", Decimal("1.5"), "day")
        assert lease
        with dashboard(url) as dash:
            budgets = {b["name"]: b for b in get(dash, "api/overview")["budgets"]}
        writer.close()
        assert budgets["team-search"]["period"] == "day"
        assert Decimal(budgets["team-search"]["reserved"]) == Decimal("1.5")
        assert Decimal(budgets["team-search"]["limit"]) == 50 and not budgets["team-search"]["full"]
        assert Decimal(budgets["tiny"]["spent"]) == Decimal("0.002") and budgets["tiny"]["full"]

    def test_postgres_budgets(self, postgres: Any) -> None:
        url = postgres.new_database("b")
        record_calls(url)
        writer = open_ledger(url)
        assert writer is not None
        BudgetStore(writer).set("team", "5", "month")
        writer.close()
        with dashboard(url) as dash:
            budgets = get(dash, "api/overview")["budgets"]
        assert [(b["name"], b["limit"], b["period"]) for b in budgets] == [("team", "5", "month")]

    def test_no_budget_table(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'n.db'}"
        record_calls(url)
        with dashboard(url) as dash:
            assert get(dash, "api/overview")["budgets"] == []
