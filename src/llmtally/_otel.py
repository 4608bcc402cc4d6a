"""OpenTelemetry export: the GenAI semantic-convention metrics, a cost counter, span attributes.

``llmtally.configure(otel=True)`` (``pip install "llmtally[otel]"``) sends every call to the
global MeterProvider (or the one passed as ``otel=provider``):

- ``gen_ai.client.token.usage`` (histogram, ``{token}``), once per token type (``input``, ``output``);
- ``gen_ai.client.operation.duration`` (histogram, seconds), with ``error.type`` on failures;
- ``llmtally.client.cost`` (counter, USD) for priced calls;

each with ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model`` and ``server.address``. The span that was current when the request was
sent gets ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``, the cache and reasoning
counts and ``llmtally.cost_usd``, so existing collectors, Prometheus and Grafana see them.
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


class OTelSink:
    """Receives settled calls (a pipeline sink) and records them with OpenTelemetry."""

    def __init__(self, meter_provider: Any = None) -> None:
        from opentelemetry import metrics

        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("llmtally", __version__)
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
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATIONS.get(call.endpoint, call.endpoint),
            "gen_ai.provider.name": _PROVIDERS.get(call.provider or "", call.provider or "unknown"),
            "gen_ai.request.model": call.requested_model or call.model or "unknown",
        }
        if call.model:
            attrs["gen_ai.response.model"] = call.model
        if call.url_host:
            attrs["server.address"] = call.url_host
        duration = dict(attrs)
        if not call.ok:
            duration["error.type"] = (
                str(call.status) if call.status else (call.error or "error").split(":")[0]
            )
        self.duration.record(call.latency, duration)
        u = call.usage
        if u is not None:
            self.tokens.record(u.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(u.completion_tokens, {**attrs, "gen_ai.token.type": "output"})
        if call.cost is not None and call.cost:
            self.cost.add(float(call.cost), attrs)
        span = getattr(call, "span", None)
        if span is not None and u is not None:
            attributes: dict[str, Any] = {name: getattr(u, field) for name, field in _SPAN_KINDS}
            attributes["gen_ai.response.model"] = call.model or ""
            attributes["llmtally.cost_usd"] = "" if call.cost is None else str(call.cost)
            if call.computed_cost is not None:  # the provider reported cost_usd; this is our price
                attributes["llmtally.computed_cost_usd"] = str(call.computed_cost)
            attributes["llmtally.estimated"] = call.estimated
            span.set_attributes(attributes)
