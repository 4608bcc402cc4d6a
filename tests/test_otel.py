"""OpenTelemetry metrics, read back with the SDK's in-memory reader (spans: test_otel_spans.py)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx2
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import llmtally
from llmtally.testing import FakeProvider, Reply


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    import gc

    # Calls an earlier test left unsettled (responses dropped unread) are that test's, not these
    # metrics': settle them before the exporter is in place.
    gc.collect()
    llmtally.flush()
    reader = InMemoryMetricReader()
    llmtally.configure(otel=MeterProvider(metric_readers=[reader]))
    yield reader
    llmtally.configure(otel=False)


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def post(client: httpx2.Client) -> int:
    r = client.post("http://api.example.test/v1/chat/completions", json={"model": "gpt-4", "messages": []})
    return r.status_code


class TestMetrics:
    """Each call adds the GenAI semantic-convention metrics and the cost."""

    def test_tokens_duration_cost(self, reader: InMemoryMetricReader) -> None:
        fake = FakeProvider(
            handler=lambda req: Reply(text="x", prompt_tokens=11, completion_tokens=13, model="gpt-4")
        )
        client = httpx2.Client(transport=fake.httpx2_transport())
        assert post(client) == 200 and post(client) == 200  # no scope needed
        got = points(reader)
        tokens = {p.attributes["gen_ai.token.type"]: p for p in got["gen_ai.client.token.usage"]}
        assert (tokens["input"].sum, tokens["input"].count) == (22, 2)
        assert (tokens["output"].sum, tokens["output"].count) == (26, 2)
        attrs = dict(tokens["input"].attributes)
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.request.model"] == "gpt-4" and attrs["gen_ai.response.model"] == "gpt-4"
        assert attrs["server.address"] == "api.example.test"
        (duration,) = got["gen_ai.client.operation.duration"]
        assert duration.count == 2 and duration.sum > 0
        (cost,) = got["llmtally.client.cost"]
        assert cost.value == pytest.approx(float(Decimal("0.00222")))

    def test_failures_carry_error_type(self, reader: InMemoryMetricReader) -> None:
        fake = FakeProvider([Reply(status=500, error="boom")])
        client = httpx2.Client(transport=fake.httpx2_transport())
        assert post(client) == 500
        got = points(reader)
        (duration,) = got["gen_ai.client.operation.duration"]
        assert duration.attributes["error.type"] == "500"
        assert "gen_ai.client.token.usage" not in got

    def test_off_again(self, reader: InMemoryMetricReader) -> None:
        llmtally.configure(otel=False)
        fake = FakeProvider(
            handler=lambda req: Reply(text="x", prompt_tokens=1, completion_tokens=1, model="gpt-4")
        )
        post(httpx2.Client(transport=fake.httpx2_transport()))
        llmtally.flush()
        assert points(reader) == {}
