"""The spool: records kept on local disk while their ledger cannot be written.

One file per ledger, ``<spool dir>/<hash of the ledger's redacted URL>.jsonl``, one record per
line as a JSON object keyed by column name. The spool directory is ``LLMTALLY_SPOOL_DIR`` if set,
else ``spool/`` next to the default SQLite ledger in the user's data directory. Records hold no
prompt text, keys or headers (see ``_records``), and the file name is a hash: no password is in it.

Several processes writing to one ledger share its spool file; every access holds an exclusive
``flock`` on it (POSIX), so a replay never deletes lines another process has just appended.
Replays write with ``ignore_duplicates``: a record that reached the ledger before its batch was
reported failed (a lost COMMIT reply), or a replay cut short, is not written twice.

Beside it, the *dead-letter file* ``<hash>.dead.jsonl`` holds what can never be written as it is:
a spool line that is not a record (torn by a crash, or edited by hand), and records the ledger
refused for what they hold. Each line says why, when, and for which ledger; ``llmtally ledger
quarantined`` shows them and ``llmtally ledger reimport`` tries them again once fixed. Nothing in
it blocks the records behind it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._records import check_row, from_spool, to_spool

__all__ = ["ENV_SPOOL_DIR", "Spool", "spool_dir"]

log = logging.getLogger("llmtally")

ENV_SPOOL_DIR = "LLMTALLY_SPOOL_DIR"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spool file is assumed
    fcntl = None  # type: ignore[assignment]

#: Spool and dead-letter files open in this process, with their locks held.
_held: set[int] = set()
#: Held while a spool file is opened and noted in ``_held``, or forgotten and closed, and by fork():
#: a child forked in between would keep a copy of a file the parent then locks, and the lock (which
#: belongs to the open file both share) would outlive the parent's close for as long as the child
#: lives: the child's own next append would wait on it.
_opening = threading.Lock()
#: Claims this process's replays are writing now (any other claim of this process is stranded).
_in_flight: set[str] = set()


def _close_inherited() -> None:
    """In a forked child: close the copies of files a parent's thread had open and locked.

    A lock taken with flock belongs to the open file, which the child shares: had the child kept its
    copy, the parent's lock would outlive the parent's own close for as long as the child lives, and
    every process using the spool would wait for it.
    """
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


class _ForFork:
    """Whether this fork's ``before`` hook took ``_opening``: a module first imported while a fork's
    ``before`` hooks run (llmtally's own runtime imports this one then) gets its ``after_in_parent``
    hook called without its ``before``, and must not release a lock it never took."""

    held = False

    @classmethod
    def take(cls) -> None:
        _opening.acquire()
        cls.held = True

    @classmethod
    def give_back(cls) -> None:
        if cls.held:
            cls.held = False
            _opening.release()


def _child() -> None:
    _ForFork.held = False
    _opening._at_fork_reinit()  # type: ignore[attr-defined]
    _close_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_ForFork.take, after_in_parent=_ForFork.give_back, after_in_child=_child)


def spool_dir() -> str:
    """Where spool files go: ``LLMTALLY_SPOOL_DIR``, else ``spool/`` beside the default ledger."""
    configured = os.environ.get(ENV_SPOOL_DIR)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    from . import default_sqlite_path

    return os.path.join(os.path.dirname(default_sqlite_path()), "spool")


class Spool:
    """The spool file of one ledger URL (give it the redacted URL)."""

    def __init__(self, url: str, directory: str | None = None) -> None:
        self.url = url
        digest = hashlib.sha256(url.encode()).hexdigest()[:24]
        self.path = os.path.join(directory or spool_dir(), f"{digest}.jsonl")
        self.dead_path = os.path.join(directory or spool_dir(), f"{digest}.dead.jsonl")

    def __repr__(self) -> str:
        return f"<Spool {self.path}>"

    def pending(self) -> bool:
        """Whether there are records to replay: the file (deleted once replayed), or the claim of a
        replay that died; cheap enough for every batch."""
        return os.path.exists(self.path) or bool(self._orphans())

    def _claims(self) -> list[str]:
        """The claim files of this spool: rows a replay took out of it while it writes them."""
        directory, base = os.path.split(self.path)
        prefix = base[: -len(".jsonl")] + ".claim-"
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        return [os.path.join(directory, n) for n in names if n.startswith(prefix)]

    def _orphans(self) -> list[str]:
        """Claims whose replay is over without having finished: its process is gone, or it is this
        process's and could not be put back."""
        out = []
        for path in self._claims():
            try:
                pid = int(os.path.basename(path).split(".claim-")[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid():
                if path not in _in_flight:
                    out.append(path)
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                out.append(path)
            except OSError:
                pass  # alive, another user's: theirs
        return out

    @contextlib.contextmanager
    def _locked(self, create: bool, path: str | None = None) -> Iterator[int | None]:
        """The file open for read and append under an exclusive lock; ``None`` if it does not exist."""
        path = path or self.path
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if create:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            flags |= os.O_CREAT
        while True:
            try:
                with _opening:
                    fd = os.open(path, flags, 0o600)
                    _held.add(fd)
            except FileNotFoundError:
                yield None
                return
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # Whoever held the lock before may have replayed and deleted the file: then this
                # descriptor is of an unlinked file, and the path must be opened again.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield fd
                    return
            finally:
                with _opening:
                    _held.discard(fd)
                    os.close(fd)  # also releases the lock

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Add rows durably (fsync), all or none; ``OSError`` if they could not be."""
        if not rows:
            return
        data = "".join(json.dumps(to_spool(row)) + "\n" for row in rows).encode()
        self._append(self.path, data)

    def _append(self, path: str, data: bytes) -> None:
        with self._locked(create=True, path=path) as fd:
            assert fd is not None
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    # A process died mid-append: end its torn line so it cannot swallow our first.
                    data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # A full disk: take back the part that was written, so that no torn line is left
                # (the rows are kept elsewhere and come again whole).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise

    def quarantine(self, entries: Sequence[tuple[Any, str]]) -> None:
        """Put records (rows, or raw spool lines as bytes) in the dead-letter file, each with why;
        ``OSError`` if they could not be."""
        if not entries:
            return
        import time

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = []
        for item, reason in entries:
            entry: dict[str, Any] = {"reason": reason, "at": now, "ledger": self.url}
            if isinstance(item, bytes):
                entry["line"] = item.decode("utf-8", "replace")
            else:
                entry["record"] = to_spool(item)
            lines.append(json.dumps(entry, default=repr) + "\n")
        self._append(self.dead_path, "".join(lines).encode())

    def quarantined(self) -> list[dict[str, Any]]:
        """The dead-letter entries, oldest first (an unreadable line is shown as such)."""
        with self._locked(create=False, path=self.dead_path) as fd:
            return [] if fd is None else self._entries(fd)

    def take_quarantined(self, keep: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> int:
        """Hand the dead-letter entries to ``keep`` (under the file's lock); the entries it returns
        stay, the others are gone. Returns how many went."""
        with self._locked(create=False, path=self.dead_path) as fd:
            if fd is None:
                return 0
            entries = self._entries(fd)
            left = keep(entries)
            data = "".join(json.dumps(e, default=repr) + "\n" for e in left).encode()
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if not left and fcntl is not None:
                os.unlink(self.dead_path)
            return len(entries) - len(left)

    @classmethod
    def _entries(cls, fd: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in cls._lines(fd):
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                entry = None
            if not isinstance(entry, dict):
                entry = {"line": line.decode("utf-8", "replace"), "reason": "an unreadable dead-letter line"}
            out.append(entry)
        return out

    def read(self) -> list[tuple[Any, ...]]:
        """The spooled rows (lines that are no record skipped), claims of replays in progress
        included, without removing them."""
        rows: list[tuple[Any, ...]] = []
        with self._locked(create=False) as fd:
            if fd is not None:
                rows += self._rows(fd)[0]
        for path in self._claims():
            rows += self._rows_of(path)[0]
        return rows

    def _rows_of(self, path: str) -> tuple[list[tuple[Any, ...]], list[tuple[bytes, str]]]:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return [], []
        try:
            return self._rows(fd)
        finally:
            os.close(fd)

    def replay(self, write: Callable[[Sequence[tuple[Any, ...]]], None], batch: int = 10_000) -> int:
        """Write every spooled row with ``write`` (chunks of ``batch``), then delete the file.

        Returns how many rows there were. If ``write`` raises, the file stays as it was (the chunks
        already written are written again next time, which ``ignore_duplicates`` makes harmless).
        A line that is no record goes to the dead-letter file, never in the way of the others.
        """
        if fcntl is None:  # pragma: no cover - Windows: one process per spool, replayed in place
            return self._replay_in_place(write, batch)
        orphans = self._orphans()
        with self._locked(create=bool(orphans)) as fd:
            if fd is None:
                return 0
            rows, rejects = self._rows(fd)
            for path in orphans:  # rows a replay took and never finished: now this one's
                taken, bad = self._rows_of(path)
                rows += taken
                rejects += bad
            if rejects:
                self.quarantine(rejects)  # first: if it cannot be, nothing is deleted
                log.error(
                    "llmtally: %d line(s) of the spool %s are no record (%s); kept apart in %s",
                    len(rejects),
                    self.path,
                    rejects[0][1],
                    self.dead_path,
                )
            # The rows move to a claim of this replay, and the spool is free again: other
            # processes append to it while this one writes to the ledger, which may wait seconds on
            # a locked database (they used to queue behind it, and lose records at exit).
            claim = self._claim(rows) if rows else None
            os.unlink(self.path)  # under the lock: nobody can be appending to it
            for path in orphans:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if claim is None:
            return 0
        try:
            for start in range(0, len(rows), batch):
                write(rows[start : start + batch])
        except BaseException:
            self._give_back(claim)
            raise
        finally:
            _in_flight.discard(claim)
        os.unlink(claim)
        return len(rows)

    def _claim(self, rows: list[tuple[Any, ...]]) -> str:
        import secrets

        base = self.path[: -len(".jsonl")]
        claim = f"{base}.claim-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        data = "".join(json.dumps(to_spool(row)) + "\n" for row in rows).encode()
        fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(claim)
            raise
        os.close(fd)
        _in_flight.add(claim)
        return claim

    def _give_back(self, claim: str) -> None:
        """A replay that failed: its rows back into the spool (or, if even that fails, its claim
        stays, and a later replay takes it)."""
        try:
            with open(claim, "rb") as f:
                data = f.read()
            self._append(self.path, data)
            os.unlink(claim)
        except OSError as exc:
            log.error("llmtally: the spool's claim %s is kept for a later replay (%s)", claim, exc)

    def _replay_in_place(self, write: Callable[[Sequence[tuple[Any, ...]]], None], batch: int) -> int:
        with self._locked(create=False) as fd:  # pragma: no cover - Windows
            if fd is None:
                return 0
            rows, rejects = self._rows(fd)
            if rejects:
                self.quarantine(rejects)
                self._rewrite(fd, rows)
            for start in range(0, len(rows), batch):
                write(rows[start : start + batch])
        os.unlink(self.path)  # pragma: no cover
        return len(rows)

    @staticmethod
    def _rewrite(fd: int, rows: list[tuple[Any, ...]]) -> None:
        data = "".join(json.dumps(to_spool(row)) + "\n" for row in rows).encode()
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)

    @staticmethod
    def _lines(fd: int) -> list[bytes]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return [line for line in b"".join(chunks).splitlines() if line.strip()]

    @classmethod
    def _rows(cls, fd: int) -> tuple[list[tuple[Any, ...]], list[tuple[bytes, str]]]:
        """The spooled records, and the lines that are none, with why."""
        rows: list[tuple[Any, ...]] = []
        rejects: list[tuple[bytes, str]] = []
        for line in cls._lines(fd):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                rejects.append((line, "not JSON (a line torn by a crash?)"))
                continue
            if type(record) is not dict:
                rejects.append((line, f"not a record but a JSON {type(record).__name__}"))
                continue
            row = from_spool(record)
            reason = check_row(row)
            if reason is not None:
                rejects.append((line, reason))
                continue
            rows.append(row)
        return rows, rejects
