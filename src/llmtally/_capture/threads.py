"""Carry the open scopes into threads: an instrumentor of ``threading`` and ``concurrent.futures``.

contextvars do not cross into new threads before Python 3.14, so a call made in a
``threading.Thread`` or a ``ThreadPoolExecutor`` task would count nowhere (LangChain's callback
counts nothing in a plain executor). Two small, reversible patches fix that:

- ``Thread.start`` gives the new thread the scopes open where it was started;
- ``ThreadPoolExecutor.submit`` gives each task the scopes open where it was submitted. Pool
  workers themselves inherit nothing: they outlive the scope that happened to create them.

Only llmtally's own variables are carried (the open scopes, and whether metering is suppressed);
the rest of the caller's context is left alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._core.scope import _scopes, _suppressed

__all__ = ["ThreadsInstrumentor"]


def _run_in(scopes: Any, suppressed: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    token = _scopes.set(scopes)
    quiet = _suppressed.set(suppressed) if suppressed is not None else None
    try:
        return fn(*args, **kwargs)
    finally:
        if quiet is not None:
            _suppressed.reset(quiet)
        _scopes.reset(token)


class ThreadsInstrumentor:
    """Patches ``Thread.start`` and ``ThreadPoolExecutor.submit``; ``unpatch()`` restores them."""

    def __init__(self) -> None:
        self._start: Any = None
        self._submit: Any = None

    def patch(self) -> None:
        if self._start is not None:
            return
        orig_start = self._start = threading.Thread.start
        orig_submit = self._submit = ThreadPoolExecutor.submit

        def start(thread: threading.Thread) -> None:
            scopes = _scopes.get()
            suppressed = _suppressed.get()
            # A pool's worker thread outlives the scope that made it: its tasks carry their own.
            worker = (
                getattr(getattr(thread, "_target", None), "__module__", None) == "concurrent.futures.thread"
            )
            if (scopes or suppressed is not None) and not worker:
                run = thread.run

                def run_in_scopes() -> None:
                    _run_in(scopes, suppressed, run)

                thread.run = run_in_scopes  # type: ignore[method-assign]
            orig_start(thread)

        def submit(executor: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            scopes = _scopes.get()
            suppressed = _suppressed.get()
            if scopes or suppressed is not None:
                return orig_submit(executor, _run_in, scopes, suppressed, fn, *args, **kwargs)
            return orig_submit(executor, fn, *args, **kwargs)

        threading.Thread.start = start  # type: ignore[method-assign,assignment]
        ThreadPoolExecutor.submit = submit  # type: ignore[method-assign,assignment]

    def unpatch(self) -> None:
        if self._start is None:
            return
        threading.Thread.start = self._start  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = self._submit  # type: ignore[method-assign]
        self._start = self._submit = None
