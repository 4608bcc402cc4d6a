"""One OpenTelemetry CLIENT span per LLM call (GenAI semantic conventions), through the real openai SDK."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import llmtally
from llmtally._core.pipeline import PIPELINE
from llmtally.testing import FakeProvider, Reply

PROMPT = "tell me a joke about otters"
ANSWER = "an otter walks into a bar"
CHAT = [{"role": "user", "content": PROMPT}]


class Otel:
    """The providers handed to ``configure(otel=...)`` and what they collected."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracer_provider.get_tracer("app")
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def clients(self) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.kind is SpanKind.CLIENT]

    def one(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span


@pytest.fixture
def otel() -> Iterator[Otel]:
    gc.collect()  # calls an earlier test left unsettled are that test's
    llmtally.flush()
    o = Otel()
    llmtally.configure(otel=(o.meter_provider, o.tracer_provider))
    yield o
    llmtally.configure(otel=False)


def sdk(fake: FakeProvider) -> openai.OpenAI:
    transport = fake.httpx2_transport()
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=transport),
    )


def ask(client: openai.OpenAI, model: str = "gpt-4o") -> Any:
    return client.chat.completions.create(model=model, messages=CHAT)  # type: ignore[arg-type]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_two_calls_in_one_span_get_a_child_span_each(otel: Otel) -> None:
    replies = [
        Reply(text=ANSWER, prompt_tokens=1000, completion_tokens=100, cached_tokens=400, request_id="req-1"),
        Reply(text=ANSWER, prompt_tokens=20, completion_tokens=7, reasoning_tokens=3, request_id="req-2"),
    ]
    fake = FakeProvider(replies)
    client = sdk(fake)
    with otel.tracer.start_as_current_span("handle-request") as user:
        user.set_attribute("app.user", "ada")
        ask(client)
        ask(client, "gpt-4o-mini")
    parent = otel.one("handle-request")
    assert attrs(parent) == {"app.user": "ada"}  # the user's span is left as the user made it
    first, second = sorted(otel.clients(), key=lambda s: s.start_time or 0)
    for span in (first, second):
        assert span.parent is not None and span.parent.span_id == parent.context.span_id
        assert span.context.trace_id == parent.context.trace_id
        assert (parent.start_time or 0) <= (span.start_time or 0) < (span.end_time or 0)
        assert (span.end_time or 0) <= (parent.end_time or 0)
        assert span.status.status_code is StatusCode.UNSET
    assert first.name == "chat gpt-4o" and second.name == "chat gpt-4o-mini"
    a = attrs(first)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o" and a["gen_ai.response.model"] == "gpt-4o"
    assert a["gen_ai.response.id"] == "req-1" and a["server.address"] == "fake"
    assert a["gen_ai.usage.input_tokens"] == 1000 and a["gen_ai.usage.output_tokens"] == 100
    assert a["gen_ai.usage.cache_read.input_tokens"] == 400
    assert "gen_ai.usage.reasoning.output_tokens" not in a  # kinds the call did not use are left out
    cost = llmtally.cost_of("gpt-4o", input_tokens=1000, output_tokens=100, cached_tokens=400)
    assert a["llmtally.cost"] == float(cost) and a["llmtally.currency"] == "USD"
    assert a["llmtally.estimated"] is False and a["llmtally.stream"] is False
    assert "error.type" not in a
    b = attrs(second)
    assert b["gen_ai.request.model"] == "gpt-4o-mini" and b["gen_ai.response.id"] == "req-2"
    assert b["gen_ai.usage.input_tokens"] == 20 and b["gen_ai.usage.output_tokens"] == 7
    assert b["gen_ai.usage.reasoning.output_tokens"] == 3
    assert "gen_ai.usage.cache_read.input_tokens" not in b
    assert b["llmtally.cost"] == float(llmtally.cost_of("gpt-4o-mini", input_tokens=20, output_tokens=7))


def test_span_times_are_the_calls(otel: Otel) -> None:
    fake = FakeProvider([Reply(text=ANSWER, prompt_tokens=5, completion_tokens=5, delay=0.1)])
    with llmtally.track() as tally:
        before = time.time_ns()
        ask(sdk(fake))
        after = time.time_ns()
    (span,) = otel.clients()
    start, end = span.start_time or 0, span.end_time or 0
    assert before <= start and end <= after
    assert end - start >= 100_000_000  # the server's 0.1 s are inside it
    (call,) = tally.calls
    assert start == pytest.approx(call.started_at * 1e9, abs=1e6)
    assert end - start == pytest.approx(call.latency * 1e9, abs=1e6)


def test_no_current_span_makes_a_root_span(otel: Otel) -> None:
    ask(sdk(FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])))
    (span,) = otel.spans()
    assert span.kind is SpanKind.CLIENT and span.name == "chat gpt-4o" and span.parent is None
    assert attrs(span)["gen_ai.usage.input_tokens"] == 3


def test_a_remote_parent_is_kept(otel: Otel) -> None:
    """A parent propagated from another service (not recording here) is still the parent."""
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    ctx = TraceContextTextMapPropagator().extract({"traceparent": f"00-{trace_id}-{span_id}-01"})
    token = otel_context.attach(ctx)
    try:
        ask(sdk(FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])))
    finally:
        otel_context.detach(token)
    (span,) = otel.spans()
    assert span.parent is not None and span.parent.span_id == int(span_id, 16) and span.parent.is_remote
    assert span.context.trace_id == int(trace_id, 16)


def test_a_stream_is_one_span_from_send_to_its_end(otel: Otel) -> None:
    fake = FakeProvider([Reply(text="one two three four", prompt_tokens=9, completion_tokens=4)])
    client = sdk(fake)
    with otel.tracer.start_as_current_span("handle-request"):
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=CHAT,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        sent = time.time_ns()
        chunks = iter(stream)
        next(chunks)
        time.sleep(0.1)
        assert otel.clients() == []  # not over yet
        rest = list(chunks)
        assert rest
    (span,) = otel.clients()
    assert span.parent is not None and span.parent.span_id == otel.one("handle-request").context.span_id
    assert (span.start_time or 0) <= sent and (span.end_time or 0) - (span.start_time or 0) >= 100_000_000
    a = attrs(span)
    assert a["llmtally.stream"] is True
    assert a["gen_ai.usage.input_tokens"] == 9 and a["gen_ai.usage.output_tokens"] == 4
    assert a["gen_ai.response.model"] == "gpt-4o"


def test_a_failed_call_has_error_type(otel: Otel) -> None:
    fake = FakeProvider([Reply(status=500, error="x")])
    with otel.tracer.start_as_current_span("handle-request"), pytest.raises(openai.InternalServerError):
        ask(sdk(fake))
    (span,) = otel.clients()
    assert span.parent is not None and span.parent.span_id == otel.one("handle-request").context.span_id
    a = attrs(span)
    assert a["error.type"] == "500" and span.status.status_code is StatusCode.ERROR
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gpt-4o"
    assert "gen_ai.usage.input_tokens" not in a
    # The metric's error.type is the span's.
    data = otel.reader.get_metrics_data()
    assert data is not None
    durations = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "gen_ai.client.operation.duration"
        for p in m.data.data_points
    ]
    assert [p.attributes["error.type"] for p in durations] == ["500"]


def test_a_connection_failure_has_the_exception_type(otel: Otel) -> None:
    def refuse(request: Any) -> Any:
        raise httpx2.ConnectError("refused")

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(refuse)),
    )
    with pytest.raises(openai.APIConnectionError):
        ask(client)
    (span,) = otel.clients()
    assert attrs(span)["error.type"] == "ConnectError" and span.status.status_code is StatusCode.ERROR


def test_settled_on_another_thread_keeps_its_parent(otel: Otel) -> None:
    PIPELINE.eager = False  # settle on the next read, not as the call ends (reset by the fixture)
    fake = FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])
    with otel.tracer.start_as_current_span("handle-request"):
        ask(sdk(fake))
    assert otel.clients() == []  # queued, not settled

    def settle_elsewhere() -> None:
        with otel.tracer.start_as_current_span("elsewhere"):
            llmtally.flush()

    worker = threading.Thread(target=settle_elsewhere)
    worker.start()
    worker.join()
    (span,) = otel.clients()
    parent = otel.one("handle-request")
    assert span.parent is not None and span.parent.span_id == parent.context.span_id
    assert span.context.trace_id == parent.context.trace_id


def test_concurrent_tasks_each_parent_their_own_call(otel: Otel) -> None:
    fake = FakeProvider(
        handler=lambda req: Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2, delay=0.05)
    )
    client = openai.AsyncOpenAI(
        api_key="sk-test",
        base_url="http://fake/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=fake.httpx2_transport()),
    )

    async def task(name: str) -> None:
        with otel.tracer.start_as_current_span(name):
            await client.chat.completions.create(model="gpt-4o", messages=CHAT)  # type: ignore[arg-type]

    async def main() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(main())
    parents = {s.parent.span_id for s in otel.clients() if s.parent is not None}
    assert parents == {otel.one("a").context.span_id, otel.one("b").context.span_id}


def test_no_prompt_or_completion_text(otel: Otel) -> None:
    fake = FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])
    with otel.tracer.start_as_current_span("handle-request"):
        ask(sdk(fake))
    (span,) = otel.clients()
    assert not span.events
    for value in attrs(span).values():
        assert "otter" not in str(value)


def test_metrics_as_before(otel: Otel) -> None:
    ask(sdk(FakeProvider([Reply(text=ANSWER, prompt_tokens=11, completion_tokens=13)])))
    data = otel.reader.get_metrics_data()
    assert data is not None
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert names == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration", "llmtally.client.cost"}


def test_unknown_cost_is_left_out(otel: Otel) -> None:
    ask(sdk(FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])), "no-such-model-xyz")
    (span,) = otel.clients()
    a = attrs(span)
    assert "llmtally.cost" not in a and a["gen_ai.usage.input_tokens"] == 3


def test_tracer_provider_alone_and_bad_values() -> None:
    o = Otel()
    try:
        llmtally.configure(otel=o.tracer_provider)
        ask(sdk(FakeProvider([Reply(text=ANSWER, prompt_tokens=3, completion_tokens=2)])))
        (span,) = o.clients()
        assert attrs(span)["gen_ai.usage.output_tokens"] == 2
        with pytest.raises(TypeError, match="otel"):
            llmtally.configure(otel="yes")  # type: ignore[arg-type]
    finally:
        llmtally.configure(otel=False)
