"""Your own prices: price files and set_price win over the catalogue; a bad file is an error that
names the file, the line and the field, and leaves the prices in force as they were."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import llmtally
from llmtally._core import user_prices
from llmtally._core.usage import Usage
from llmtally.testing import FakeProvider, Reply

M = Decimal(1_000_000)


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    user_prices.set_entries(files=(), calls=())
    yield
    user_prices.set_entries(files=(), calls=())


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "prices.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def call(model: str, prompt: int = 1000, completion: int = 200, cached: int = 0) -> llmtally.Tally:
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=prompt, completion_tokens=completion,
                                                  cached_tokens=cached, model=model))  # fmt: skip
    with fake.serve() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        with llmtally.track() as t:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return t


class TestSetPrice:
    def test_an_unknown_model_is_priced(self) -> None:
        assert call("acme-llm-7b").unpriced_requests == 1
        llmtally.set_price("acme-llm-7b", input="0.30", output="1.20")
        t = call("acme-llm-7b")
        assert t.unpriced_requests == 0 and t.cost == (1000 * Decimal("0.30") + 200 * Decimal("1.20")) / M
        assert t.calls[0].price_source == "set_price line 0"

    def test_it_wins_over_the_catalogue(self) -> None:
        catalogue = call("gpt-4o", cached=400).cost
        llmtally.set_price("gpt-4o", input="1", output="4", cached="0.5")
        mine = call("gpt-4o", cached=400).cost
        assert mine != catalogue and mine == (600 * 1 + 400 * Decimal("0.5") + 200 * 4) / M

    def test_prefix_pattern_provider_and_the_last_match(self) -> None:
        llmtally.set_price("acme-", match="prefix", input="1", output="1")
        llmtally.set_price(r"acme-.*-big", match="pattern", input="10", output="10")
        llmtally.set_price("acme-small", provider="anthropic", input="99", output="99")  # not OpenAI's
        assert call("acme-small").cost == 1200 * 1 / M
        assert call("acme-x-big").cost == 1200 * 10 / M

    def test_local_models_priced_at_zero(self) -> None:
        llmtally.set_price("llama3.2", input=0, output=0)
        t = call("llama3.2")
        assert t.unpriced_requests == 0 and t.cost == 0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"input": "abc"}, "field 'input': 'abc' is not a number"),
            ({"input": "-1"}, "not a price"),
            ({"input": True}, "must be a number"),
            ({"inptu": "1"}, "field 'inptu': unknown field"),
            ({}, "no price given"),
            ({"input": "1", "match": "glob"}, "match must be"),
        ],
    )
    def test_bad_prices_are_refused(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            llmtally.set_price("m", **kwargs)  # type: ignore[arg-type]
        assert user_prices.entries() == ()


class TestPriceFile:
    def test_file_with_line_in_the_source(self, tmp_path: Path) -> None:
        path = write(tmp_path, """
            # negotiated
            [[price]]
            model = "gpt-4o"
            input = "1.00"
            output = "4.00"

            [[price]]
            prefix = "acme-"
            input = 2
            output = 2
        """)  # fmt: skip
        llmtally.configure(prices=path)
        t = call("gpt-4o")
        assert t.cost == (1000 * 1 + 200 * 4) / M and t.calls[0].price_source == f"{path} line 3"
        assert call("acme-1").calls[0].price_source == f"{path} line 8"
        llmtally.configure(prices="")  # no file: the catalogue again
        assert call("gpt-4o").cost != t.cost

    def test_valid_from(self, tmp_path: Path) -> None:
        path = write(tmp_path, """
            [[price]]
            model = "gpt-4o"
            input = "1"
            output = "1"
            valid_from = "2999-01-01"
        """)  # fmt: skip
        llmtally.configure(prices=path)
        assert call("gpt-4o").cost == llmtally.cost_of("gpt-4o", input_tokens=1000, output_tokens=200)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("[[price]]\nmodel = 'x'\ninput = 'abc'\n", r"line 3, field 'input': 'abc' is not a number"),
            ("[[price]]\nmodel = 'x'\ninput = '1'\noutptu = '2'\n", r"line 4, field 'outptu': unknown field"),
            ("[[price]]\ninput = '1'\n", r"line 1: give exactly one of model, prefix or pattern"),
            ("[[price]]\nmodel = 'x'\nprefix = 'y'\ninput = '1'\n", "exactly one of"),
            (
                "[[price]]\npattern = '(('\ninput = '1'\n",
                r"line 2, field 'pattern': not a regular expression",
            ),
            ("[[price]]\nmodel = 'x'\ninput = '-2'\n", r"line 3, field 'input': '-2' is not a price"),
            ("[[price]]\nmodel = 'x'\ninput = '1'\nvalid_from = 'soon'\n", r"line 4, field 'valid_from'"),
            ("[[price]]\nmodel = 'x'\ninput = '1'\ncurrency = 'RMB!'\n", r"line 4, field 'currency'"),
            ("[[price]]\nmodel = 'x'\n", r"line 1: no price given"),
            ("[model]\nx = 1\n", "unknown table 'model'"),
            ("[[price]\nmodel = ", "not a TOML price file"),
        ],
    )
    def test_errors_name_file_line_and_field(self, tmp_path: Path, text: str, message: str) -> None:
        good = write(tmp_path, "[[price]]\nmodel = 'acme'\ninput = '1'\noutput = '1'\n")
        llmtally.configure(prices=good)
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            llmtally.configure(prices=str(bad))
        assert str(bad) in str(info.value)
        assert call("acme").cost == 1200 / M  # the prices in force are as they were

    def test_a_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="cannot read the price file"):
            llmtally.configure(prices=str(tmp_path / "nope.toml"))

    def test_from_the_environment(self, tmp_path: Path) -> None:
        path = write(tmp_path, "[[price]]\nmodel = 'acme'\ninput = '3'\noutput = '3'\n")
        code = textwrap.dedent("""
            import llmtally, openai
            from llmtally.testing import FakeProvider, Reply
            fake = FakeProvider([Reply(prompt_tokens=1000, completion_tokens=200, model="acme")])
            with fake.serve() as url, llmtally.track() as t:
                openai.OpenAI(base_url=url + "/v1", api_key="x").chat.completions.create(
                    model="acme", messages=[{"role": "user", "content": "hi"}])
            print(t.cost)
        """)  # fmt: skip
        env = {**os.environ, "LLMTALLY_PRICES": path, "XDG_CONFIG_HOME": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0.0036"

    def test_a_thousand_entries_load(self, tmp_path: Path) -> None:
        text = "".join(f"[[price]]\nmodel = 'm{i}'\ninput = '0.{i}'\noutput = '1'\n\n" for i in range(1000))
        path = write(tmp_path, text)
        llmtally.configure(prices=path)
        assert len(user_prices.entries()) == 1000
        assert call("m999").cost == (1000 * Decimal("0.999") + 200) / M


class TestPriceCommand:
    def test_catalogue_price(self, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        assert cli_logic(["price", "gpt-4o", "--provider", "openai"]) == 0
        out = capsys.readouterr().out
        assert "openai/gpt-4o" in out and "genai-prices" in out and "$2.5/input MTok" in out
        assert "when service_tier=priority" in out and "service_tier=default" not in out

    def test_did_you_mean(self, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        assert cli_logic(["price", "gpt4o"]) == 1
        err = capsys.readouterr().err
        assert "no price known for 'gpt4o'" in err and "did you mean gpt-4o" in err

    def test_your_price_and_where_it_is(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        path = write(tmp_path, "[[price]]\nmodel = 'acme'\ninput = '3'\noutput = '4'\n")
        assert cli_logic(["price", "acme", "--prices", path]) == 0
        out = capsys.readouterr().out
        assert f"your price ({path} line 1)" in out and "$3/input MTok" in out
        bad = write(tmp_path, "[[price]]\nmodel = 'acme'\ninput = 'x'\n")
        assert cli_logic(["price", "acme", "--prices", bad]) == 2
        assert "line 3, field 'input'" in capsys.readouterr().err


def test_a_fine_tune_is_priced_from_its_base_unless_overridden() -> None:
    name = "ft:gpt-4.1-mini-2025-04-14:acme::abc123"
    t = call(name)
    base = llmtally.cost_of(
        "gpt-4.1-mini-2025-04-14", provider="openai", input_tokens=1000, output_tokens=200
    )
    assert t.unpriced_requests == 0 and t.cost == base
    assert t.calls[0].price_source is not None and t.calls[0].price_source.endswith(f"the base of {name}")
    # The catalogue's own fine-tune prices where it has them (ft:gpt-4o-mini-2024-...: 2x the base).
    listed = call("ft:gpt-4o-mini-2024-07-18:acme::x1")
    assert listed.cost == (1000 * Decimal("0.3") + 200 * Decimal("1.2")) / M
    llmtally.set_price(name, input="0.8", output="3.2")
    assert call(name).cost == (1000 * Decimal("0.8") + 200 * Decimal("3.2")) / M


def test_an_azure_deployment_priced_as_its_model(tmp_path: Path) -> None:
    """A deployment whose answers name only the deployment: the price file says which model it is."""
    fake = FakeProvider(handler=lambda req: Reply(prompt_tokens=1000, completion_tokens=200))
    with fake.serve() as url:
        client = openai.AzureOpenAI(azure_endpoint=url, api_key="k", api_version="2024-10-21", max_retries=0)

        def ask() -> llmtally.Tally:
            with llmtally.track() as t:
                client.chat.completions.create(
                    model="prod-4o-eastus", messages=[{"role": "user", "content": "hi"}]
                )
            return t

        assert ask().unpriced_requests == 1
        path = write(tmp_path, "[[price]]\nmodel = 'prod-4o-eastus'\nsame_as = 'gpt-4o'\n")
        llmtally.configure(prices=path)
        t = ask()
    assert t.cost == llmtally.cost_of("gpt-4o", provider="azure", input_tokens=1000, output_tokens=200)
    assert t.calls[0].price_source is not None and "prod-4o-eastus is gpt-4o" in t.calls[0].price_source
    with pytest.raises(ValueError, match="give prices or same_as, not both"):
        llmtally.set_price("x", same_as="gpt-4o", input="1")


class TestCostCommand:
    def test_every_unit(self, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        argv = ["cost", "claude-sonnet-4-5", "--provider", "anthropic", "-i", "1000", "-o", "2000"]
        assert cli_logic([*argv, "--web-searches", "3"]) == 0
        with_searches = Decimal(capsys.readouterr().out.strip().lstrip("$"))
        assert cli_logic(argv) == 0
        assert with_searches - Decimal(capsys.readouterr().out.strip().lstrip("$")) == Decimal("0.03")

    def test_the_usage_not_the_model_is_the_problem(self, capsys: pytest.CaptureFixture[str]) -> None:
        from llmtally.cli import cli_logic

        assert cli_logic(["cost", "gpt-4o", "-i", "100", "--cached", "500"]) == 2
        err = capsys.readouterr().err
        assert "inconsistent usage: --cached 500 is more than --input 100" in err
        assert "no price known" not in err and "Usage(" not in err
        assert cli_logic(["cost", "gpt4o", "-i", "100"]) == 1
        assert "did you mean gpt-4o" in capsys.readouterr().err


def test_per_request_and_image_output_prices(tmp_path: Path) -> None:
    """A per-request fee and drawn images: units a price file can give like the catalogue's."""
    from llmtally._pricing import price_usage

    path = tmp_path / "prices.toml"
    path.write_text(
        "[[price]]\nmodel = 'my-painter'\ninput = '1'\noutput = '2'\noutput_image = '30'\nrequests = '5'\n"
    )
    llmtally.configure(prices=str(path))
    cost, found = price_usage(Usage(1_000_000, 2_000_000, output_image_tokens=1_000_000), "my-painter")
    # 1M input at $1, 1M text output at $2, 1M image output at $30, one request at $5 per thousand.
    assert found is not None and cost == Decimal("1") + Decimal("2") + Decimal("30") + Decimal("0.005")
