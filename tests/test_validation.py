"""Every limit and budget argument is checked when it is given, in Python and on the command line:
a bad value raises (or prints one line and exits non-zero) naming the argument and the value;
numeric strings, as read from environment variables, are limits like numbers; nothing fails open."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx2
import openai
import pytest

import llmtally
from llmtally.cli import cli_logic
from llmtally.testing import FakeProvider, Reply

CALL = Decimal("0.00111")  # gpt-4, 11 prompt + 13 completion tokens


def joke() -> Reply:
    return Reply(text="ha", prompt_tokens=11, completion_tokens=13, model="gpt-4")


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider(handler=lambda req: joke())


@pytest.fixture
def client(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=fake.httpx2_transport()),
    )


def ask(client: openai.OpenAI, **kw: object) -> None:
    client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": "Tell me a joke"}], **kw
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


class TestTrackArguments:
    @pytest.mark.parametrize(
        ("kwargs", "error", "named"),
        [
            ({"max_cost": "abc"}, ValueError, "max_cost must be an amount in USD such as '0.50', not 'abc'"),
            (
                {"max_cost": "-0.5"},
                ValueError,
                "max_cost must be a finite amount of USD, zero or more, not '-0.5'",
            ),
            ({"max_cost": -1}, ValueError, "max_cost must be a finite amount of USD, zero or more, not -1"),
            (
                {"max_cost": float("inf")},
                ValueError,
                "max_cost must be a finite amount of USD, zero or more, not inf",
            ),
            (
                {"max_cost": "NaN"},
                ValueError,
                "max_cost must be a finite amount of USD, zero or more, not 'NaN'",
            ),
            (
                {"max_cost": True},
                TypeError,
                "max_cost must be an amount in USD such as '0.50', not True (bool)",
            ),
            (
                {"max_cost": [1]},
                TypeError,
                "max_cost must be an amount in USD such as '0.50', not [1] (list)",
            ),
            ({"max_tokens": "abc"}, ValueError, "max_tokens must be a whole number such as 100, not 'abc'"),
            ({"max_tokens": -1}, ValueError, "max_tokens must be a whole number, zero or more, not -1"),
            ({"max_tokens": "-5"}, ValueError, "max_tokens must be a whole number, zero or more, not '-5'"),
            ({"max_tokens": 1.5}, ValueError, "max_tokens must be a whole number, zero or more, not 1.5"),
            ({"max_tokens": "1.5"}, ValueError, "max_tokens must be a whole number, zero or more, not '1.5'"),
            (
                {"max_tokens": float("nan")},
                ValueError,
                "max_tokens must be a whole number, zero or more, not nan",
            ),
            ({"max_tokens": "inf"}, ValueError, "max_tokens must be a whole number, zero or more, not 'inf'"),
            (
                {"max_tokens": [100]},
                TypeError,
                "max_tokens must be a whole number such as 100, not [100] (list)",
            ),
            (
                {"max_requests": True},
                TypeError,
                "max_requests must be a whole number such as 100, not True (bool)",
            ),
            ({"max_requests": ""}, ValueError, "max_requests must be a whole number such as 100, not ''"),
            ({"max_requests": -3}, ValueError, "max_requests must be a whole number, zero or more, not -3"),
            (
                {"max_cost": 1, "on_exceed": "ignore"},
                ValueError,
                "on_exceed must be 'raise' or 'warn', not 'ignore'",
            ),
            (
                {"max_cost": 1, "on_exceed": None},
                TypeError,
                "on_exceed must be 'raise' or 'warn', not None (NoneType)",
            ),
            (
                {"max_cost": 1, "preflight": "yes"},
                TypeError,
                "preflight must be True or False, not 'yes' (str)",
            ),
            ({"preflight": 1}, TypeError, "preflight must be True or False, not 1 (int)"),
        ],
    )
    def test_a_bad_value_is_refused_when_the_scope_is_made(
        self, kwargs: dict[str, object], error: type[Exception], named: str
    ) -> None:
        with pytest.raises(error) as info:
            llmtally.track("agent", **kwargs)  # type: ignore[call-overload]
        assert str(info.value) == named

    @pytest.mark.parametrize(
        ("kwargs", "parsed"),
        [
            ({"max_tokens": "100"}, {"max_tokens": 100}),
            ({"max_tokens": " 100\n"}, {"max_tokens": 100}),
            ({"max_requests": "3"}, {"max_requests": 3}),
            ({"max_requests": 3.0}, {"max_requests": 3}),
            ({"max_tokens": "1e6"}, {"max_tokens": 1_000_000}),
            ({"max_tokens": Decimal("20")}, {"max_tokens": 20}),
            ({"max_cost": "0.50"}, {"max_cost": Decimal("0.50")}),
            ({"max_cost": 2}, {"max_cost": Decimal(2)}),
            ({"max_tokens": "0"}, {"max_tokens": 0}),
        ],
    )
    def test_numeric_strings_and_whole_numbers_are_accepted(
        self, kwargs: dict[str, object], parsed: dict[str, object]
    ) -> None:
        t = llmtally.track(**kwargs)  # type: ignore[call-overload]
        assert t._limits is not None
        for name, value in parsed.items():
            got = getattr(t._limits, name)
            assert got == value and type(got) is type(value)

    def test_limits_from_environment_variables_are_enforced(
        self, fake: FakeProvider, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AGENT_MAX_TOKENS", "24")
        monkeypatch.setenv("AGENT_MAX_REQUESTS", "3")
        monkeypatch.setenv("AGENT_MAX_COST", "0.00222")
        with llmtally.track("tokens", max_tokens=os.environ["AGENT_MAX_TOKENS"]) as t:
            ask(client)  # 24 tokens: the limit is reached
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert info.value.limit == "tokens" and info.value.allowed == 24 and t.successful_requests == 1
        with llmtally.track("requests", max_requests=os.environ["AGENT_MAX_REQUESTS"]) as t:
            for _ in range(3):
                ask(client)
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert info.value.limit == "requests" and t.successful_requests == 3
        with llmtally.track("cost", max_cost=os.environ["AGENT_MAX_COST"]) as t:
            ask(client)
            ask(client)
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert info.value.limit == "cost" and t.cost == CALL * 2
        assert len(fake.requests) == 1 + 3 + 2

    def test_the_real_openai_sdk_over_http_is_refused_by_a_string_limit(self) -> None:
        fake = FakeProvider(handler=lambda req: joke())
        with fake.serve() as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
            with llmtally.track("agent", max_requests="1") as t:
                ask(client)
                with pytest.raises(llmtally.BudgetExceeded) as info:
                    ask(client)
        assert len(fake.requests) == 1 and t.successful_requests == 1
        assert info.value.limit == "requests" and info.value.allowed == 1
        assert str(info.value) == (
            "llmtally: scope 'agent' reached its request limit: 1 of 1; the request was not sent"
        )

    def test_a_decorator_checks_its_limits_when_applied(self) -> None:
        with pytest.raises(ValueError, match="max_requests must be a whole number, zero or more, not -1"):

            @llmtally.track("job", max_requests=-1)
            def job() -> None: ...


class TestACheckThatFails:
    """A limit check that raises inside llmtally (not bad input: that never gets this far) does not
    let the request through a scope that refuses; in warn mode it is sent and the failure logged."""

    @pytest.fixture
    def broken(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from llmtally import _limits

        def fails(*args: object, **kwargs: object) -> None:
            raise RuntimeError("the tokenizer broke")

        monkeypatch.setattr(_limits, "_worst_case", fails)

    @pytest.mark.usefixtures("broken")
    def test_refused_in_raise_mode(
        self, fake: FakeProvider, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
    ) -> None:
        with llmtally.track("agent", max_cost="1", preflight=True) as t:
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert fake.requests == [] and t.requests == 0
        assert info.value.limit == "unchecked" and info.value.scope == "agent"
        assert str(info.value) == (
            "llmtally: could not check the limits of scope 'agent' (RuntimeError: the tokenizer broke); "
            "the request was not sent"
        )
        assert "could not check the limits of scope 'agent'" in caplog.text

    @pytest.mark.usefixtures("broken")
    def test_sent_and_logged_in_warn_mode(
        self, fake: FakeProvider, client: openai.OpenAI, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.ERROR, "llmtally"):
            with llmtally.track("agent", max_cost="1", preflight=True, on_exceed="warn") as t:
                ask(client)
        assert len(fake.requests) == 1 and t.successful_requests == 1
        assert "could not check the limits (warn mode); the request is sent" in caplog.text

    @pytest.mark.usefixtures("broken")
    def test_an_outer_scope_that_refuses_wins(self, fake: FakeProvider, client: openai.OpenAI) -> None:
        with (
            llmtally.track("outer", max_requests=10),
            llmtally.track("inner", max_cost="1", preflight=True, on_exceed="warn"),
        ):
            with pytest.raises(llmtally.BudgetExceeded) as info:
                ask(client)
        assert fake.requests == [] and info.value.scope == "outer"  # inner only warns


class TestBudgetArguments:
    """``llmtally.budget`` checks its arguments before it opens any database."""

    @pytest.mark.parametrize(
        ("args", "kwargs", "error", "named"),
        [
            (
                ("team",),
                {"max_cost": "abc"},
                ValueError,
                "max_cost must be an amount in USD such as '0.50', not 'abc'",
            ),
            (
                ("team",),
                {"max_cost": "-1"},
                ValueError,
                "max_cost must be a finite amount of USD, zero or more, not '-1'",
            ),
            (
                ("team",),
                {"max_cost": "Infinity"},
                ValueError,
                "max_cost must be a finite amount of USD, zero or more",
            ),
            (
                ("team",),
                {"max_cost": 5, "period": "week"},
                ValueError,
                "period must be 'day', 'month' or None, not 'week'",
            ),
            (
                ("team",),
                {"max_cost": 5, "on_exceed": "log"},
                ValueError,
                "on_exceed must be 'raise' or 'warn', not 'log'",
            ),
            ((42,), {"max_cost": 5}, TypeError, "budget name must be a string, not 42 (int)"),
            (("  ",), {"max_cost": 5}, ValueError, "budget name must not be empty, not '  '"),
            (("team",), {"max_cost": 5, "ledger": 3}, TypeError, "ledger must be a URL string, not 3 (int)"),
        ],
    )
    def test_a_bad_value_is_refused_before_the_ledger_is_opened(
        self, args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], named: str
    ) -> None:
        # No ledger is configured: without the check, the error would be about the missing ledger.
        with pytest.raises(error) as info:
            llmtally.budget(*args, **kwargs)  # type: ignore[arg-type]
        assert str(info.value).startswith(named)

    def test_a_string_max_cost_sets_the_budget(self, url: str, client: openai.OpenAI) -> None:
        with llmtally.budget("team", max_cost=str(CALL), ledger=url) as b:
            ask(client, max_tokens=13)
            with pytest.raises(llmtally.BudgetExceeded):
                ask(client, max_tokens=13)
        assert b.requests == 1


class TestEstimateArguments:
    def test_bad_arguments(self) -> None:
        with pytest.raises(
            ValueError, match="max_output_tokens must be a whole number, zero or more, not -5"
        ):
            llmtally.estimate("hi", model="gpt-4o", max_output_tokens=-5)
        with pytest.raises(TypeError, match="model must be a model name, not None"):
            llmtally.estimate("hi", model=None)  # type: ignore[arg-type]

    def test_a_numeric_string_allowance(self) -> None:
        e = llmtally.estimate("hi", model="gpt-4o", max_output_tokens="50")  # type: ignore[arg-type]
        assert e.max_output_tokens == 50


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit code and stderr of a command that fails (argparse exits; our commands return)."""
    try:
        code = cli_logic(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


class TestCommandLine:
    @pytest.mark.parametrize(
        ("argv", "named"),
        [
            (
                ["budget", "set", "team", "--max-cost", "abc"],
                "argument --max-cost: want an amount in USD such as 0.50, not 'abc'",
            ),
            (
                ["budget", "set", "team", "--max-cost", "-1"],
                "argument --max-cost: want an amount in USD such as 0.50, not '-1'",
            ),
            (
                ["budget", "set", "team", "--max-cost", "nan"],
                "argument --max-cost: want an amount in USD such as 0.50, not 'nan'",
            ),
            (
                ["budget", "set", "team", "--max-cost", "5", "--period", "week"],
                "argument --period: invalid choice: 'week'",
            ),
            (
                ["cost", "gpt-4o", "-i", "-100"],
                "argument --input/-i: want a whole number, zero or more, not '-100'",
            ),
            (
                ["cost", "gpt-4o", "-i", "100", "--cached", "lots"],
                "argument --cached: want a whole number, zero or more, not 'lots'",
            ),
            (
                ["cost", "gpt-4o", "-i", "1.5"],
                "argument --input/-i: want a whole number, zero or more, not '1.5'",
            ),
            (
                ["estimate", "--model", "gpt-4o", "--max-output", "-5"],
                "argument --max-output: want a whole number, zero or more, not '-5'",
            ),
        ],
    )
    def test_a_bad_argument_is_one_line_naming_it(
        self, capsys: pytest.CaptureFixture[str], url: str, argv: list[str], named: str
    ) -> None:
        code, err = cli_error(capsys, *argv, *(["--ledger", url] if argv[0] == "budget" else []))
        assert code == 2
        assert err.count("\n") == 1 and named in err and err.startswith(f"llmtally {argv[0]}: ")
        assert "usage:" not in err and "<class" not in err and "Traceback" not in err

    def test_budget_reset_of_no_budget(self, capsys: pytest.CaptureFixture[str], url: str) -> None:
        assert cli_logic(["budget", "set", "team", "--max-cost", "5", "--ledger", url]) == 0
        code, err = cli_error(capsys, "budget", "reset", "nope", "--ledger", url)
        assert code == 1
        assert err == (
            "llmtally budget reset: there is no budget named 'nope' in this ledger "
            "(`llmtally budget list` shows them)\n"
        )
        assert cli_logic(["budget", "reset", "team", "--ledger", url]) == 0

    @pytest.mark.parametrize(
        ("argv", "said"),
        [
            (
                ["-i", "100", "--cached", "500"],
                "--cached 500 is more than --input 100 "
                "(--input counts every input token, cached ones included)",
            ),
            (
                ["-i", "100", "--cached", "60", "--cache-write", "60"],
                "--cached 60 plus --cache-write 60 is more than --input 100",
            ),
            (
                ["-i", "100", "-o", "5", "--reasoning", "10"],
                "--reasoning 10 is more than --output 5 "
                "(--output counts every output token, reasoning included)",
            ),
            (
                ["-i", "100", "--cache-write", "5", "--cache-write-1h", "10"],
                "--cache-write-1h 10 is more than --cache-write 5",
            ),
        ],
    )
    def test_cost_of_an_inconsistent_usage_says_so(
        self, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
    ) -> None:
        code, err = cli_error(capsys, "cost", "gpt-4o", *argv)
        assert code == 2
        assert err.startswith("llmtally cost: inconsistent usage: ") and said in err
        assert err.count("\n") == 1 and "Usage(" not in err and "no price known" not in err

    def test_a_consistent_usage_is_priced(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["cost", "gpt-4", "-i", "11", "-o", "13"]) == 0
        assert capsys.readouterr().out == "$0.00111\n"

    def test_help_speaks_the_users_words(self, capsys: pytest.CaptureFixture[str]) -> None:
        texts = []
        for argv in (["--help"], *([name, "--help"] for name in ("demo", "run", "report", "budget", "cost"))):
            with pytest.raises(SystemExit):
                cli_logic(argv)
            texts.append(capsys.readouterr().out)
        assert all(texts)
        assert not [text for text in texts if "seed" in text.lower()]


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtally", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def shell_ledger(url: str) -> Iterator[str]:
    assert cli_logic(["budget", "set", "team", "--max-cost", "5", "--ledger", url]) == 0
    yield url


class TestInAShell:
    """The real command: one line on stderr, a non-zero exit status, no traceback at exit."""

    @pytest.mark.parametrize(
        ("argv", "status", "line"),
        [
            (
                ["budget", "set", "team", "--max-cost", "abc"],
                2,
                "llmtally budget: argument --max-cost: want an amount in USD such as 0.50, not 'abc' "
                "(see llmtally budget --help)",
            ),
            (
                ["budget", "reset", "nope"],
                1,
                "llmtally budget reset: there is no budget named 'nope' in this ledger "
                "(`llmtally budget list` shows them)",
            ),
            (
                ["cost", "gpt-4o", "-i", "100", "--cached", "500"],
                2,
                "llmtally cost: inconsistent usage: --cached 500 is more than --input 100 "
                "(--input counts every input token, cached ones included)",
            ),
        ],
    )
    def test_one_line_and_an_exit_status(
        self, shell_ledger: str, argv: list[str], status: int, line: str
    ) -> None:
        done = run_cli(*argv, env={"LLMTALLY_LEDGER": shell_ledger})
        assert (done.returncode, done.stderr, done.stdout) == (status, line + "\n", "")

    def test_a_good_command_says_nothing_on_stderr(self, shell_ledger: str) -> None:
        done = run_cli("budget", "reset", "team", env={"LLMTALLY_LEDGER": shell_ledger})
        assert (done.returncode, done.stderr) == (0, "")
