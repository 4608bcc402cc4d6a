"""The background writer: calls reach the ledger through a queue, in batches, off the call path.

The capture settles calls lazily (see ``_scope``); this thread settles what is queued every
``interval`` seconds, turns the calls into rows and writes them in one transaction per batch.
``flush()`` waits until everything settled before it is on disk. The queue is flushed at normal
exit (atexit) and on SIGTERM. A process killed with SIGKILL loses at most the calls of the last
``interval`` (0.5 s by default).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from queue import Empty, SimpleQueue
from typing import Any

from .. import _scope
from ._records import to_row

__all__ = ["Writer"]

log = logging.getLogger("llmtally")

#: Rows kept in memory while the ledger cannot be written (then the oldest are dropped, logged).
MAX_BACKLOG = 100_000


class Writer:
    """Owns the ledger's background thread; ``sink`` is what the capture calls for each Call."""

    def __init__(self, ledger: Any, interval: float = 0.5, batch: int = 10_000) -> None:
        self.ledger = ledger
        self.interval = interval
        self.batch = batch
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._backlog: list[tuple[Any, ...]] = []
        self._stop = threading.Event()
        self._thread = self._start()
        self.written = 0

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="llmtally-ledger", daemon=True)
        thread.start()
        return thread

    def sink(self, call: Any) -> None:
        self._queue.put(call)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _scope.flush()  # settle what the call path queued
            except Exception:  # pragma: no cover - settle() logs its own failures
                log.exception("llmtally: settling calls for the ledger failed")
            self._drain(self.interval)

    def _drain(self, wait: float) -> None:
        calls: list[Any] = []
        markers: list[threading.Event] = []
        try:
            item = self._queue.get(timeout=wait)
            while True:
                if isinstance(item, threading.Event):
                    markers.append(item)
                    break  # write what came before the marker, then release its waiter
                calls.append(item)
                if len(calls) >= self.batch:
                    break
                item = self._queue.get_nowait()
        except Empty:
            pass
        self._write(calls)
        for marker in markers:
            marker.set()

    def _write(self, calls: list[Any]) -> None:
        rows = self._backlog + [to_row(c) for c in calls]
        if not rows:
            return
        try:
            self.ledger.write(rows)
        except Exception as exc:
            if len(rows) > MAX_BACKLOG:
                log.error("llmtally: ledger backlog over %d rows; dropping the oldest", MAX_BACKLOG)
                rows = rows[-MAX_BACKLOG:]
            self._backlog = rows
            log.warning(
                "llmtally: cannot write to the ledger %s (%s); %d records kept to retry",
                self.ledger,
                exc,
                len(rows),
            )
            return
        self._backlog = []
        self.written += len(rows)

    def flush(self, timeout: float | None = 30) -> bool:
        """Settle queued calls and wait until they are written; ``False`` if it timed out."""
        _scope.flush()
        if not self._thread.is_alive():
            return False
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self, timeout: float | None = 30) -> None:
        self.flush(timeout)
        self._stop.set()
        self._queue.put(threading.Event())  # wake the thread
        self._thread.join(timeout)
        self.ledger.close()

    def after_fork(self) -> None:
        """In a forked child: a fresh queue and thread (the parent's thread does not exist here)."""
        self._queue = SimpleQueue()
        self._stop = threading.Event()
        self._thread = self._start()


_current: Writer | None = None
_hooks_installed = False


def current() -> Writer | None:
    return _current


def set_current(writer: Writer | None) -> None:
    global _current, _hooks_installed
    _current = writer
    if writer is not None and not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork)
        _install_sigterm()


def _at_exit() -> None:
    writer = _current
    if writer is not None:
        try:
            writer.flush(timeout=10)
        except Exception:  # pragma: no cover
            log.exception("llmtally: could not flush the ledger at exit")


def _after_fork() -> None:
    if _current is not None:
        _current.after_fork()


def _install_sigterm() -> None:
    """Flush on SIGTERM, then die of it as the process would have; only where nobody handles it."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def on_term(signum: int, frame: Any) -> None:
            _at_exit()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_term)
    except (ValueError, OSError):  # pragma: no cover - not the main thread of the main interpreter
        pass
