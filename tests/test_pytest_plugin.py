"""The pytest plugin (``llmtally.pytest_plugin``), through ``pytester``: inner test suites drive the real
``openai`` and ``anthropic`` SDKs against ``llmtally.testing``'s fake provider over loopback, in a
pytest subprocess each (metering patches HTTP clients and the ledger is process state: nothing of
the inner run may leak into this one, or the other way).

Expected costs are computed here, independently: gpt-4 by hand ($30 / $60 per million tokens),
Claude with genai-prices' own ``calc_price``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from llmtally.pytest_plugin._spend import Spend, Totals, cost_text, summary

pytest_plugins = ["pytester"]

GPT4_INPUT = Decimal(30) / 1_000_000
GPT4_OUTPUT = Decimal(60) / 1_000_000
CLAUDE = "claude-sonnet-4-20250514"

# Every inner suite gets these fixtures: clients of the real SDKs pointed at the plugin's own
# ``llm_fake`` fixture (so that fixture is exercised by every run). The SDKs are imported when a test
# asks for a client: importing anthropic takes seconds, and a run that needs neither is spared them.
CONFTEST = """
import pytest

CHAT = [{"role": "user", "content": "tell me a joke"}]


@pytest.fixture
def oai(llm_fake):
    import openai

    client = openai.OpenAI(base_url=llm_fake.url + "/v1", api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def ant(llm_fake):
    import anthropic

    client = anthropic.Anthropic(base_url=llm_fake.url, api_key="sk-ant-test", max_retries=0)
    yield client
    client.close()


def chat(client, model="gpt-4"):
    return client.chat.completions.create(model=model, messages=CHAT)
"""


def gpt4(prompt: int, completion: int) -> Decimal:
    return prompt * GPT4_INPUT + completion * GPT4_OUTPUT


def claude(prompt: int, completion: int) -> Decimal:
    usage = genai_prices.Usage(input_tokens=prompt, output_tokens=completion)
    return genai_prices.calc_price(usage, CLAUDE, provider_id="anthropic").total_price


def usd(amount: Decimal) -> str:
    return "$" + format(amount.normalize(), "f")


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.Pytester:
    """A pytester whose runs can never write the user's ledger: no LLMTALLY_LEDGER, and the default
    ledger's data directory in this test's own folder."""
    for name in ("LLMTALLY_LEDGER", "LLMTALLY_CURRENCY", "LLMTALLY_RATES", "LLMTALLY_PRICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    pytester.makeconftest(CONFTEST)
    return pytester


#: Plugins of other packages in this environment that the inner runs do not need (they take seconds to load).
UNRELATED = (
    "-p",
    "no:hypothesispytest",
    "-p",
    "no:langsmith_plugin",
    "-p",
    "no:anyio",
    "-p",
    "no:cacheprovider",
)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*UNRELATED, *args, timeout=240)


def section(result: pytest.RunResult) -> list[str]:
    """The lines of the plugin's summary, between its header and the next one."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if "llmtally: LLM spend per test" in line]
    assert len(starts) == 1, "\n".join(lines)
    start = starts[0] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("=====")), len(lines))
    return lines[start:end]


_ROW = re.compile(r"^\s*(≥ \S+|\S+)\s+([\d,]+)\s+([\d,]+)  (.+?)(?:  \((.*)\))?$")


def table(lines: list[str]) -> dict[str, tuple[str, int, int, str]]:
    """test id -> (cost cell, tokens, requests, notes), from the summary's table."""
    rows: dict[str, tuple[str, int, int, str]] = {}
    assert lines[0].split()[:4] == ["cost", "tokens", "requests", "test"], lines
    for line in lines[1:]:
        if line.startswith(("session:", "no LLM calls", "unpriced:", "estimated:", "calls:")):
            break
        m = _ROW.match(line)
        assert m is not None, line
        rows[m[4]] = (m[1], int(m[2].replace(",", "")), int(m[3].replace(",", "")), m[5] or "")
    return rows


def line_starting(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return found[0]


def ledger_rows(path: Path) -> list[tuple[list[str], str | None, int, int, int]]:
    """(scope path, cost, prompt, completion, pid) of every call in a SQLite ledger."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT scope_path, cost, prompt_tokens, completion_tokens, pid FROM calls"
        ).fetchall()
    return [(json.loads(scope), cost, p, c, pid) for scope, cost, p, c, pid in rows]


SPENDING = """
import asyncio
import threading

import openai
import pytest
from conftest import chat
from llmtally.testing import Reply


def test_one_call(llm_fake, oai):
    llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
    chat(oai)


def test_two_calls(llm_fake, oai):
    llm_fake.add_many(Reply(text="hi", prompt_tokens=11, completion_tokens=13), 2)
    chat(oai)
    chat(oai)


@pytest.mark.asyncio
async def test_async(llm_fake):
    llm_fake.add(Reply(text="hi", prompt_tokens=20, completion_tokens=10))
    async with openai.AsyncOpenAI(base_url=llm_fake.url + "/v1", api_key="sk-test", max_retries=0) as client:
        await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])


def test_anthropic(llm_fake, ant):
    llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
    ant.messages.create(model="CLAUDE", max_tokens=100, messages=[{"role": "user", "content": "x"}])


def test_in_a_thread(llm_fake, oai):
    llm_fake.add(Reply(text="hi", prompt_tokens=5, completion_tokens=5))
    worker = threading.Thread(target=chat, args=(oai,))
    worker.start()
    worker.join()


def test_no_call():
    pass
""".replace("CLAUDE", CLAUDE)

SPENT = {
    "test_spending.py::test_two_calls": (2 * gpt4(11, 13), 48, 2),
    "test_spending.py::test_async": (gpt4(20, 10), 30, 1),
    "test_spending.py::test_one_call": (gpt4(11, 13), 24, 1),
    "test_spending.py::test_in_a_thread": (gpt4(5, 5), 10, 1),
    "test_spending.py::test_anthropic": (claude(11, 13), 24, 1),
}


class TestSummary:
    """``pytest --llmtally`` prints each test's cost, tokens and requests, and the session's."""

    def test_each_test_and_the_session(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        inner.makepyfile(test_spending=SPENDING)
        result = run(inner, "--llmtally", f"--llmtally-ledger=sqlite:///{tmp_path}/ledger.db")
        result.assert_outcomes(passed=6)
        lines = section(result)
        rows = table(lines)
        assert rows == {test: (usd(cost), tokens, n, "") for test, (cost, tokens, n) in SPENT.items()}
        # Costliest first (the five costs differ).
        assert list(rows) == sorted(SPENT, key=lambda t: -SPENT[t][0])
        total = sum(cost for cost, _, _ in SPENT.values())
        assert line_starting(lines, "session:") == (
            f"session: {usd(total)}, 136 tokens (69 prompt, 67 completion), 6 requests in 5 of 6 tests"
        )
        assert "unpriced:" not in "\n".join(lines)

    def test_top_n(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(test_spending=SPENDING)
        result = run(inner, "--llmtally", "--llmtally-top", "2", "--llmtally-ledger=none")
        lines = section(result)
        assert list(table(lines)) == ["test_spending.py::test_two_calls", "test_spending.py::test_async"]
        assert "top 2 of 5" in lines[0]
        assert line_starting(lines, "session:").endswith("6 requests in 5 of 6 tests")  # still every test

    def test_top_must_be_a_count(self, inner: pytest.Pytester) -> None:
        result = run(inner, "--llmtally", "--llmtally-top", "-1")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--llmtally-top wants a number of tests, 0 or more*"])

    def test_unknown_prices_are_unknown_never_zero(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            test_unpriced="""
            from conftest import chat
            from llmtally.testing import Reply

            def test_unpriced(llm_fake, oai):
                llm_fake.add(Reply(text="hi", prompt_tokens=5, completion_tokens=5))
                chat(oai, "no-such-model-x1")

            def test_mixed(llm_fake, oai):
                llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
                llm_fake.add(Reply(text="hi", prompt_tokens=5, completion_tokens=5))
                chat(oai)
                chat(oai, "no-such-model-x2")
            """
        )
        lines = section(run(inner, "--llmtally", "--llmtally-ledger=none"))
        assert table(lines) == {
            "test_unpriced.py::test_mixed": ("≥ $0.00111", 34, 2, "1 unpriced: no-such-model-x2"),
            "test_unpriced.py::test_unpriced": ("unknown", 10, 1, "1 unpriced: no-such-model-x1"),
        }
        assert line_starting(lines, "session:").startswith("session: ≥ $0.00111, 44 tokens")
        assert line_starting(lines, "unpriced:") == (
            "unpriced: 2 requests (no-such-model-x1, no-such-model-x2): price unknown, not in the total"
        )
        assert not any(re.search(r"\$0(?![.\d])", line) for line in lines), lines

    def test_a_session_without_calls(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_a(): pass\n\ndef test_b(): pass\n")
        lines = section(run(inner, "--llmtally", "--llmtally-ledger=none"))
        assert lines[0] == "no LLM calls in 2 tests"

    def test_hostile_names_are_escaped(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        """A test id (pytest left unescaped) and a model name a server sent, both with terminal controls,
        are shown escaped in the summary; the ledger keeps the test id as it is."""
        inner.makeini(
            "[pytest]\ndisable_test_id_escaping_and_forfeit_all_rights_to_community_support = true\n"
        )
        inner.makepyfile(
            test_hostile="""
            import pytest
            from conftest import chat
            from llmtally.testing import Reply

            @pytest.mark.parametrize("x", [1], ids=["\\x1b[2J\\u202eevil"])
            def test_named(llm_fake, oai, x):
                model = "m\\x1b]0;title\\x07"
                llm_fake.add(Reply(text="hi", model=model, prompt_tokens=1, completion_tokens=1))
                chat(oai, model)
            """
        )
        result = run(inner, "--llmtally", f"--llmtally-ledger=sqlite:///{tmp_path}/ledger.db")
        result.assert_outcomes(passed=1)
        text = "\n".join(section(result))
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
        assert "test_hostile.py::test_named[\\x1b[2J\\u202eevil]" in text
        assert "m\\x1b]0;title\\x07" in text
        [(scope, *_)] = ledger_rows(tmp_path / "ledger.db")
        assert scope == ["test_hostile.py::test_named[\x1b[2J\u202eevil]"]


class TestLedger:
    """Every call is recorded in the ledger with the test's id as its scope."""

    def test_rows_under_the_test_id(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        inner.makepyfile(test_spending=SPENDING)
        inner.makepyfile(
            test_nested="""
            import llmtally
            from conftest import chat
            from llmtally.testing import Reply

            def test_inner_scope(llm_fake, oai):
                llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
                with llmtally.track("step"):
                    chat(oai)
            """
        )
        db = tmp_path / "ledger.db"
        result = run(inner, "--llmtally", f"--llmtally-ledger=sqlite:///{db}")
        result.assert_outcomes(passed=7)
        rows = ledger_rows(db)
        by_scope: dict[tuple[str, ...], list[Decimal]] = {}
        for scope, cost, *_ in rows:
            by_scope.setdefault(tuple(scope), []).append(Decimal(cost))
        expected = {(test,): cost for test, (cost, _, _) in SPENT.items()}
        expected[("test_nested.py::test_inner_scope", "step")] = gpt4(11, 13)
        assert {scope: sum(costs) for scope, costs in by_scope.items()} == expected
        assert len(rows) == 7
        calls = line_starting(section(result), "calls:")
        assert calls == (
            f"calls: recorded in the ledger sqlite:///{db}, each under its test's id "
            "(llmtally report --by scope)"
        )

    # The suite below is enough for where calls go (openai only: a shorter run).
    LIGHT = """
    from conftest import chat
    from llmtally.testing import Reply

    def test_one(llm_fake, oai):
        chat(oai)

    def test_two(llm_fake, oai):
        chat(oai)
        chat(oai)
    """

    def test_ledger_from_the_environment(
        self, inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        db = tmp_path / "env.db"
        monkeypatch.setenv("LLMTALLY_LEDGER", f"sqlite:///{db}")
        inner.makepyfile(test_light=self.LIGHT)
        result = run(inner, "--llmtally")
        result.assert_outcomes(passed=2)
        scopes = sorted(scope for scope, *_ in ledger_rows(db))
        assert scopes == [
            ["test_light.py::test_one"],
            ["test_light.py::test_two"],
            ["test_light.py::test_two"],
        ]
        assert f"sqlite:///{db}," in line_starting(section(result), "calls:")

    def test_the_default_ledger(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        """With no ledger named anywhere, as ``llmtally run``: the default SQLite file."""
        inner.makepyfile(test_light=self.LIGHT)
        result = run(inner, "--llmtally")
        result.assert_outcomes(passed=2)
        [db] = (tmp_path / "data").rglob("*.db")
        assert len(ledger_rows(db)) == 3
        assert f"{db}," in line_starting(section(result), "calls:")

    def test_none_records_nothing(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        inner.makepyfile(test_light=self.LIGHT)
        result = run(inner, "--llmtally", "--llmtally-ledger", "none")
        result.assert_outcomes(passed=2)
        lines = section(result)
        assert len(table(lines)) == 2
        assert line_starting(lines, "calls:") == "calls: not recorded in a ledger (the ledger is none)"
        assert not (tmp_path / "data").exists()

    def test_a_bad_ledger_is_a_usage_error(self, inner: pytest.Pytester) -> None:
        inner.makepyfile("def test_a(): pass\n")
        result = run(inner, "--llmtally", "--llmtally-ledger", "mysql://nowhere/x")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*--llmtally:*mysql*"])

    def test_passwords_are_not_shown(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        """A PostgreSQL ledger that cannot be reached: calls wait in the spool; the summary says where,
        without the password."""
        pytest.importorskip("psycopg")
        inner.makepyfile(test_light=self.LIGHT)
        result = run(inner, "--llmtally", "--llmtally-ledger", "postgresql://app:s3cret-pw@127.0.0.1:1/llm")
        result.assert_outcomes(passed=2)
        calls = line_starting(section(result), "calls:")
        assert "postgresql://app:***@127.0.0.1:1/llm" in calls
        assert "s3cret-pw" not in result.stdout.str() + result.stderr.str()


BUDGETS = """
import llmtally
import pytest
from conftest import chat
from llmtally.testing import Reply

JOKE = Reply(text="hi", prompt_tokens=11, completion_tokens=13)  # $0.00111 with gpt-4


@pytest.mark.llm_budget(max_cost="0.001")
def test_caught(llm_fake, oai):
    llm_fake.add_many(JOKE, 2)
    chat(oai)
    try:
        chat(oai)
    except llmtally.BudgetExceeded:
        pass  # the test goes on as if nothing happened: it still fails
    assert len(llm_fake.requests) == 1  # the refused request was never sent


@pytest.mark.llm_budget(max_requests=1)
def test_uncaught(llm_fake, oai):
    llm_fake.add_many(JOKE, 2)
    chat(oai)
    chat(oai)


@pytest.mark.llm_budget(max_cost="0.001")
def test_past_the_limit(llm_fake, oai):
    llm_fake.add(JOKE)
    chat(oai)  # sent under the limit, spends past it


@pytest.mark.llm_budget(max_tokens=100, max_cost="0.01")
def test_within(llm_fake, oai, llm_tally):
    llm_fake.add_many(JOKE, 2)
    chat(oai)
    chat(oai)
    assert llm_tally.total_tokens == 48


def test_own_scope_refusal_is_the_tests_business(llm_fake, oai):
    llm_fake.add_many(JOKE, 2)
    with pytest.raises(llmtally.BudgetExceeded):
        with llmtally.track("mine", max_requests=1):
            chat(oai)
            chat(oai)


@pytest.mark.llm_budget(max_requests=1)
class TestEachHasItsOwn:
    def test_a(self, llm_fake, oai):
        chat(oai)

    def test_b(self, llm_fake, oai):
        chat(oai)
"""


class TestBudgetMarker:
    """``@pytest.mark.llm_budget`` limits the test's scope and fails a test that goes past it."""

    @pytest.mark.parametrize("flag", [(), ("--llmtally", "--llmtally-ledger=none")], ids=["off", "on"])
    def test_outcomes(self, inner: pytest.Pytester, flag: tuple[str, ...]) -> None:
        """With or without --llmtally: a budget is a guard."""
        inner.makepyfile(test_budgets=BUDGETS)
        result = run(inner, "-rA", *flag)
        result.assert_outcomes(passed=4, failed=3)
        out = result.stdout.str()
        result.stdout.fnmatch_lines(
            [
                "FAILED test_budgets.py::test_caught*",
                "FAILED test_budgets.py::test_uncaught*",
                "FAILED test_budgets.py::test_past_the_limit*",
            ],
            consecutive=False,
        )
        assert (
            "llmtally: scope 'test_budgets.py::test_caught' reached its cost limit: $0.00111 of $0.001; the "
            "request was not sent (the test went on after the refusal: its budget is spent)"
        ) in out
        uncaught = "llmtally: scope 'test_budgets.py::test_uncaught' reached its request limit: 1 of 1"
        assert f"BudgetExceeded: {uncaught}" in out
        assert (
            "llmtally: test 'test_budgets.py::test_past_the_limit' went past its cost limit: $0.00111 of "
            "$0.001 (spent: 1 request(s), 24 tokens, $0.00111)"
        ) in out
        for passed in ("test_within", "test_own_scope_refusal_is_the_tests_business", "test_a", "test_b"):
            assert re.search(rf"PASSED test_budgets.py::\S*{passed}", out), passed
        if flag:
            rows = table(section(result))
            assert rows["test_budgets.py::test_caught"][:3] == (
                "$0.00111",
                24,
                1,
            )  # the refused one: not sent
            assert rows["test_budgets.py::test_uncaught"][2] == 1

    def test_fails_once(self, inner: pytest.Pytester) -> None:
        """A refusal the test did not catch is its failure; the teardown does not report it again."""
        inner.makepyfile(test_budgets=BUDGETS)
        result = run(inner, "-k", "uncaught")
        result.assert_outcomes(failed=1)
        assert "error" not in result.parseoutcomes()

    def test_a_fixture_s_refusal_counts(self, inner: pytest.Pytester) -> None:
        """Setup and teardown are the test's too: a refusal caught in a fixture fails the test."""
        inner.makepyfile(
            test_fixture="""
            import llmtally
            import pytest
            from conftest import chat

            @pytest.fixture
            def spent(llm_fake, oai):
                chat(oai)
                yield
                try:
                    chat(oai)
                except llmtally.BudgetExceeded:
                    pass

            @pytest.mark.llm_budget(max_requests=1)
            def test_teardown_refused(spent):
                pass
            """
        )
        result = run(inner)
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(
            ["*ERROR at teardown of test_teardown_refused*", "*reached its request limit*"]
        )

    def test_a_bad_marker_is_the_test_s_error(self, inner: pytest.Pytester) -> None:
        takes = "max_cost, max_tokens, max_requests, preflight"
        bad = {
            'max_cost="lots"': "max_cost must be an amount in USD such as '0.50', not 'lots'",
            "max_tokens=-5": "max_tokens must be a whole number, zero or more, not -5",
            '"0.5"': f"takes keyword arguments only ({takes}), not ('0.5',)",
            "max_money=1": f"unknown argument(s) max_money; it takes {takes}",
            "preflight=True": "give at least one limit: max_cost, max_tokens or max_requests",
        }
        inner.makepyfile(
            "import pytest\n"
            + "".join(
                f"\n@pytest.mark.llm_budget({args})\ndef test_{i}():\n    pass\n"
                for i, args in enumerate(bad)
            )
        )
        result = run(inner)
        result.assert_outcomes(errors=len(bad))
        out = result.stdout.str()
        for i, message in enumerate(bad.values()):
            assert f"ERROR at setup of test_{i} _" in out
            assert f"llm_budget: {message}" in result.outlines


class TestOff:
    """Without --llmtally the plugin changes nothing: no metering, no ledger, the same output."""

    SUITE = """
    import sys

    import llmtally
    import pytest
    from conftest import chat
    from llmtally.testing import FakeProvider, Reply

    @pytest.fixture
    def llm_fake():  # the suite's own: it runs with the plugin disabled too
        fake = FakeProvider()
        with fake.serve():
            yield fake

    def test_calls(llm_fake, oai):
        llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
        assert chat(oai).usage.prompt_tokens == 11

    def test_untouched():
        assert not llmtally.is_instrumented()
        loaded = [m for m in ("llmtally._runtime", "llmtally._capture", "llmtally._limits", "llmtally.ledger")
                  if m in sys.modules]
        assert loaded == []

    def test_fails():
        assert 1 == 2

    @pytest.mark.skip(reason="skipped")
    def test_skipped():
        pass
    """

    def test_nothing_changes(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        inner.makepyfile(test_off=self.SUITE)
        with_plugin = run(inner, "-rA")
        without = run(inner, "-rA", "-p", "no:llmtally")
        for result in (with_plugin, without):
            result.assert_outcomes(passed=2, failed=1, skipped=1)
        assert "llmtally: LLM spend" not in with_plugin.stdout.str()

        def stable(result: pytest.RunResult) -> list[str]:
            """The output but for the duration and the header's list of plugins."""
            return [
                re.sub(r" in [\d.]+s", "", line)
                for line in result.outlines
                if not line.startswith("plugins:")
            ]

        assert stable(with_plugin) == stable(without)
        assert not (tmp_path / "data").exists()

    def test_registered_through_the_entry_point(self, inner: pytest.Pytester) -> None:
        result = run(inner, "--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.llm_budget(max_cost=None, max_tokens=None, *"])
        run(inner, "--help").stdout.fnmatch_lines(
            ["*--llmtally *", "*--llmtally-top=N*", "*--llmtally-ledger=URL*"]
        )
        assert "llm_budget" not in run(inner, "--markers", "-p", "no:llmtally").stdout.str()


class TestFixtures:
    """``llm_tally``: the test's own Tally; ``llm_fake``: the fake provider, started for the test."""

    @pytest.mark.parametrize("flag", [(), ("--llmtally", "--llmtally-ledger=none")], ids=["off", "on"])
    def test_llm_tally(self, inner: pytest.Pytester, flag: tuple[str, ...]) -> None:
        inner.makepyfile(
            test_tally="""
            from decimal import Decimal

            import pytest
            from conftest import chat
            from llmtally.testing import Reply

            def test_first(llm_fake, oai, llm_tally):
                llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
                chat(oai)
                assert llm_tally.name == "test_tally.py::test_first"
                assert (llm_tally.successful_requests, llm_tally.cost) == (1, Decimal("0.00111"))

            def test_second_starts_empty(llm_fake, oai, llm_tally):
                assert llm_tally.successful_requests == 0
                llm_fake.add(Reply(text="hi", prompt_tokens=5, completion_tokens=5))
                chat(oai)
                assert (llm_tally.total_tokens, llm_tally.cost) == (10, Decimal("0.00045"))

            def test_asked_for_late(llm_fake, oai, request):
                tally = request.getfixturevalue("llm_tally")
                chat(oai)
                assert tally.successful_requests == 1

            @pytest.mark.llm_budget(max_requests=3)
            def test_limited(llm_fake, oai, llm_tally):
                chat(oai)
                assert llm_tally.refused is None
            """
        )
        run(inner, *flag).assert_outcomes(passed=4)

    def test_llm_fake(self, inner: pytest.Pytester) -> None:
        inner.makepyfile(
            test_fake="""
            from conftest import chat
            from llmtally.testing import FakeProvider, Reply

            def test_serving(llm_fake, oai):
                assert isinstance(llm_fake, FakeProvider)
                assert llm_fake.url.startswith("http://127.0.0.1:")
                llm_fake.add(Reply(text="scripted"))
                assert chat(oai).choices[0].message.content == "scripted"
                assert llm_fake.requests[0].json["model"] == "gpt-4"

            def test_fresh_for_each_test(llm_fake):
                assert llm_fake.requests == [] and llm_fake.pending == 0
            """
        )
        run(inner).assert_outcomes(passed=2)


XDIST = """
import os

import pytest
from conftest import chat
from llmtally.testing import Reply


@pytest.mark.parametrize("n", range(1, 9))
def test_calls(llm_fake, oai, n):
    llm_fake.add_many(Reply(text="hi", prompt_tokens=11, completion_tokens=13), n)
    for _ in range(n):
        chat(oai)


@pytest.mark.llm_budget(max_requests=1)
def test_budget_in_a_worker(llm_fake, oai):
    llm_fake.add(Reply(text="hi", prompt_tokens=11, completion_tokens=13))
    chat(oai)
    chat(oai)
"""


class TestXdist:
    """Under pytest-xdist the session's summary adds up every worker's tests."""

    def test_workers_are_summed(self, inner: pytest.Pytester, tmp_path: Path) -> None:
        pytest.importorskip("xdist")
        inner.makepyfile(test_spread=XDIST)
        db = tmp_path / "ledger.db"
        result = run(
            inner, "-n", "2", "--llmtally", "--llmtally-top", "0", f"--llmtally-ledger=sqlite:///{db}"
        )
        result.assert_outcomes(passed=8, failed=1)
        lines = section(result)
        rows = table(lines)
        for n in range(1, 9):
            assert rows[f"test_spread.py::test_calls[{n}]"] == (usd(n * gpt4(11, 13)), 24 * n, n, "")
        assert rows["test_spread.py::test_budget_in_a_worker"][2] == 1
        requests = sum(range(1, 9)) + 1
        assert line_starting(lines, "session:") == (
            f"session: {usd(requests * gpt4(11, 13))}, {24 * requests:,} tokens ({11 * requests} prompt, "
            f"{13 * requests} completion), {requests} requests in 9 of 9 tests"
        )
        ledger = ledger_rows(db)
        assert len(ledger) == requests
        assert len({pid for *_, pid in ledger}) == 2  # both workers made calls, and both were counted
        assert line_starting(lines, "calls:").startswith(f"calls: recorded in the ledger sqlite:///{db}")


class TestSpendRecords:
    """The records a worker sends, and how they add up and read."""

    SPEND = Spend("t.py::a", 3, 1, 10, 20, Decimal("0.00111"), 1, ("x-model",), 1)

    def test_round_trip(self) -> None:
        data = json.loads(json.dumps(self.SPEND.to_json()))
        assert Spend.from_json(data) == self.SPEND

    @pytest.mark.parametrize(
        "change", [{"cost": 0.5}, {"requests": -1}, {"requests": True}, {"test": None}, {"cost": "lots"}]
    )
    def test_garbage_is_refused(self, change: dict[str, object]) -> None:
        with pytest.raises((TypeError, ValueError, ArithmeticError)):
            Spend.from_json({**self.SPEND.to_json(), **change})

    def test_a_rerun_adds_up(self) -> None:
        totals = Totals()
        totals.add(self.SPEND)
        totals.add(Spend("t.py::a", 1, 0, 1, 1, Decimal("0.1"), 1, ("y-model",)))
        assert totals.by_test["t.py::a"] == Spend(
            "t.py::a", 4, 1, 11, 21, Decimal("0.10111"), 2, ("x-model", "y-model"), 1
        )
        assert totals.session().cost == Decimal("0.10111")

    def test_cost_text(self) -> None:
        priced = Spend("a", 2, 0, 1, 1, Decimal("0.5"), 0)
        assert cost_text(priced, "USD") == "$0.5"
        assert cost_text(priced, "EUR") == "0.5 EUR"
        assert cost_text(Spend("a", 2, 0, 1, 1, Decimal("0.5"), 1), "USD") == "≥ $0.5"
        assert cost_text(Spend("a", 2, 0, 1, 1, Decimal(0), 2), "USD") == "unknown"
        assert cost_text(Spend("a", 2, 1, 1, 1, Decimal(0), 1), "USD") == "unknown"  # the other one failed
        assert cost_text(Spend("a", 1, 0, 0, 0, Decimal(0), 0), "USD") == "$0"  # a free call is free

    def test_costliest_first(self) -> None:
        totals = Totals()
        for name, cost, tokens in (("c", "0.1", 5), ("a", "0.2", 1), ("b", "0.1", 9), ("d", "0", 0)):
            totals.add(Spend(name, 1, 0, tokens, 0, Decimal(cost), 0))
        assert [s.test for s in totals.costliest(0)] == ["a", "b", "c", "d"]
        assert [s.test for s in totals.costliest(2)] == ["a", "b"]

    def test_summary_escapes(self) -> None:
        totals = Totals()
        totals.add(Spend("t.py::x[\x1b[2J]", 1, 0, 1, 1, Decimal(0), 1, ("\u202emodel",)))
        text = "\n".join(summary(totals, top=10, tests_run=1, currency="USD", where=["here\x07"]))
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
        assert "t.py::x[\\x1b[2J]" in text and "\\u202emodel" in text and "calls: here\\x07" in text
