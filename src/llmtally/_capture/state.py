"""The states of one exchange, shared by the call path (``exchange``) and settlement (``settle``)."""

from __future__ import annotations

import enum

__all__ = ["State"]


class State(enum.Enum):
    """Where one exchange is; only the call path moves it, and only forward."""

    #: The request is out, or about to be; no response yet.
    SENDING = "sending"
    #: An SSE body the caller is reading; its events are parsed as they pass.
    STREAMING = "streaming"
    #: A JSON body the caller is reading in chunks; kept whole until its end, then parsed.
    COLLECTING = "collecting"
    #: The whole body is in memory (or in the SDK's decoded dict); queued, parsed at settlement.
    BODY = "body"
    #: The stream ended, was closed or broke; its parser holds what it learned; queued.
    STREAMED = "streamed"
    #: No usable answer: a connection error, a timeout, an HTTP error status; queued.
    FAILED = "failed"
    #: Settled: parsed, priced, delivered to its scopes and sinks (or found not to be a model call).
    SETTLED = "settled"
