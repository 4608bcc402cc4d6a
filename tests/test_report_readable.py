"""A report a person reads (issue 11, parts 3 and 4), through the real CLI: no unknown cost shown as
a number, the table fits the terminal with colour only there, latency percentiles by group (SQLite's
from the rollup's histogram, PostgreSQL's exact), the schema 10 migration, the chart's --top, and
``llmtally cost`` finding the provider a live call would reach."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from _postgres import PostgresServer, postgres_fixture
from _tty import on_a_terminal as terminal
from test_report import DAY, T0, make_call

import llmtally
from llmtally._core.usage import Call
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger._read import LATENCY_PRECISION
from llmtally.ledger._records import SCHEMA_VERSION
from llmtally.ledger.sqlite import SQLiteLedger

postgres = postgres_fixture()
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG = "a-model-name-long-enough-to-be-cut-on-a-narrow-terminal-" + "x" * 40


def write(path: Path, calls: Sequence[Call]) -> str:
    led = SQLiteLedger(str(path))
    try:
        led.write([to_row(c) for c in calls])
    finally:
        led.close()
    return f"sqlite:///{path}"


def wide_calls() -> list[Call]:
    """Calls with every usual column non-zero, a long model name, a group with no price and one in part."""
    calls = []
    for i, model in enumerate(["gpt-4o", "gpt-4o-mini", LONG, "claude-sonnet-4-5"]):
        for j in range(3):
            c = make_call(j % 2, model, 120_000 + i, 9_000 + j, priced=model != LONG)
            assert c.usage is not None
            c.usage.cached_tokens, c.usage.cache_write_tokens, c.usage.reasoning_tokens = 50_000, 7_000, 300
            c.latency = 0.2 + 0.1 * i + j
            calls.append(c)
    partial = make_call(0, "gpt-4o", 10, 1, priced=False)  # gpt-4o: two priced calls and one unknown
    calls.append(partial)
    calls.append(make_call(1, "gpt-4o", 0, 0, ok=False))
    return calls


@pytest.fixture
def wide(tmp_path: Path) -> str:
    return write(tmp_path / "wide.db", wide_calls())


def on_a_terminal(args: list[str], columns: int, **env: str) -> str:
    """``python -m llmtally ARGS`` with its stdout on a pseudo-terminal COLUMNS wide: what it wrote."""
    return terminal(args, columns, **env).decode("utf-8").replace("\r\n", "\n")


def table_lines(text: str) -> list[str]:
    return [line for line in ANSI.sub("", text).splitlines() if line[:1] in "┏┃┡│├└"]


class TestTerminal:
    """On a terminal the table fits its width, rows never wrap, and it is in colour; piped, plain."""

    @pytest.mark.parametrize("columns", [80, 120])
    def test_no_row_wraps(self, wide: str, columns: int) -> None:
        from rich.cells import cell_len

        text = on_a_terminal(["report", "--ledger", wide, "--by", "model"], columns)
        lines = table_lines(text)
        assert lines and all(cell_len(line) <= columns for line in lines), [cell_len(x) for x in lines]
        # One line per group and one for the total: a row folded over two lines would add lines.
        rows = [line for line in lines if line.startswith("│")]
        assert len(rows) == 4 + 1, rows
        assert any("Total" in r for r in rows)
        # The most wanted columns stay; what does not fit is said.
        header = next(line for line in lines if line.startswith("┃"))
        assert "Cost" in header
        if columns == 80:
            assert "Too narrow for" in ANSI.sub("", text)

    def test_the_non_zero_kinds_and_cache_write_are_shown(self, wide: str) -> None:
        text = on_a_terminal(["report", "--ledger", wide, "--by", "model"], 250)
        header = next(line for line in table_lines(text) if line.startswith("┃"))
        for label in ("Requests", "Prompt", "Completion", "Cached", "Cache write", "Reasoning", "p50", "p95"):
            assert label in header, label
        assert "Audio in" not in header and "Searches" not in header

    def test_colour_on_a_terminal_only(self, wide: str) -> None:
        args = ["report", "--ledger", wide, "--by", "model"]
        assert ANSI.search(on_a_terminal(args, 120))
        assert not ANSI.search(on_a_terminal(args, 120, NO_COLOR="1"))
        piped = subprocess.run(
            [sys.executable, "-m", "llmtally", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "TERM": "xterm-256color"},
            check=True,
        ).stdout
        assert "Total" in piped and "\x1b" not in piped
        # Piped, nothing is cut: the long name is whole, on one line.
        assert LONG in piped

    def test_money_rounded_for_reading(self, tmp_path: Path) -> None:
        calls = [make_call(0, "gpt-4o", 123_456_789, 98_765_432) for _ in range(3)]
        url = write(tmp_path / "big.db", calls)
        text = ANSI.sub("", on_a_terminal(["report", "--ledger", url], 120))
        exact = sum((c.cost or Decimal(0) for c in calls), Decimal(0))
        assert exact.as_tuple().exponent < -2  # more than cents: the table rounds it
        assert f"${exact.quantize(Decimal('0.01')):,}" in text and str(exact) not in text
        assert cli_logic(["report", "--ledger", url, "--format", "json"]) == 0


class TestUnknownCosts:
    """A group whose calls have no price shows no cost; a group priced in part shows "≥ known"."""

    def test_table(self, wide: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", wide, "--by", "model"]) == 0
        out = capsys.readouterr().out
        row = next(line for line in out.splitlines() if LONG in line)
        cells = [c.strip() for c in row.split("│")[1:-1]]
        header = next(line for line in out.splitlines() if "Cost" in line)
        names = [c.strip() for c in header.split("┃")[1:-1]]
        assert cells[names.index("Cost (USD)")] == "" and cells[names.index("Unpriced")] == "3"
        assert not any("$" in c for c in cells)
        partial = next(line for line in out.splitlines() if line.startswith("│ gpt-4o "))
        assert "≥ $" in partial
        total = next(line for line in out.splitlines() if "Total" in line)
        assert "≥ $" in total

    def test_csv(self, wide: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", wide, "--by", "model", "--format", "csv"]) == 0
        rows = {r["model"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
        assert rows[LONG]["cost"] == "" and rows[LONG]["unpriced_requests"] == "3"
        assert Decimal(rows["gpt-4o"]["cost"]) > 0 and rows["gpt-4o"]["unpriced_requests"] == "1"

    def test_json(self, wide: str, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["report", "--ledger", wide, "--by", "model", "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        rows = {r["model"]: r for r in doc["rows"]}
        assert rows[LONG]["cost"] is None and rows[LONG]["unpriced_requests"] == 3
        assert rows["gpt-4o"]["cost_is_partial"] is True and Decimal(rows["gpt-4o"]["cost"]) > 0
        assert rows["gpt-4o-mini"]["cost_is_partial"] is False
        assert doc["totals"]["cost_is_partial"] is True

    def test_the_python_api(self, wide: str) -> None:
        rows = {r.keys[0]: r for r in llmtally.report(ledger=wide, by=["model"])}
        assert rows[LONG].known_cost is None and rows[LONG].unpriced_requests == 3
        assert rows["gpt-4o"].cost_is_partial and rows["gpt-4o"].known_cost == rows["gpt-4o"].cost


class TestCostOf:
    """A model name alone is priced as a live call to it is: by the provider it comes from."""

    def test_cost_command_infers_the_provider(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["cost", "text-embedding-3-small", "--input", "1000000"]) == 0
        assert capsys.readouterr().out.strip() == "$0.02"
        with_provider = llmtally.cost_of(
            "text-embedding-3-small", provider="openai", input_tokens=1000, output_tokens=0
        )
        assert llmtally.cost_of("text-embedding-3-small", input_tokens=1000, output_tokens=0) == with_provider

    def test_the_home_provider_wins(self) -> None:
        from llmtally._pricing import resolve

        found = resolve("text-embedding-3-large")
        assert found is not None and found.provider_id == "openai"  # not Azure, which resells it


def latency_calls(n: int, seed: int = 3) -> list[Call]:
    """n calls over three days, two models, latencies spread from under a millisecond to minutes."""
    rng = random.Random(seed)
    calls = []
    for i in range(n):
        c = make_call(0, ("gpt-4o", "gpt-4o-mini")[i % 2], 100, 10)
        c.started_at = T0 + rng.uniform(0, 3 * DAY)
        c.latency = rng.choice(
            [rng.lognormvariate(-0.5, 1.2), rng.uniform(0.0001, 0.002), rng.uniform(30, 200)]
        )
        calls.append(c)
    return calls


def exact(calls: Sequence[Call], q: float) -> float:
    """The nearest-rank percentile of the calls' latency in ms, as the ledger stores it."""
    values = sorted(round(c.latency * 1000, 3) for c in calls)
    return values[max(1, math.ceil(q * len(values))) - 1]


def check_latency(
    url: str, calls: Sequence[Call], since: float | None, until: float | None, tol: float
) -> None:
    inside = [
        c
        for c in calls
        if (since is None or c.started_at >= since) and (until is None or c.started_at < until)
    ]
    rows = llmtally.report(ledger=url, by=["model"], since=since, until=until)
    assert rows
    for row in rows:
        group = [c for c in inside if c.model == row.keys[0]]
        for q, got in ((0.5, row.latency_p50_ms), (0.95, row.latency_p95_ms)):
            want = exact(group, q)
            assert got is not None and abs(got - want) <= tol * want + 1e-9, (row.keys, q, got, want)
    for q, got in zip((0.5, 0.95), rows.latency, strict=True):
        want = exact(inside, q)
        assert got is not None and abs(got - want) <= tol * want + 1e-9, (q, got, want)


class TestLatency:
    """p50/p95 by group equal the exact percentiles of the calls, within the histogram's precision."""

    def test_sqlite(self, tmp_path: Path) -> None:
        calls = latency_calls(3000)
        url = write(tmp_path / "lat.db", calls)
        rows = llmtally.report(ledger=url)
        assert rows.latency_exact is False
        # Whole hours from the rollup; windows with partial hours read their edges from the calls.
        for since, until in ((None, None), (T0 + 1234.5, T0 + 2 * DAY - 77.0), (T0 + 100, T0 + 900)):
            check_latency(url, calls, since, until, LATENCY_PRECISION)
        # By a group the rollup does not keep: every call read.
        by_source = llmtally.report(ledger=url, by=["price_source"])
        assert by_source[0].latency_p50_ms is not None

    def test_the_table_says_it_is_approximate(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = write(tmp_path / "lat.db", latency_calls(50))
        assert cli_logic(["report", "--ledger", url]) == 0
        out = capsys.readouterr().out
        assert "≈p50" in out and "approximate" in out
        assert cli_logic(["report", "--ledger", url, "--format", "csv"]) == 0
        row = next(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert float(row["latency_p50_ms"]) > 0

    def test_postgres(self, postgres: PostgresServer) -> None:
        from llmtally.ledger.postgres import PostgresLedger

        url = postgres.new_database("lat")
        calls = latency_calls(600)
        led = PostgresLedger(url)
        try:
            led.write([to_row(c) for c in calls])
        finally:
            led.close()
        assert llmtally.report(ledger=url).latency_exact is True
        for since, until in ((None, None), (T0 + 1234.5, T0 + 2 * DAY - 77.0)):
            check_latency(url, calls, since, until, 0.0)  # exact: computed by the server


class TestSchema10:
    """A ledger of schema 8 or 9 migrates to 10 (and on) keeping its data; the latency of its calls is
    filled in."""

    @pytest.mark.parametrize("old", [8, 9])
    def test_migration_keeps_the_data(self, tmp_path: Path, old: int) -> None:
        from llmtally.ledger._records import NAMES, SUMS, columns_at, sums_at
        from llmtally.ledger.sqlite import _MIGRATIONS, ROLLUP_KEYS, rollup

        assert SCHEMA_VERSION >= 10
        calls = latency_calls(400)
        pruned = make_call(-30, "gpt-4", 1000, 100)  # an hour whose calls were pruned: only its totals
        path = tmp_path / f"v{old}.db"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE llmtally_schema (version INTEGER NOT NULL, applied_at REAL NOT NULL)")
        for version in range(1, old + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute("INSERT INTO llmtally_schema VALUES (?, 0)", (version,))
        names = [n for n, _ in columns_at(old)]
        at = [NAMES.index(n) for n in names]
        full = [to_row(c) for c in calls]
        conn.executemany(
            f"INSERT INTO calls ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            [tuple(row[i] for i in at) for row in full],
        )
        keys, sums = ROLLUP_KEYS, sums_at(old)
        assert sums == SUMS
        width = len(keys) + len(sums)
        conn.executemany(
            f"INSERT INTO calls_hourly ({', '.join((*keys, *sums))}) VALUES ({', '.join('?' * width)})",
            [r[:width] for r in rollup([*full, to_row(pruned)])],  # without the histogram (schema 10's)
        )
        conn.commit()
        conn.close()
        url = f"sqlite:///{path}"
        before = llmtally.report(ledger=url, by=["model"], currency="USD", rates={})
        SQLiteLedger(str(path)).close()  # opened to write: migrated
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT MAX(version) FROM llmtally_schema").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == len(calls)
        assert conn.execute("SELECT SUM(latency_40) FROM calls_hourly").fetchone()[0] is not None
        conn.close()
        after = llmtally.report(ledger=url, by=["model"], currency="USD", rates={})
        shape = [(r.keys, r.cost, r.requests, r.prompt_tokens) for r in before]
        assert shape == [(r.keys, r.cost, r.requests, r.prompt_tokens) for r in after]
        assert ("gpt-4",) in [r.keys for r in after]  # the pruned hour's totals are kept
        # The histogram filled from the calls gives what the calls give.
        window = (T0, T0 + 3 * DAY)
        check_latency(url, calls, *window, LATENCY_PRECISION)
        # And the writer keeps it from then on.
        more = latency_calls(200, seed=9)
        write(path, more)
        check_latency(url, [*calls, *more], *window, LATENCY_PRECISION)


class TestChart:
    """The chart honours --top and its legend is beside the plot, not over the bars."""

    def test_top_and_legend(self, wide: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        chart = tmp_path / "spend.html"
        assert cli_logic(["report", "--ledger", wide, "--top", "1", "--chart", str(chart)]) == 0
        svg = chart.read_text()
        assert "(3 others)" in svg and "gpt-4o-mini" not in svg
        assert "no known price" in svg

    def test_the_legend_is_outside_the_axes(
        self, wide: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import matplotlib.figure

        from llmtally._report.render import write_chart

        boxes = []
        real = matplotlib.figure.Figure.savefig

        def savefig(fig: matplotlib.figure.Figure, *args: object, **kwargs: object) -> None:
            renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
            ax = fig.axes[0]
            legend = ax.get_legend()
            assert legend is not None
            boxes.append((ax.get_window_extent(renderer), legend.get_window_extent(renderer)))
            real(fig, *args, **kwargs)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
        write_chart(str(tmp_path / "c.png"), ledger=wide, since=None, until=None, stack_by="model")
        ((axes, legend),) = boxes
        assert legend.x0 >= axes.x1  # beside the plot: it hides no bar
