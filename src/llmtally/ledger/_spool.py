"""The spool: records kept on local disk while their ledger cannot be written.

One file per ledger, ``<spool dir>/<hash of the ledger's redacted URL>.jsonl``, one record per
line as a JSON object keyed by column name. The spool directory is ``LLMTALLY_SPOOL_DIR`` if set,
else ``spool/`` next to the default SQLite ledger in the user's data directory. Records hold no
prompt text, keys or headers (see ``_records``), and the file name is a hash: no password is in it.

Several processes writing to one ledger share its spool file; every access holds an exclusive
``flock`` on it (POSIX), so a replay never deletes lines another process has just appended.
Replays write with ``ignore_duplicates``: a record that reached the ledger before its batch was
reported failed (a lost COMMIT reply), or a replay cut short, is not written twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._records import COLUMNS

__all__ = ["ENV_SPOOL_DIR", "Spool", "spool_dir"]

log = logging.getLogger("llmtally")

ENV_SPOOL_DIR = "LLMTALLY_SPOOL_DIR"
_NAMES = [name for name, _ in COLUMNS]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spool file is assumed
    fcntl = None  # type: ignore[assignment]


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

    def __repr__(self) -> str:
        return f"<Spool {self.path}>"

    def pending(self) -> bool:
        """Whether the file exists (it is deleted once replayed); cheap enough for every batch."""
        return os.path.exists(self.path)

    @contextlib.contextmanager
    def _locked(self, create: bool) -> Iterator[int | None]:
        """The file open for read and append under an exclusive lock; ``None`` if it does not exist."""
        flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if create:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            flags |= os.O_CREAT
        while True:
            try:
                fd = os.open(self.path, flags, 0o600)
            except FileNotFoundError:
                yield None
                return
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                # Whoever held the lock before may have replayed and deleted the file: then this
                # descriptor is of an unlinked file, and the path must be opened again.
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    yield fd
                    return
            finally:
                os.close(fd)  # also releases the lock

    def append(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Add rows durably (fsync); ``OSError`` if they could not be."""
        if not rows:
            return
        data = "".join(json.dumps(dict(zip(_NAMES, row, strict=True))) + "\n" for row in rows).encode()
        with self._locked(create=True) as fd:
            assert fd is not None
            size = os.lseek(fd, 0, os.SEEK_END)
            if size:
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    # A process died mid-append: end its torn line so it cannot swallow our first.
                    data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)

    def read(self) -> list[tuple[Any, ...]]:
        """The spooled rows (torn lines skipped), without removing them."""
        with self._locked(create=False) as fd:
            return [] if fd is None else self._rows(fd)[0]

    def replay(self, write: Callable[[Sequence[tuple[Any, ...]]], None], batch: int = 10_000) -> int:
        """Write every spooled row with ``write`` (chunks of ``batch``), then delete the file.

        Returns how many rows there were. If ``write`` raises, the file stays as it was (the chunks
        already written are written again next time, which ``ignore_duplicates`` makes harmless).
        """
        with self._locked(create=False) as fd:
            if fd is None:
                return 0
            rows, torn = self._rows(fd)
            for start in range(0, len(rows), batch):
                write(rows[start : start + batch])
            if torn:
                log.error(
                    "llmtally: %d torn line(s) in the spool %s were unreadable and are dropped",
                    torn,
                    self.path,
                )
            if fcntl is not None:
                os.unlink(self.path)  # under the lock: nobody can be appending to it
                return len(rows)
        os.unlink(self.path)  # pragma: no cover - Windows deletes no open file
        return len(rows)

    @staticmethod
    def _rows(fd: int) -> tuple[list[tuple[Any, ...]], int]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        rows: list[tuple[Any, ...]] = []
        torn = 0
        for line in b"".join(chunks).splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                torn += 1
                continue
            rows.append(tuple(record.get(name) for name in _NAMES))
        return rows, torn
