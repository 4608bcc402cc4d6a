"""Reports are safe from what the server sent: hostile model, scope, tag, provider and price_source
values in the ledger are plain text in every format, and no report crashes on them."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from _tty import on_a_terminal

import llmtally
from llmtally._core.usage import Call, Usage
from llmtally.cli import cli_logic
from llmtally.ledger import to_row
from llmtally.ledger.sqlite import SQLiteLedger
from llmtally.testing import FakeProvider, Reply

#: Names a server (or the code that tags calls) can put in the ledger.
HOSTILE = [
    "[/x] closing tag",
    "[bold red]loud[/bold red]",
    "[link=https://evil.example]click[/link]",
    "\x1b[2Jclear screen",
    "\x1b]0;pwned\x07title",
    "\x1b]8;;https://evil.example\x1b\\hyperlink\x1b]8;;\x1b\\",
    "\x9b31mC1 CSI",
    "\x9d0;pwned\x9cC1 OSC",
    "ok\rspoofed",
    "abc\x08\x08\x08xyz",
    "\u202egnp.exe",
    "\x00nul",
    '=HYPERLINK("http://evil.example","x")',
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "<script>alert(1)</script>",
    "$\\frac{1}{0}$ mathtext",
    "$x^$ broken mathtext",
    "one $ dollar",
    "_hidden from the legend",
    ":smile: emoji",
]
#: What must never reach a terminal from a name: ESC, BEL, the C1 controls (as characters and as
#: the bytes a terminal in an 8-bit mode reads), CR, backspace, NUL and the bidi override.
RAW = re.compile("[\x00\x07\x08\x0d\x1b\x80-\x9f\u202e]")
FORMULA = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?$")

PRICE = Decimal("0.001")


def hostile_call(i: int, model: str) -> Call:
    call = Call("openai", "chat.completions", model)
    call.started_at = time.time() - 3600 * (i % 3)
    call.latency = 0.1
    call.usage = Usage(100 + i, 10)
    call.cost = PRICE * (i + 1)
    call.scope_path = ("job", model)
    call.tags = {"team": model}
    call.price_source = model
    return call


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    """Every hostile name as a model, a scope, a tag, a provider and a price_source."""
    path = tmp_path / "ledger.db"
    led = SQLiteLedger(str(path))
    calls = [hostile_call(i, name) for i, name in enumerate(HOSTILE)]
    calls[0].provider = "[/provider]"
    calls[1].provider = "\x1b]0;provider\x07"
    led.write([to_row(c) for c in calls])
    led.close()
    return f"sqlite:///{path}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A ledger written through the real path: the openai SDK, a server answering with hostile
    ``model`` values, llmtally recording into SQLite."""
    names = iter(HOSTILE)
    fake = FakeProvider(
        handler=lambda req: Reply(prompt_tokens=1000, completion_tokens=200, model=next(names))
    )
    url = f"sqlite:///{tmp_path / 'served.db'}"
    llmtally.configure(ledger=url)
    try:
        with fake.serve() as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
            for name in HOSTILE:
                with llmtally.track(name, tags={"team": name}):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
        assert llmtally.flush()
    finally:
        llmtally.configure(ledger="none")
    yield url


GROUPS = ["model", "provider", "scope", "tag:team", "price_source"]


def test_the_server_names_reach_the_ledger(served: str) -> None:
    """The real path records what the server said: the names the other tests use are there."""
    rows = llmtally.report(ledger=served, by=["model"])
    assert {r.keys[0] for r in rows} >= {
        "[/x] closing tag",
        "\x1b]0;pwned\x07title",
        '=HYPERLINK("http://evil.example","x")',
    }


@pytest.mark.parametrize("fixture", ["ledger", "served"])
@pytest.mark.parametrize("by", GROUPS)
def test_every_format_succeeds(
    fixture: str, by: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    url = request.getfixturevalue(fixture)
    for fmt in ("table", "csv", "json"):
        assert cli_logic(["report", "--ledger", url, "--by", by, "--format", fmt]) == 0, fmt
        out, err = capsys.readouterr()
        assert out and "Traceback" not in err


@pytest.mark.parametrize("by", GROUPS)
def test_the_table_is_plain_text(ledger: str, by: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Markup in a name is shown as written, and no control character reaches the output."""
    assert cli_logic(["report", "--ledger", ledger, "--by", by]) == 0
    out = capsys.readouterr().out
    assert not RAW.search(out), RAW.findall(out)
    # The first column's text, line after line: a long name is folded over several lines of its cell.
    flat = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    if by == "provider":
        assert "[/provider]" in flat and "\\x1b]0;provider\\x07" in flat
    else:
        for shown in (
            "[/x] closing tag",
            "[bold red]loud[/bold red]",
            "[link=https://evil.example]click[/link]",
        ):
            assert shown.replace(" ", "") in flat.replace(" ", "")
        assert "\\x1b]0;pwned\\x07title" in flat  # escaped so that a person sees what was there
        assert "\\u202egnp.exe" in flat
        assert ":smile:" in flat


def run_on_a_terminal(args: list[str]) -> bytes:
    """``python -m llmtally ARGS`` with its stdout on a pseudo-terminal; everything it wrote."""
    return on_a_terminal(args, 200)


@pytest.mark.parametrize("by", ["model", "tag:team"])
def test_a_terminal_gets_no_control_sequence(ledger: str, by: str) -> None:
    out = run_on_a_terminal(["report", "--ledger", ledger, "--by", by])
    text = out.decode("utf-8")
    assert "closing tag" in text and "pwned" in text
    # rich may style the table itself with SGR sequences (ESC [ ... m) on a terminal; nothing else.
    leftover = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert not RAW.search(leftover.replace("\r\n", "\n")), sorted(set(RAW.findall(leftover)))
    assert b"\x1b]" not in out and b"\x1b[2J" not in out and b"\x07" not in out


def test_a_terminal_gets_no_control_sequence_from_csv(ledger: str) -> None:
    out = run_on_a_terminal(["report", "--ledger", ledger, "--by", "model", "--format", "csv"])
    assert b"\x1b" not in out and b"\x07" not in out and b"\xc2\x9b" not in out


@pytest.mark.parametrize("by", GROUPS)
def test_csv_has_no_formula(ledger: str, by: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_logic(["report", "--ledger", ledger, "--by", by, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) > 2
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA) or NUMBER.match(cell), cell
    if by in ("model", "tag:team", "price_source"):
        firsts = {row[0] for row in rows[1:]}
        # Neutralised the OWASP way: the name is still there, behind a quote.
        assert '\'=HYPERLINK("http://evil.example","x")' in firsts
        assert "'-2+3+cmd|' /C calc'!A0" in firsts


def test_csv_keeps_numbers_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tag whose value is a negative number is a number, not a formula: written as it is."""
    path = tmp_path / "n.db"
    led = SQLiteLedger(str(path))
    led.write([to_row(hostile_call(0, "-5")), to_row(hostile_call(1, "=5"))])
    led.close()
    assert cli_logic(["report", "--ledger", f"sqlite:///{path}", "--by", "model", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["model"] for r in rows} == {"-5", "'=5"}
    assert all(int(r["requests"]) == 1 and Decimal(r["cost"]) > 0 for r in rows)


@pytest.mark.parametrize("by", GROUPS)
def test_json_keeps_the_values_exact(ledger: str, by: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_logic(["report", "--ledger", ledger, "--by", by, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert not RAW.search(out)  # JSON escapes them: \u001b
    doc = json.loads(out)
    keys = {row[by] for row in doc["rows"]}
    if by == "model":
        assert keys == set(HOSTILE)
    if by == "scope":
        assert keys == {f"job > {name}" for name in HOSTILE}


@pytest.mark.parametrize("by", GROUPS)
def test_the_html_chart_escapes_everything(ledger: str, by: str, tmp_path: Path) -> None:
    chart = tmp_path / "spend.html"
    assert cli_logic(["report", "--ledger", ledger, "--by", by, "--chart", str(chart)]) == 0
    page = chart.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert not re.search(r"<a[\s>]|href=\"(?!#)", page)  # matplotlib links its own glyphs: href="#..."
    assert not RAW.search(page)
    assert page.count("<title>") == 1


@pytest.mark.parametrize("by", ["model", "tag:team", "price_source"])
def test_the_png_chart_labels_are_literal(ledger: str, by: str, tmp_path: Path) -> None:
    """A ``$`` in a name is a dollar, not mathtext, and a name starting with ``_`` keeps its legend."""
    import matplotlib.pyplot as plt

    chart = tmp_path / "spend.png"
    before = set(plt.get_fignums())
    assert cli_logic(["report", "--ledger", ledger, "--by", by, "--chart", str(chart)]) == 0
    assert chart.read_bytes().startswith(b"\x89PNG") and set(plt.get_fignums()) == before


def test_the_chart_legend_is_the_names_as_written(ledger: str, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    shown: list[str] = []
    kept = plt.close

    def keep_legend(fig: Figure) -> None:
        for ax in fig.axes:
            legend = ax.get_legend()
            assert legend is not None
            for t in legend.get_texts():
                assert not t.get_parse_math() or "$" not in t.get_text()
                shown.append(t.get_text())
        kept(fig)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt, "close", keep_legend)
        assert (
            cli_logic(["report", "--ledger", ledger, "--by", "model", "--chart", str(tmp_path / "c.png")])
            == 0
        )
    assert len(shown) == len(HOSTILE)
    assert "$\\frac{1}{0}$ mathtext" in shown and "_hidden from the legend" in shown
    assert "\\x1b[2Jclear screen" in shown and "[/x] closing tag" in shown


@pytest.mark.parametrize("scope", ["5", '{"a": 1}', "[1, null]", "not json"])
def test_a_scope_not_written_by_llmtally(ledger: str, scope: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger edited by hand (a scope that is not a JSON list of names) still reports."""
    import sqlite3

    conn = sqlite3.connect(ledger.removeprefix("sqlite:///"))
    with conn:
        conn.execute("UPDATE calls SET scope_path = ?", (scope,))
        conn.execute("UPDATE calls_hourly SET scope_path = ?", (scope,))
    conn.close()
    for fmt in ("table", "csv", "json"):
        assert cli_logic(["report", "--ledger", ledger, "--by", "scope", "--format", fmt]) == 0, fmt
    assert "24" in capsys.readouterr().out


def test_printable() -> None:
    from llmtally._core.text import printable

    assert printable("gpt-4o [mini] $1 é 模型") == "gpt-4o [mini] $1 é 模型"
    assert printable("\x1b]0;t\x07\x9b\r\u202e\u200b\U000e0041\ud800\xa0") == (
        "\\x1b]0;t\\x07\\x9b\\x0d\\u202e\\u200b\\U000e0041\\ud800\\xa0"
    )


def test_the_summary_and_budget_list_escape_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """print(tally) names unpriced models as servers sent them; `budget list` names budgets."""
    hostile = "evil\x1b]0;pwned\x07\x1b[2J"
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=3, completion_tokens=2, model=hostile))
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            client.chat.completions.create(model="my-model", messages=[{"role": "user", "content": "hi"}])
    summary = str(t)
    assert "\x1b" not in summary and "\x07" not in summary and "evil\\x1b]0;pwned" in summary
    ledger = f"sqlite:///{tmp_path / 'b.db'}"
    assert cli_logic(["budget", "set", hostile, "--max-cost", "1", "--ledger", ledger]) == 0
    assert cli_logic(["budget", "list", "--ledger", ledger]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b" in out
