"""The background writer: calls reach the ledger through a queue, in batches, off the call path.

The capture settles calls lazily (see ``_core.pipeline``); this thread settles what is queued
every ``interval`` seconds, turns the calls into rows and writes them in one transaction per batch.
``flush()`` waits until everything settled before it is on disk. The runtime flushes it at normal
exit (atexit) and on SIGTERM. A process killed with SIGKILL loses at most the calls of the last
``interval`` (0.5 s by default).

When a batch cannot be written (the server is down, the disk is full, the file is locked), it is
appended to the ledger's spool file (``_spool``) and the ledger is tried again with a growing
delay (up to ``MAX_RETRY_DELAY``; a ``flush()`` tries at once, except the one at exit). The first
write that succeeds is preceded by a replay of the spool, which is then deleted: records arrive
late but exactly once.
Only if the spool itself cannot be written are records kept in memory (at most ``MAX_BACKLOG``).

A record the ledger *refuses* for what it holds (``_records.refused``: a value out of range, a
wrong type from a hand-edited spool) never blocks the others: the batch is split until the
refused rows are found, they go to the dead-letter file with the reason (``_spool``), and the rest
are written. Rows are only set apart when others of the same batch could be written, or when
``check_row`` names what is wrong with them: a ledger that refuses everything is an outage, and
its rows are spooled, never quarantined.
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from .._core.pipeline import PIPELINE
from .._core.refusal import Refusal
from ._records import check_row, refusal_row, refused, split_kinds, to_row
from ._spool import Spool

if TYPE_CHECKING:
    from .._core.usage import Call
    from . import Ledger

__all__ = ["Writer"]

log = logging.getLogger("llmtally")

#: Rows kept in memory while neither the ledger nor its spool can be written (then the oldest are
#: dropped, logged).
MAX_BACKLOG = 100_000
#: Seconds between attempts at a ledger that keeps failing, at most (batches are spooled meanwhile).
MAX_RETRY_DELAY = 30.0


def _when(timestamp: Any) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(timestamp))) + " UTC"
    except (TypeError, ValueError, OverflowError):
        return repr(timestamp)


class _NoRetry(threading.Event):
    """A flush marker that does not make the writer try a failing ledger before its retry time."""


class Writer:
    """Owns the ledger's background thread; ``sink`` is what the capture calls for each Call."""

    def __init__(self, ledger: Ledger, interval: float = 0.5, batch: int = 10_000) -> None:
        self.ledger = ledger
        self.interval = interval
        self.batch = batch
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._backlog: list[tuple[Any, ...]] = []
        try:
            self.spool: Spool | None = Spool(ledger.url)
        except Exception:  # pragma: no cover - no data directory at all: memory is the last resort
            log.exception("llmtally: no spool directory for the ledger %s", ledger)
            self.spool = None
        #: In a child forked from a process writing a ledger a child must not touch (SQLite): every
        #: record goes to the spool, and the parent's writer, which replays the spool every
        #: interval, moves them in.
        self.spool_only = False
        self._failing = False  # the last attempt at the ledger failed
        self._retry_at = 0.0  # time.monotonic() before which the ledger is not tried (unless flushed)
        self._delay = 0.0
        self._stop = threading.Event()
        self._idle = False
        #: In a child forked from a thread other than the main one: that thread is the child's main
        #: thread, and when it ends the process ends only once no other thread runs (see _orphaned).
        self._orphan = False
        self._waking = threading.Lock()
        self._thread = self._start()
        self.written = 0

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="llmtally-ledger", daemon=True)
        thread.start()
        return thread

    def sink(self, call: Call) -> None:
        self._queue.put(call)
        if self._idle:
            self._wake()

    def note_refusal(self, record: Refusal) -> None:
        """A refusal record (``_core.refusal``): queued with the calls, written in the same batches,
        spooled and replayed the same way."""
        self._queue.put(record)
        if self._idle:
            self._wake()

    def _wake(self) -> None:
        """A forked child's first call: its writer thread starts now, not at the fork. A thread
        started at the fork would keep alive a child that ends its forking thread (a fork from a
        thread, then ``sys.exit``), waiting for nothing."""
        with self._waking:
            if self._idle:
                self._thread = self._start()
                self._idle = False

    def _run(self) -> None:
        while not self._stop.is_set():
            orphaned = self._orphaned()
            try:
                PIPELINE.flush()  # settle what the call path queued
            except Exception:  # pragma: no cover - settle() logs its own failures
                log.exception("llmtally: settling calls for the ledger failed")
            # An orphan looks again soon: the process's end waits for this thread.
            self._drain(0 if orphaned else min(self.interval, 0.2) if self._orphan else self.interval)
            if orphaned and self._queue.empty():
                return  # everything is written: let the process end

    def _orphaned(self) -> bool:
        """In a child forked from a non-main thread, that thread has ended (a ``sys.exit`` there, or
        its function returned) and no other thread of the program is left: such a process ends when
        its last thread does, atexit never runs, and this thread must write what it has and end."""
        if not self._orphan or threading.main_thread().is_alive():
            return False
        me = threading.current_thread()
        return all(t.daemon for t in threading.enumerate() if t is not me)

    def has_work(self) -> bool:
        """Calls were made since this writer started (a forked child's writer starts idle)."""
        return not self._idle or not self._queue.empty()

    def _drain(self, wait: float) -> None:
        """Collect calls for ``wait`` seconds (or until a batch is full, or a flush asks), then
        write them in one transaction: the writer wakes once an interval, not once a call, so it
        takes the GIL from the callers' threads as little as it can."""
        calls: list[Any] = []
        refusals: list[Refusal] = []
        markers: list[threading.Event] = []
        deadline = time.monotonic() + wait
        get = self._queue.get
        while len(calls) < self.batch:
            timeout = deadline - time.monotonic()
            try:
                item = get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except Empty:
                break
            if isinstance(item, threading.Event):
                markers.append(item)
                break  # write what came before the marker, then release its waiter
            if type(item) is Refusal:
                refusals.append(item)
                continue
            calls.append(item)
        try:
            self._write(calls, force=any(not isinstance(m, _NoRetry) for m in markers), refusals=refusals)
        except Exception:  # pragma: no cover - _write handles ledger and spool failures itself
            log.exception("llmtally: the ledger writer failed")
        for marker in markers:
            marker.set()

    def _write(self, calls: list[Any], force: bool = False, refusals: list[Refusal] | None = None) -> None:
        rows = [to_row(c) for c in calls]
        mixed = bool(refusals)
        if refusals:
            rows += [refusal_row(r) for r in refusals]
        if self.spool_only:
            self._keep(rows)
            return
        if self._failing and not force and time.monotonic() < self._retry_at:
            self._keep(rows)  # the ledger failed a moment ago: do not hammer it
            return
        try:
            self._catch_up()
            if rows:
                self._write_rows(rows, mixed=mixed)
        except Exception as exc:
            self._failed(exc)
            self._keep(rows)
            return
        if self._failing:
            self._failing, self._delay = False, 0.0
            log.info("llmtally: the ledger %s can be written again", self.ledger)
        self.written += len(rows)

    def _catch_up(self) -> None:
        """Replay the spool (this process's or another's), then rows kept in memory, if any."""
        spool = self.spool
        if spool is not None and spool.pending():
            n = spool.replay(lambda chunk: self._write_rows(list(chunk), ignore_duplicates=True), self.batch)
            if n:
                log.info("llmtally: replayed %d spooled records into the ledger %s", n, self.ledger)
        if self._backlog:
            # A failed write may have committed before it failed (lost reply): ids decide.
            self._write_rows(self._backlog, ignore_duplicates=True)
            log.info("llmtally: wrote %d records kept in memory to the ledger", len(self._backlog))
            self._backlog = []

    def _put(self, rows: list[tuple[Any, ...]], ignore_duplicates: bool, mixed: bool = True) -> None:
        """One ``Ledger.write`` of rows; ``mixed``: they may hold refusals' rows (``RefusalRow``),
        written in the same transaction. A batch of calls only (the usual one) is not looked through."""
        if not mixed:
            self.ledger.write(rows, ignore_duplicates=ignore_duplicates)
            return
        calls, refusals = split_kinds(rows)
        if refusals:
            self.ledger.write(calls, ignore_duplicates=ignore_duplicates, refusals=refusals)
        else:
            self.ledger.write(calls, ignore_duplicates=ignore_duplicates)

    def _write_rows(
        self, rows: list[tuple[Any, ...]], ignore_duplicates: bool = False, mixed: bool = True
    ) -> None:
        """Write rows, setting apart those the ledger refuses for what they hold; raises when the
        ledger cannot be written at all (the caller spools)."""
        try:
            self._put(rows, ignore_duplicates, mixed)
            return
        except Exception as exc:
            first = exc
        named = [(row, reason) for row in rows if (reason := check_row(row)) is not None]
        if named:
            self._quarantine(named)
            bad = {id(row) for row, _ in named}
            rows = [row for row in rows if id(row) not in bad]
            if not rows:
                return
            try:
                # The failed write wrote nothing (one transaction), but a lost reply is possible.
                self._put(rows, True)
                return
            except Exception as exc:
                first = exc
        if not refused(first) or len(rows) < 2:
            raise first
        self._split(rows, first)

    def _split(self, rows: list[tuple[Any, ...]], first: Exception) -> None:
        """Halve a refused batch until the refused rows are alone; quarantine them if the rest went
        in (else it was no row's fault: raise, and the batch is spooled)."""
        written = 0
        alone: list[tuple[tuple[Any, ...], str]] = []
        parts = [rows]
        while parts:
            part = parts.pop()
            try:
                self._put(part, True)
                written += len(part)
            except Exception as exc:
                if not refused(exc):
                    raise
                if len(part) == 1:
                    alone.append((part[0], f"refused by the ledger: {type(exc).__name__}: {exc}"[:500]))
                else:
                    mid = len(part) // 2
                    parts += [part[mid:], part[:mid]]
        if not written:
            raise first
        self._quarantine(alone)

    def _quarantine(self, entries: list[tuple[tuple[Any, ...], str]]) -> None:
        if not entries:
            return
        where = self.spool.dead_path if self.spool is not None else "(nowhere: no spool directory)"
        log.error(
            "llmtally: %d record(s) cannot be stored in the ledger %s (%s); set apart in %s "
            "(see `llmtally ledger quarantined`)",
            len(entries),
            self.ledger,
            entries[0][1],
            where,
        )
        if self.spool is not None:
            try:
                self.spool.quarantine(entries)
                return
            except OSError as exc:
                log.error("llmtally: cannot write the dead-letter file %s (%s)", where, exc)
        for row, reason in entries:  # the last resort: the log has them
            log.error("llmtally: unstored record (%s): %r", reason, row)

    def _failed(self, exc: Exception) -> None:
        self._delay = min(max(2 * self._delay, self.interval, 0.5), MAX_RETRY_DELAY)
        self._retry_at = time.monotonic() + self._delay
        if not self._failing:
            self._failing = True
            log.warning(
                "llmtally: cannot write to the ledger %s (%s); records go to the spool %s until it "
                "can be written again",
                self.ledger,
                exc,
                self.spool.path if self.spool else "(none: kept in memory)",
            )

    def _keep(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows the ledger did not take: to the spool, else (last resort) to memory."""
        rows = self._backlog + rows
        if not rows:
            return
        if self.spool is not None:
            try:
                self.spool.append(rows)
            except OSError as exc:
                log.error("llmtally: cannot write to the spool %s either (%s)", self.spool.path, exc)
            else:
                self._backlog = []
                return
        if len(rows) > MAX_BACKLOG:
            log.error("llmtally: ledger backlog over %d rows; dropping the oldest", MAX_BACKLOG)
            rows = rows[-MAX_BACKLOG:]
        self._backlog = rows
        log.warning("llmtally: %d records kept in memory to retry", len(rows))

    def flush(self, timeout: float | None = 30, *, retry: bool = True) -> bool:
        """Settle queued calls and wait until they are written; ``False`` if it timed out.

        "Written" includes written to the spool. With ``retry=False``, a ledger that is failing is
        not tried again (at exit: a dead server must not hold the process up, the spool is safe).
        """
        PIPELINE.flush()
        if self._idle:
            self._wake()
        if not self._thread.is_alive():
            return False
        marker = threading.Event() if retry else _NoRetry()
        self._queue.put(marker)
        return marker.wait(timeout)

    def at_exit(self, timeout: float | None = 20) -> None:
        """The flush at exit; records neither the ledger nor the spool could take are lost with the
        process, and the log says so (a full disk that never came back)."""
        self.flush(timeout, retry=False)
        if self._backlog:
            spool = self.spool.path if self.spool is not None else "(no spool directory)"
            log.error(
                "llmtally: %d record(s) are lost at exit: neither the ledger %s nor its spool %s could "
                "be written (calls from %s to %s)",
                len(self._backlog),
                self.ledger,
                spool,
                _when(min(row[1] for row in self._backlog)),
                _when(max(row[1] for row in self._backlog)),
            )

    def close(self, timeout: float | None = 30) -> None:
        self.flush(timeout)
        self._stop.set()
        self._queue.put(threading.Event())  # wake the thread
        self._thread.join(timeout)
        self.ledger.close()

    def after_fork(self, orphan: bool = False) -> None:
        """In a forked child: a fresh queue and thread (the parent's thread does not exist here);
        the parent's queued records are the parent's to write. No record is in memory to inherit:
        the backlog goes too (the parent writes it). ``orphan``: forked from a non-main thread."""
        self._orphan = orphan
        self._queue = SimpleQueue()
        self._backlog = []
        self._stop = threading.Event()
        self.ledger.after_fork()  # e.g. a database connection the child must not share with its parent
        if not getattr(self.ledger, "fork_safe", True) and self.spool is not None:
            self.spool_only = True
        self._waking = threading.Lock()
        if orphan:  # settles the child's calls and ends with it (see _orphaned)
            self._idle = False
            self._thread = self._start()
        else:
            self._idle = True  # started by the child's first call or flush (see _wake)
