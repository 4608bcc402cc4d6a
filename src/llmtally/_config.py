"""Process-wide settings: ``configure()`` and ``flush()``."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

__all__ = ["configure", "configure_from_env", "flush"]

log = logging.getLogger("llmtally")

ENV_LEDGER = "LLMTALLY_LEDGER"
_lock = threading.Lock()
_configured = False
_ledger_url: str | None = None


def configure(*, ledger: str | None = None, flush_interval: float | None = None, otel: Any = None) -> None:
    """Set where llmtally records calls.

    ``ledger`` is a URL: ``sqlite:///path.db`` (``sqlite://`` for the default file in the user's
    data directory), ``postgresql://user:password@host/dbname`` or ``none``. Once a ledger is set,
    every LLM call the process makes is recorded, whether or not a scope is open. A bad URL, a
    database that cannot be reached, or one that is not an llmtally ledger, raises
    ``llmtally.LedgerError`` and changes nothing::

        llmtally.configure(ledger="sqlite:///llm-calls.db")

    ``otel=True`` exports the GenAI semantic-convention metrics, a cost counter and span attributes
    to the global OpenTelemetry providers (``otel=meter_provider`` to choose one, ``False`` to stop).

    If the ledger later becomes unwritable (server down, disk full), records wait in a local spool
    file (``LLMTALLY_SPOOL_DIR``, else beside the default ledger) and are written when it is back.
    """
    global _configured, _ledger_url
    if otel is not None:
        _configure_otel(otel)
    if ledger is None:
        return
    from ._capture import add_sink, remove_sink
    from .ledger import open_ledger
    from .ledger._writer import Writer, current, set_current

    with _lock:
        new = open_ledger(ledger)  # raises before anything changes
        old = current()
        if old is not None:
            remove_sink(old.sink)
            old.close()
        _configured = True
        if new is None:
            set_current(None)
            return
        _ledger_url = ledger
        writer = Writer(new, interval=flush_interval or 0.5)
        set_current(writer)
        add_sink(writer.sink)


_otel_sink: Any = None


def _configure_otel(otel: Any) -> None:
    """``True``: the global OpenTelemetry providers; a MeterProvider: that one; ``False``: off."""
    global _otel_sink
    from . import _capture

    if _otel_sink is not None:
        _capture.remove_sink(_otel_sink)
        _otel_sink = None
        _capture._otel_spans = None
        _capture._eager = False
    if otel is False:
        return
    try:
        from opentelemetry import trace

        from .ledger.otel import OTelSink
    except ImportError as exc:
        raise RuntimeError('OpenTelemetry export needs: pip install "llmtally[otel]"') from exc
    _otel_sink = OTelSink(None if otel is True else otel)
    _capture._otel_spans = trace.get_current_span
    _capture._eager = True
    _capture.add_sink(_otel_sink)


def configure_from_env() -> None:
    """Honour ``LLMTALLY_LEDGER`` unless ``configure()`` was called; a bad value is logged, not raised."""
    url = os.environ.get(ENV_LEDGER)
    if _configured or not url:
        return
    from .ledger import LedgerError, redact_url

    try:
        configure(ledger=url)
    except LedgerError as exc:
        log.error("llmtally: %s=%r: %s; calls are not recorded", ENV_LEDGER, redact_url(url), exc)


def flush(timeout: float | None = 30) -> bool:
    """Settle every queued call and, with a ledger, wait until it is written. ``False`` on timeout."""
    from . import _scope
    from .ledger._writer import current

    _scope.flush()
    writer: Any = current()
    return True if writer is None else bool(writer.flush(timeout))


def current_ledger_url() -> str | None:
    """The URL of the ledger configured now (as given, password included: never print it), or None."""
    from .ledger._writer import current

    return _ledger_url if current() is not None else None
