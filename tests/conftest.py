from __future__ import annotations

import pytest

from llmtally.testing import FakeProvider


@pytest.fixture
def fake() -> FakeProvider:
    return FakeProvider()
