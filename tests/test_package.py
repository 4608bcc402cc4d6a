"""The package surface: a light import, an honest __all__, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llmtally
from llmtally.cli import cli_logic

HEAVY = [
    "openai",
    "anthropic",
    "httpx",
    "httpx2",
    "requests",
    "urllib3",
    "aiohttp",
    "botocore",
    "pydantic",
    "genai_prices",
    "quicktok",
    "sqlite3",
    "psycopg",
    "langchain_core",
    "logging",
    "decimal",
    "dataclasses",
    "rich",
    "matplotlib",
    "platformdirs",
]


class TestImport:
    """import llmtally loads no SDK, HTTP client, catalogue or driver."""

    def test_nothing_heavy(self) -> None:
        code = f"import sys, llmtally; print([m for m in {HEAVY!r} if m in sys.modules])"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"

    def test_lazy_names_resolve(self) -> None:
        for name in llmtally.__all__:
            assert getattr(llmtally, name) is not None
        with pytest.raises(AttributeError):
            llmtally.no_such_thing  # noqa: B018

    def test_all_sorted(self) -> None:
        assert llmtally.__all__ == sorted(llmtally.__all__)
        assert set(llmtally.__all__) <= set(dir(llmtally))


class TestCLI:
    """The llmtally command."""

    def test_cost(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["cost", "gpt-4", "-i", "11", "-o", "13"]) == 0
        assert capsys.readouterr().out.strip() == "$0.00111"

    def test_cost_unknown(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli_logic(["cost", "no-such-model-q", "-i", "1"]) == 1
        assert "no-such-model-q" in capsys.readouterr().err

    def test_demo(self) -> None:
        """The seed's three scenarios, through the real SDK and LangChain, in a fresh process."""
        proc = subprocess.run(
            [sys.executable, "-m", "llmtally", "demo"], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "SIMULATED" in out
        first = out.index("1. One call")
        assert (
            "Tokens Used: 24\n       Prompt Tokens: 11\n       Completion Tokens: 13\n"
            "   Successful Requests: 1\n   Total Cost (USD): $0.00111"
        ) in out[first:]
        assert "\n   48\n" in out
        assert "Prompt Tokens: 1799" in out and "Completion Tokens: 130" in out
        assert "Total Cost (USD): $0.06177" in out
        assert "Successful Requests: 4" in out
        assert "2.169459462491557" in out  # the calculator tool really ran


class TestPackaging:
    """pyproject.toml: an [all] extra with every optional feature, and the license shipped."""

    def test_all_extra_and_license(self) -> None:
        import tomllib
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
        extras = project["optional-dependencies"]
        features = sorted(set(extras) - {"all", "test", "bench"})
        assert features and extras["all"] == [f"llmtally[{','.join(features)}]"]
        assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
        text = (root / "LICENSE").read_text(encoding="utf-8")
        assert text.startswith("MIT License\n") and "Copyright (c) 2026 the llmtally authors" in text
