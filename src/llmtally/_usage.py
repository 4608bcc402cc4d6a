"""Token kinds and the record of one metered call.

Every wire format is normalised to one convention (OpenAI's), so nothing downstream needs to know
which provider answered:

- ``prompt_tokens`` is all input, *including* cache reads and cache writes;
- ``cached_tokens`` (cache reads) and ``cache_write_tokens`` are parts of ``prompt_tokens``;
- ``completion_tokens`` is all output, *including* ``reasoning_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

__all__ = ["Call", "Usage"]


@dataclass(slots=True)
class Usage:
    """Tokens of one call, by kind (see the module docstring for what includes what)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: Part of ``cache_write_tokens`` written with a one-hour lifetime (Anthropic prices it higher).
    cache_write_1h_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Call:
    """One LLM API request as llmtally saw it on the wire.

    Holds counts, model names, timing and cost; never prompt or completion text, keys or headers.
    ``cost`` is ``None`` when the price is unknown (never zero by default); failed requests cost
    ``Decimal(0)``. ``scope_path`` names the scopes open when it was sent, outermost first.
    """

    # Defaults on the class: settling a call sets only the fields it has (a plain class rather
    # than a dataclass, whose __init__ would store all nineteen every time).
    requested_model: str | None = None
    usage: Usage | None = None
    cost: Decimal | None = None
    currency = "USD"
    status: int | None = None
    ok = True
    error: str | None = None
    stream = False
    estimated = False
    started_at = 0.0
    latency = 0.0
    request_id: str | None = None
    url_host: str | None = None
    price_source: str | None = None
    scope_path: tuple[str, ...] = ()
    tags: Mapping[str, Any] = MappingProxyType({})
    #: The OpenTelemetry span current when the request was sent (only with ``configure(otel=...)``).
    span: Any = None

    def __init__(self, provider: str | None, endpoint: str, model: str | None, **fields: Any) -> None:
        self.provider = provider
        self.endpoint = endpoint
        self.model = model
        for name, value in fields.items():
            if not hasattr(Call, name):
                raise TypeError(f"Call has no field {name!r}")
            setattr(self, name, value)

    @property
    def priced(self) -> bool:
        return self.cost is not None

    def __repr__(self) -> str:
        u = self.usage
        tokens = f"{u.prompt_tokens}+{u.completion_tokens}" if u else "?"
        cost = "unknown" if self.cost is None else f"${self.cost}"
        est = " estimated" if self.estimated else ""
        return (
            f"<Call {self.provider}/{self.model} {self.endpoint} status={self.status} "
            f"tokens={tokens}{est} cost={cost} latency={self.latency * 1000:.1f}ms>"
        )
