"""Reports over a ledger of known calls: every grouping, time window, format and the chart."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger.sqlite import SQLiteLedger

DAY = 86400
T0 = datetime(2026, 11, 1, 12, tzinfo=UTC).timestamp()


def make_call(
    day: int,
    model: str,
    prompt: int,
    completion: int,
    *,
    scope=("job",),
    tags=None,
    ok: bool = True,
    estimated: bool = False,
    priced: bool = True,
) -> Call:
    call = Call("openai", "chat.completions", model)
    call.started_at = T0 + day * DAY
    call.latency = 0.5
    call.usage = Usage(prompt, completion)
    call.ok = ok
    call.status = 200 if ok else 500
    call.estimated = estimated
    call.scope_path = tuple(scope)
    call.tags = tags or {}
    if not ok:
        call.usage, call.cost = None, Decimal(0)
    elif priced:
        call.cost = llmtally.cost_of(model, input_tokens=prompt, output_tokens=completion)
    return call


CALLS = [
    make_call(0, "gpt-4", 1000, 100, tags={"team": "search"}),
    make_call(0, "gpt-4o-mini", 5000, 500, tags={"team": "search"}),
    make_call(1, "gpt-4", 2000, 200, scope=("job", "step"), tags={"team": "ads"}),
    make_call(1, "my-finetune", 300, 30, priced=False),
    make_call(2, "gpt-4o-mini", 800, 80, estimated=True, tags={"team": "ads"}),
    make_call(2, "gpt-4", 0, 0, ok=False),
]


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    path = tmp_path / "ledger.db"
    led = SQLiteLedger(str(path))
    led.write([to_row(c) for c in CALLS])
    led.close()
    return f"sqlite:///{path}"


def cost(model: str, prompt: int, completion: int) -> Decimal:
    result = llmtally.cost_of(model, input_tokens=prompt, output_tokens=completion)
    assert result is not None
    return result


class TestQueries:
    """llmtally.report groups the ledger's calls exactly."""

    def test_by_model(self, ledger: str) -> None:
        rows = {r.keys: r for r in llmtally.report(ledger=ledger, by=["model"])}
        gpt4 = rows[("gpt-4",)]
        assert (gpt4.requests, gpt4.failed_requests, gpt4.prompt_tokens, gpt4.completion_tokens) == (
            3,
            1,
            3000,
            300,
        )
        assert gpt4.cost == cost("gpt-4", 1000, 100) + cost("gpt-4", 2000, 200) == Decimal("0.108")
        mini = rows[("gpt-4o-mini",)]
        assert mini.cost == cost("gpt-4o-mini", 5000, 500) + cost("gpt-4o-mini", 800, 80)
        assert mini.estimated_requests == 1
        fine = rows[("my-finetune",)]
        assert (fine.unpriced_requests, fine.cost, fine.prompt_tokens) == (1, Decimal(0), 300)
        assert llmtally.report(ledger=ledger)[0].keys == ("gpt-4",)  # most expensive first

    def test_by_day_scope_and_tag(self, ledger: str) -> None:
        days = {r.keys[0]: r.requests for r in llmtally.report(ledger=ledger, by=["day"])}
        assert days == {"2026-11-01": 2, "2026-11-02": 2, "2026-11-03": 2}
        scopes = {r.keys[0]: r.requests for r in llmtally.report(ledger=ledger, by=["scope"])}
        assert scopes == {"job": 5, "job > step": 1}
        teams = {r.keys: r.requests for r in llmtally.report(ledger=ledger, by=["tag:team", "model"])}
        assert teams[("search", "gpt-4")] == 1 and teams[("ads", "gpt-4o-mini")] == 1
        assert teams[("(none)", "my-finetune")] == 1

    def test_time_window(self, ledger: str) -> None:
        rows = llmtally.report(ledger=ledger, since="2026-11-02", until="2026-11-03", by=["model"])
        assert sum(r.requests for r in rows) == 2
        assert {r.keys[0] for r in rows} == {"gpt-4", "my-finetune"}
        recent = llmtally.report(ledger=ledger, since=T0 + 2 * DAY - 60, by=["model"])
        assert sum(r.requests for r in recent) == 2

    def test_top(self, ledger: str) -> None:
        assert [r.keys for r in llmtally.report(ledger=ledger, by=["model"], top=1)] == [("gpt-4",)]

    def test_bad_input(self, ledger: str, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="cannot group by 'color'"):
            llmtally.report(ledger=ledger, by=["color"])
        with pytest.raises(ValueError, match="not a time"):
            llmtally.report(ledger=ledger, since="last tuesday")
        with pytest.raises(llmtally.LedgerError, match="no ledger at"):
            llmtally.report(ledger=f"sqlite:///{tmp_path / 'missing.db'}")


class TestCommand:
    """llmtally report prints tables, CSV, JSON and writes charts."""

    def test_table(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", ledger, "--by", "model"]) == 0
        out = capsys.readouterr().out
        total = cost("gpt-4", 3000, 300) + cost("gpt-4o-mini", 5800, 580)
        # Rounded for reading (4 significant digits), and never a complete total when a call has no price.
        assert total == Decimal("0.109218") and "Total" in out and "≥ $0.1092" in out
        assert "1 call has no known price" in out and "1 call carried no usage" in out

    def test_top_keeps_totals(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", ledger, "--top", "1", "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [r["model"] for r in doc["rows"]] == ["gpt-4", "(2 others)"]
        assert doc["totals"]["requests"] == 6

    def test_csv(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert (
            cli_logic(["report", "--ledger", ledger, "--by", "day", "--by", "model", "--format", "csv"]) == 0
        )
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert len(rows) == 6
        first = next(r for r in rows if r["day"] == "2026-11-01" and r["model"] == "gpt-4")
        assert first["prompt_tokens"] == "1000" and Decimal(first["cost"]) == cost("gpt-4", 1000, 100)

    def test_json(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", ledger, "--by", "provider", "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["by"] == ["provider"] and doc["rows"][0]["provider"] == "openai"
        assert Decimal(doc["totals"]["cost"]) == cost("gpt-4", 3000, 300) + cost("gpt-4o-mini", 5800, 580)

    @pytest.mark.parametrize("suffix", [".png", ".html"])
    def test_chart(
        self, ledger: str, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        chart = tmp_path / f"spend{suffix}"
        assert cli_logic(["report", "--ledger", ledger, "--by", "model", "--chart", str(chart)]) == 0
        assert chart.stat().st_size > 5000
        if suffix == ".png":
            import matplotlib.image

            image = matplotlib.image.imread(str(chart))
            assert image.shape[0] >= 400 and image.shape[1] >= 800  # decodes, 10x5 in at 100 dpi
        else:
            text = chart.read_text()
            assert text.startswith("<!doctype html>") and "<svg" in text and "gpt-4" in text

    def test_errors(self, ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", ledger, "--by", "tag:bad key"]) == 2
        assert "bad tag name" in capsys.readouterr().err
        assert cli_logic(["report", "--ledger", ledger, "--chart", "out.pdf"]) == 2
        assert ".png or .html" in capsys.readouterr().err


class TestHourlyRollup:
    """Reports read whole hours from the hourly sums and the edges from the calls: same totals."""

    def test_any_window_matches_the_calls(self, ledger: str) -> None:
        import random

        rng = random.Random(5)
        for _ in range(40):
            a = T0 + rng.uniform(-DAY, 3 * DAY)
            b = a + rng.choice([60.0, 3600.0, rng.uniform(0, 3 * DAY)])
            since = rng.choice([None, a])
            until = rng.choice([None, b])
            inside = [
                c
                for c in CALLS
                if (since is None or c.started_at >= since) and (until is None or c.started_at < until)
            ]
            rows = llmtally.report(ledger=ledger, since=since, until=until, by=["model"])
            assert sum(r.requests for r in rows) == len(inside)
            assert sum((r.cost for r in rows), Decimal(0)) == sum(
                (c.cost or Decimal(0) for c in inside), Decimal(0)
            )
            assert sum(r.prompt_tokens for r in rows) == sum(c.usage.prompt_tokens for c in inside if c.usage)

    def test_rollup_is_kept(self, ledger: str) -> None:
        import sqlite3

        conn = sqlite3.connect(ledger.removeprefix("sqlite:///"))
        n, cost = conn.execute("SELECT SUM(requests), SUM(cost_pico) FROM calls_hourly").fetchone()
        conn.close()
        assert n == len(CALLS)
        assert Decimal(cost) * Decimal("1e-12") == sum((c.cost or Decimal(0) for c in CALLS), Decimal(0))


def test_the_table_shows_a_unit_only_where_some_call_had_it() -> None:
    """Prompt and completion always; web searches, audio and the rest only when not all zero (CSV
    and JSON keep every column)."""
    import io
    from decimal import Decimal

    from llmtally._report import ReportRow
    from llmtally._report.render import render

    plain = ReportRow(
        requests=1, prompt_tokens=10, completion_tokens=5, keys=("gpt-4o",), cost=Decimal("0.1")
    )
    searched = ReportRow(requests=1, prompt_tokens=10, completion_tokens=5, web_searches=3,
                         keys=("claude-sonnet-4-5",), cost=Decimal("0.2"))  # fmt: skip
    for rows, shown in (([plain], False), ([plain, searched], True)):
        out = io.StringIO()
        render(rows, ["model"], "table", out)
        assert ("Searches" in out.getvalue()) is shown and "Audio in" not in out.getvalue()
        out = io.StringIO()
        render(rows, ["model"], "csv", out)
        assert "web_searches" in out.getvalue().splitlines()[0]


class TestCurrencies:
    """A ledger holds calls recorded in several display currencies: a report adds up each apart and
    converts at the rates given, says them, and never adds a cost it cannot convert."""

    @staticmethod
    def mixed(tmp_path: Path) -> tuple[str, list[Call]]:
        calls = [make_call(0, "gpt-4", 1000, 100), make_call(0, "gpt-4o-mini", 5000, 500)]
        eur = [make_call(0, "gpt-4", 2000, 200), make_call(1, "gpt-4o-mini", 800, 80)]
        for c in eur:
            assert c.cost is not None
            c.cost, c.currency = c.cost * Decimal("0.92"), "EUR"
        path = tmp_path / "mixed.db"
        led = SQLiteLedger(str(path))
        led.write([to_row(c) for c in calls + eur])
        led.close()
        return f"sqlite:///{path}", calls + eur

    def test_converted_at_the_rates_given(self, tmp_path: Path) -> None:
        url, calls = self.mixed(tmp_path)
        rows = llmtally.report(ledger=url, by=["model"], currency="USD", rates={"EUR": "1.08"})
        want: dict[str, Decimal] = {}
        for c in calls:
            assert c.cost is not None
            want[c.model or ""] = want.get(c.model or "", Decimal(0)) + (
                c.cost * Decimal("1.08") if c.currency == "EUR" else c.cost
            )
        assert {r.keys[0]: r.cost for r in rows} == want
        assert rows.currency == "USD" and rows.rates == {"EUR": Decimal("1.08")}
        assert all(r.unpriced_requests == 0 and not r.unconverted for r in rows)

    def test_no_rate_is_unpriced_and_kept_apart(self, tmp_path: Path) -> None:
        url, calls = self.mixed(tmp_path)
        rows = {r.keys[0]: r for r in llmtally.report(ledger=url, by=["model"], currency="USD", rates={})}
        gpt4_eur = calls[2].cost
        assert rows["gpt-4"].cost == calls[0].cost and rows["gpt-4"].unconverted == {"EUR": gpt4_eur}
        assert rows["gpt-4"].requests == 2 and rows["gpt-4"].unpriced_requests == 1

    def test_a_report_in_eur(self, tmp_path: Path) -> None:
        url, calls = self.mixed(tmp_path)
        rows = llmtally.report(ledger=url, by=["currency"], currency="EUR", rates="USD=0.92")
        got = {r.keys[0]: r.cost for r in rows}
        usd = sum((c.cost or Decimal(0) for c in calls if c.currency == "USD"), Decimal(0))
        eur = sum((c.cost or Decimal(0) for c in calls if c.currency == "EUR"), Decimal(0))
        assert got == {"USD": usd * Decimal("0.92"), "EUR": eur}

    def test_the_command_says_the_currency_and_rates(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url, _ = self.mixed(tmp_path)
        assert cli_logic(["report", "--ledger", url, "--rates", "EUR=1.08"]) == 0
        out = capsys.readouterr().out
        assert "Cost (USD)" in out and "1 EUR = 1.08 USD" in out and "Not converted" not in out
        assert cli_logic(["report", "--ledger", url]) == 0
        out = capsys.readouterr().out
        assert "Not converted" in out and "No rate to USD for EUR" in out
        from llmtally._runtime import RUNTIME

        monkeypatch.setattr(RUNTIME, "_currency_configured", False)  # a fresh `llmtally` process
        monkeypatch.setenv("LLMTALLY_CURRENCY", "EUR")
        monkeypatch.setenv("LLMTALLY_RATES", "USD=0.92")
        assert cli_logic(["report", "--ledger", url, "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["currency"] == "EUR" and doc["rates"] == {"USD": "0.92"}
        assert doc["totals"]["unconverted"] == {} and doc["totals"]["unpriced_requests"] == 0
        assert cli_logic(["report", "--ledger", url, "--format", "csv", "--currency", "GBP"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert {r["currency"] for r in rows} == {"GBP"} and all("EUR" in r["unconverted"] for r in rows)
        assert cli_logic(["report", "--ledger", url, "--rates", "EUR=-1"]) == 2
        assert "must be a positive number" in capsys.readouterr().err

    def test_the_rollup_keeps_currencies_apart(self, tmp_path: Path) -> None:
        url, calls = self.mixed(tmp_path)
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        got = dict(conn.execute("SELECT currency, SUM(cost_pico) FROM calls_hourly GROUP BY 1").fetchall())
        conn.close()
        for code in ("USD", "EUR"):
            want = sum((c.cost or Decimal(0) for c in calls if c.currency == code), Decimal(0))
            assert Decimal(got[code]) * Decimal("1e-12") == want

    def test_a_schema_6_rollup_is_rebuilt_by_currency(self, tmp_path: Path) -> None:
        from llmtally.ledger._records import NAMES, columns_at
        from llmtally.ledger.sqlite import _MIGRATIONS

        _, calls = self.mixed(tmp_path)
        path = tmp_path / "v6.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
        for version in range(1, 7):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO llmtally_schema VALUES (?, 0)", (version,))
        names = [n for n, _ in columns_at(6)]
        at = [NAMES.index(n) for n in names]
        rows = [tuple(row[i] for i in at) for row in map(to_row, calls)]
        insert = f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        conn.executemany(insert, rows)
        conn.commit()
        conn.close()
        # Read before migrating: no currency in that rollup, so the calls are read instead.
        before = llmtally.report(ledger=f"sqlite:///{path}", by=["model"], currency="USD", rates={})
        SQLiteLedger(str(path)).close()
        after = llmtally.report(ledger=f"sqlite:///{path}", by=["model"], currency="USD", rates={})
        assert [(r.keys, r.cost, r.unconverted, r.requests) for r in before] == [
            (r.keys, r.cost, r.unconverted, r.requests) for r in after
        ]
        conn = sqlite3.connect(path)
        n, eur = conn.execute(
            "SELECT SUM(requests), SUM(cost_pico) FROM calls_hourly WHERE currency = 'EUR'"
        ).fetchone()
        conn.close()
        assert n == 2 and Decimal(eur) * Decimal("1e-12") == sum((c.cost or 0 for c in calls[2:]), Decimal(0))


def test_by_price_source_says_which_prices_were_used(tmp_path: Path) -> None:
    calls = [make_call(0, "gpt-4", 1000, 100), make_call(0, "my-finetune", 10, 1, priced=False)]
    calls[0].price_source = "genai-prices catalogue: openai/gpt-4"
    path = tmp_path / "sources.db"
    led = SQLiteLedger(str(path))
    led.write([to_row(c) for c in calls])
    led.close()
    rows = {r.keys[0]: r for r in llmtally.report(ledger=f"sqlite:///{path}", by=["price_source"])}
    assert set(rows) == {"genai-prices catalogue: openai/gpt-4", "(no price)"}
    assert rows["(no price)"].unpriced_requests == 1 and rows["(no price)"].cost == 0
    assert rows["genai-prices catalogue: openai/gpt-4"].cost == calls[0].cost
