"""OpenTelemetry export: a GenAI client span per call, the GenAI semantic-convention metrics, a cost counter.

``llmtally.configure(otel=True)`` (``pip install "llmtally[otel]"``) sends every call to the
global TracerProvider and MeterProvider (``otel=provider`` for one of your own, a TracerProvider,
a MeterProvider or a tuple of both, the global one for the other):

- a ``CLIENT`` span per call, ``"{gen_ai.operation.name} {gen_ai.request.model}"``, following the
  GenAI semantic conventions (1.37 and later: ``gen_ai.provider.name``, no ``gen_ai.system``): a
  child of the span current when the request was sent, from the call's start to its end (a stream's
  last byte), with ``gen_ai.response.id``, ``gen_ai.usage.input_tokens`` / ``output_tokens``, the
  cache and reasoning counts the call used (``Kind.span_attribute``), ``error.type`` and an error
  status on failures, and ``llmtally.cost`` (a double, in ``llmtally.currency``; absent when no
  price is known), ``llmtally.estimated`` and ``llmtally.stream``. No prompt or completion text.
  The span is made when the call is settled, with the call's own start and end times, so the call
  path pays nothing for it;
- ``gen_ai.client.token.usage`` (histogram, ``{token}``), once per token type (``input``, ``output``);
- ``gen_ai.client.operation.duration`` (histogram, seconds), with ``error.type`` on failures;
- ``llmtally.client.cost`` (counter, USD) for priced calls;

each with ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model`` and ``server.address``, so existing collectors, Prometheus and Grafana
see them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core.usage import KINDS
from ._version import __version__

if TYPE_CHECKING:
    from ._core.usage import Call

__all__ = ["OTelSink"]

_TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
_DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
_OPERATIONS = {
    "chat.completions": "chat",
    "messages": "chat",
    "responses": "chat",
    "embeddings": "embeddings",
    "completions": "text_completion",
}
_PROVIDERS = {"azure": "azure.ai.openai", "google": "gcp.gemini", "aws": "aws.bedrock"}
#: (span attribute, Usage field) for every kind the GenAI conventions name (see usage.KINDS).
_SPAN_KINDS = tuple((k.span_attribute, k.name) for k in KINDS if k.span_attribute)
#: Set on every span with a known usage, 0 or not; the other kinds only when the call used them.
_ALWAYS = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")


def _providers(otel: Any) -> tuple[Any, Any]:
    """(meter provider, tracer provider) from ``configure(otel=...)``: ``None`` for the global one."""
    meter_provider = tracer_provider = None
    if otel is None or otel is True:
        return None, None
    for provider in otel if isinstance(otel, tuple) else (otel,):
        if hasattr(provider, "get_tracer"):
            tracer_provider = provider
        elif hasattr(provider, "get_meter"):
            meter_provider = provider
        else:
            raise TypeError(
                "otel= takes True, False, a MeterProvider, a TracerProvider or a tuple of both, "
                f"not {provider!r}"
            )
    return meter_provider, tracer_provider


class OTelSink:
    """Receives settled calls (a pipeline sink) and records them with OpenTelemetry."""

    def __init__(self, otel: Any = None) -> None:
        from opentelemetry import metrics, trace
        from opentelemetry.context import Context

        meter_provider, tracer_provider = _providers(otel)
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("llmtally", __version__)
        # The global provider's tracer is a proxy until one is set: a provider set later is used.
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("llmtally", __version__)
        self._in_span = trace.set_span_in_context
        self._root = Context()
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.cost = meter.create_counter(
            "llmtally.client.cost", unit="USD", description="Cost of GenAI operations, as priced by llmtally"
        )

    def __call__(self, call: Call) -> None:
        operation = _OPERATIONS.get(call.endpoint, call.endpoint)
        model = call.requested_model or call.model or "unknown"
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": _PROVIDERS.get(call.provider or "", call.provider or "unknown"),
            "gen_ai.request.model": model,
        }
        if call.model:
            attrs["gen_ai.response.model"] = call.model
        if call.url_host:
            attrs["server.address"] = call.url_host
        error_type = None
        if not call.ok:
            error_type = str(call.status) if call.status else (call.error or "error").split(":")[0]
        duration = dict(attrs)
        if error_type is not None:
            duration["error.type"] = error_type
        self.duration.record(call.latency, duration)
        u = call.usage
        if u is not None:
            self.tokens.record(u.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(u.completion_tokens, {**attrs, "gen_ai.token.type": "output"})
        if call.cost is not None and call.cost:
            self.cost.add(float(call.cost), attrs)
        self._span(call, f"{operation} {model}", dict(duration))

    def _span(self, call: Call, name: str, attributes: dict[str, Any]) -> None:
        """The call's own CLIENT span, made now with the call's start and end times, a child of the
        span that was current when the request was sent (``Call.span``)."""
        if call.request_id:
            attributes["gen_ai.response.id"] = call.request_id
        u = call.usage
        if u is not None:
            for attribute, field in _SPAN_KINDS:
                value = getattr(u, field)
                if value or attribute in _ALWAYS:
                    attributes[attribute] = value
        if call.cost is not None:
            attributes["llmtally.cost"] = float(call.cost)
            attributes["llmtally.currency"] = call.currency
            if call.computed_cost is not None:  # the provider reported the cost; this is our price
                attributes["llmtally.computed_cost"] = float(call.computed_cost)
        attributes["llmtally.estimated"] = call.estimated
        attributes["llmtally.stream"] = call.stream
        parent = call.span
        start = int(call.started_at * 1e9)
        span = self.tracer.start_span(
            name,
            context=self._root if parent is None else self._in_span(parent),  # type: ignore[arg-type]
            kind=self._client,
            attributes=attributes,
            start_time=start,
        )
        if "error.type" in attributes:
            span.set_status(self._error)
        span.end(end_time=start + int(call.latency * 1e9))
