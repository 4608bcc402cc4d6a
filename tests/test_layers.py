"""The architecture holds: imports point down the layers, nothing forms a cycle, the types are strict.

The layers are declared once, in pyproject.toml's import-linter contracts; these tests run that
contract and add what it cannot say: no import cycle anywhere in the package (imports inside
functions included, ``TYPE_CHECKING`` imports not), and nothing below the command line imports
the facade. Then ``mypy --strict`` checks a user's file that uses the public API.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def graph() -> grimp.ImportGraph:
    return grimp.build_graph("llmtally", exclude_type_checking_imports=True, cache_dir=None)


def cycles(g: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(g.find_modules_directly_imported_by(module)):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(g.modules):
        if module not in index:
            visit(module)
    return found


class TestLayers:
    """Imports point down; no cycles; the facade is for users and the command line only."""

    def test_layer_contract(self) -> None:
        proc = subprocess.run(
            [str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 broken" in proc.stdout

    def test_contract_catches_an_import_inside_a_function(self, tmp_path: Path) -> None:
        """The contract is not vacuous: an upward import made inside a function breaks it."""
        src = tmp_path / "src"
        subprocess.run(["cp", "-r", str(ROOT / "src"), str(src)], check=True)
        (src / "llmtally" / "_core" / "usage.py").open("a").write(
            "\n\ndef _upward():\n    from .._runtime import RUNTIME\n\n    return RUNTIME\n"
        )
        (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
        env = {**os.environ, "PYTHONPATH": str(src)}
        proc = subprocess.run(
            [str(BIN / "lint-imports"), "--no-cache"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode != 0
        assert "llmtally._core.usage -> llmtally._runtime" in proc.stdout

    def test_no_import_cycle(self) -> None:
        assert cycles(graph()) == []

    def test_cycle_finder_finds_cycles(self) -> None:
        g = grimp.ImportGraph()
        for m in ("a", "b", "c", "d"):
            g.add_module(m)
        g.add_import(importer="a", imported="b")
        g.add_import(importer="b", imported="c")
        g.add_import(importer="c", imported="a")
        g.add_import(importer="c", imported="d")
        assert cycles(g) == [["a", "b", "c"]]

    def test_no_global_statements(self) -> None:
        """Process state has one owner (``_runtime.RUNTIME``): no module rebinds its globals."""
        import ast

        found = [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for path in sorted((ROOT / "src" / "llmtally").rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Global)
        ]
        assert found == []

    def test_only_the_command_line_imports_the_facade(self) -> None:
        """... and the pytest plugin, its sibling at the top."""
        importers = graph().find_modules_that_directly_import("llmtally")
        top = ("llmtally.cli", "llmtally.pytest_plugin")
        assert {m for m in importers if not m.startswith(top)} == set()


USER_FILE = """
from __future__ import annotations

import asyncio
from decimal import Decimal

import llmtally


@llmtally.track("summarise")
def summarise(doc: str, *, words: int = 50) -> str:
    return doc[:words]


@llmtally.track
async def embed(texts: list[str]) -> int:
    return len(texts)


class Agent:
    @llmtally.track("agent")
    def run(self, question: str) -> str:
        return question

    @llmtally.track
    async def arun(self, question: str) -> str:
        return question


async def main() -> Decimal:
    async with llmtally.track("async-job", tags={"team": "search"}) as t:
        n: int = await embed(["a", "b"])
    return t.cost + n


def run() -> None:
    with llmtally.track("job", max_cost="0.50", max_requests=10) as t:
        text: str = summarise("some document", words=3)
    tokens: int = t.prompt_tokens + t.completion_tokens + t.total_tokens + t.cached_tokens
    cost: Decimal = t.cost
    requests: int = t.successful_requests + t.failed_requests + t.unpriced_requests
    for model, totals in t.by_model.items():
        print(model, totals.prompt_tokens, totals.cost)
    for call in t.calls:
        print(call.model, call.usage, call.cost)
    with llmtally.get_openai_callback() as cb:
        pass
    spent: float = cb.total_cost
    try:
        with llmtally.track(max_tokens=100), llmtally.suppress():
            pass
    except llmtally.BudgetExceeded as exc:
        print(exc.scope, exc.limit)
    print(text, tokens, cost, requests, spent, asyncio.run(main()))
    price: Decimal | None = llmtally.cost_of("gpt-4o", input_tokens=10, output_tokens=5)
    estimate = llmtally.estimate("hello", model="gpt-4o", max_output_tokens=10)
    rows = llmtally.report(since="7d", by=["model"])
    answer: str = Agent().run("why?")
    whole: llmtally.Tally = summarise.tally  # type: ignore[attr-defined]
    print(price, estimate.max_cost, [r.cost for r in rows], whole.cost, answer, Agent().arun("x"))
"""


class TestTypes:
    """A user's code that uses the public API type-checks under ``mypy --strict``."""

    @pytest.mark.parametrize("broken", [False, True])
    def test_user_file_is_strict_clean(self, tmp_path: Path, broken: bool) -> None:
        text = textwrap.dedent(USER_FILE)
        if broken:  # the check can fail: wrong arguments to a decorated function, a misspelt field
            text += '\nsummarise(3, words="many")\nprint(llmtally.track().prompt_tokenz)\nAgent().run(3)\n'
        (tmp_path / "user.py").write_text(text)
        proc = subprocess.run(
            [
                str(BIN / "mypy"),
                "--strict",
                "--no-incremental",
                "--python-executable",
                sys.executable,
                "user.py",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if broken:
            assert proc.returncode == 1
            assert 'has incompatible type "int"; expected "str"' in proc.stdout
            assert 'has incompatible type "str"; expected "int"' in proc.stdout
            assert '"Tally" has no attribute "prompt_tokenz"' in proc.stdout
            assert 'Argument 1 to "run" of "Agent" has incompatible type "int"' in proc.stdout
        else:
            assert proc.returncode == 0, proc.stdout
