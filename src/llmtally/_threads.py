"""Carry the open scopes into threads.

contextvars do not cross into new threads before Python 3.14, so a call made in a
``threading.Thread`` or a ``ThreadPoolExecutor`` task would count nowhere (LangChain's callback
counts nothing in a plain executor). Two small, reversible patches fix that:

- ``Thread.start`` gives the new thread the scopes open where it was started;
- ``ThreadPoolExecutor.submit`` gives each task the scopes open where it was submitted. Pool
  workers themselves inherit nothing: they outlive the scope that happened to create them.

Only llmtally's own variable is carried; the rest of the caller's context is left alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import _scope

__all__ = ["patch_threads", "unpatch_threads"]

_orig_start: Any = None
_orig_submit: Any = None


def _run_in_scopes(scopes: tuple[Any, ...], fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    token = _scope._scopes.set(scopes)
    try:
        return fn(*args, **kwargs)
    finally:
        _scope._scopes.reset(token)


def _start(self: threading.Thread) -> None:
    scopes = _scope._scopes.get()
    target = getattr(self, "_target", None)
    if scopes and getattr(target, "__module__", None) != "concurrent.futures.thread":
        run = self.run

        def run_in_scopes() -> None:
            _run_in_scopes(scopes, run)

        self.run = run_in_scopes  # type: ignore[method-assign]
    _orig_start(self)


def _submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    scopes = _scope._scopes.get()
    if scopes:
        return _orig_submit(self, _run_in_scopes, scopes, fn, *args, **kwargs)
    return _orig_submit(self, fn, *args, **kwargs)


def patch_threads() -> None:
    global _orig_start, _orig_submit
    if _orig_start is not None:
        return
    _orig_start = threading.Thread.start
    _orig_submit = ThreadPoolExecutor.submit
    threading.Thread.start = _start  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = _submit  # type: ignore[method-assign,assignment]


def unpatch_threads() -> None:
    global _orig_start, _orig_submit
    if _orig_start is None:
        return
    threading.Thread.start = _orig_start  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = _orig_submit  # type: ignore[method-assign]
    _orig_start = _orig_submit = None
