from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import llmtally
from llmtally.testing import FakeProvider


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()


@pytest.fixture(autouse=True)
def isolated_spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's ledger spool in its own folder, never the user's data directory."""
    path = tmp_path / "spool"
    monkeypatch.setenv("LLMTALLY_SPOOL_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def no_ledger_after() -> Iterator[None]:
    """No test leaves a ledger configured for the next one."""
    yield
    llmtally.configure(ledger="none")
