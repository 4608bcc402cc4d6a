"""Scopes across processes: the calls a worker process makes count in the scope that started it.

A scope (a ``Tally``) that work leaves the process from (a fork, a ``multiprocessing`` process, a
process pool's task: see ``_capture.processes``) gets a ``Relay``: an id, and a folder of the
process that owns the scope. A worker delivers each call it makes inside such a scope to its own
copy of it (a forked child) or to a stand-in (a spawned one, or any pool task); where the relay's
owner is another process, the call is also appended, as one JSON line, to
``<folder>/<id>/<worker pid>.jsonl``. The owner reads the new complete lines whenever the scope is
read (``Tally._settled``), so ``t.cost`` after ``pool.map`` returns counts the workers' calls, and
so do the scope's limits at its next check.

Only what a Tally adds up travels (counts, model names, cost, timing; never prompt text). A worker
writes its calls to the ledger itself, as it always did: the relay feeds scopes, not sinks, so
nothing is recorded twice. The folder is private to the user (``mkdtemp``) and removed when the
owner exits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .usage import TOKEN_NAMES, Call, Usage

if TYPE_CHECKING:
    from .tally import Tally

__all__ = ["Relay", "dump", "ensure", "load", "stand_in"]

log = logging.getLogger("llmtally")

_lock = threading.Lock()


class _Folder:
    """This process's relay folder, made on first use; a forked child makes its own."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.pid = 0

    def get(self) -> str:
        if self.path is None or self.pid != os.getpid():
            self.path = tempfile.mkdtemp(prefix="llmtally-relay-")
            self.pid = os.getpid()
            atexit.register(_remove, self.path, self.pid)
        return self.path


def _remove(path: str, pid: int) -> None:
    """At exit: every scope takes in what its workers sent (exit hooks registered before this one,
    ``llmtally run``'s summary, run after it and read the scopes), then the folder goes."""
    # atexit handlers are inherited by a forked child: only the process that made it removes it.
    if os.getpid() != pid:
        return
    for tally, r in list(_owned.items()):
        try:
            r.pull(tally)
        except Exception:  # pragma: no cover
            log.exception("llmtally: could not read the relay of the scope %r", tally.name)
    shutil.rmtree(path, ignore_errors=True)


def cleanup() -> None:
    """This process's relay folder, if it made one, read into its scopes and removed: at exit, and
    before a forked worker's ``os._exit`` (which runs no atexit hook)."""
    folder = _folder
    if folder.path is not None and folder.pid == os.getpid():
        _remove(folder.path, folder.pid)
        folder.path = None


_folder = _Folder()
#: The scopes of this process that have a relay (read once more at exit).
_owned: weakref.WeakKeyDictionary[Tally, Relay] = weakref.WeakKeyDictionary()
#: Stand-ins made in this worker process, by relay id, the most recent last: a pool worker runs many
#: tasks of one scope (and, over its life, of many scopes: at most ``_STAND_INS`` are kept).
_stand_ins: dict[str, Tally] = {}
_STAND_INS = 256
#: Lines a worker writes to one file before it starts the next (``<pid>.<n>.jsonl``): the owner
#: deletes a file it has read to its end once a later one exists, so the folder stays small.
ROTATE = 1000
#: Seconds a file must have been left alone before its owner deletes it (a write may be under way).
_SETTLED = 10.0
#: Lines this process has relayed per scope: numbers its files.
_pushed: dict[str, int] = {}
_push_lock = threading.Lock()


def _file_pid_seq(name: str) -> tuple[str, int] | None:
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "jsonl" or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class Relay:
    """Where the calls of one scope made in other processes are sent, and how far its owner has read."""

    __slots__ = ("_failing", "_gone", "_mine", "_offsets", "_read", "_watch", "folder", "owner", "uid")

    def __init__(self, uid: str, folder: str, owner: int) -> None:
        self.uid = uid
        self.folder = folder
        self.owner = owner
        self._offsets: dict[str, int] = {}
        self._read = threading.Lock()
        #: In a worker whose scope has limits: it reads its siblings' calls too, from where the owner
        #: had read when the task was sent (``_watch``), and its own files as they were then.
        self._watch: dict[str, int] | None = None
        self._mine: dict[str, int] = {}
        self._gone = False  # the owner has exited: nothing more to send
        self._failing = False

    def watch(self, offsets: dict[str, int]) -> None:
        """In a worker: read the other workers' calls from ``offsets`` on (the scope's limits count
        them); this worker's own calls from now on are in the stand-in already."""
        self._watch = dict(offsets)
        prefix = f"{os.getpid()}."
        try:
            with os.scandir(os.path.join(self.folder, self.uid)) as entries:
                self._mine = {e.name: e.stat().st_size for e in entries if e.name.startswith(prefix)}
        except OSError:
            self._mine = {}

    # -- in a worker -------------------------------------------------------------------------------
    def push(self, call: Call) -> None:
        """Append ``call`` for the owner to read: one ``write`` of one line (never interleaved), the
        file opened and closed around it (a worker serving many scopes holds no file open)."""
        if self._gone:
            return
        line = dump(call)
        with _push_lock:
            n = _pushed.get(self.uid, 0)
            _pushed[self.uid] = n + 1
        directory = os.path.join(self.folder, self.uid)
        path = os.path.join(directory, f"{os.getpid()}.{n // ROTATE}.jsonl")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                # The scope's first call from a worker. Not makedirs: the owner's folder gone means
                # the owner has exited, not a folder to make.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, 0o700)
                fd = os.open(path, flags, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except FileNotFoundError:
            self._gone = True
            log.warning(
                "llmtally: the process that opened the scope %s (pid %d) has ended; this process's calls "
                "in it are not counted there",
                self.uid,
                self.owner,
            )
        except OSError as exc:  # a full disk, no file descriptor left: said once, the call is the user's
            if not self._failing:
                self._failing = True
                log.warning(
                    "llmtally: could not send a call to the scope %s of pid %d: %s", self.uid, self.owner, exc
                )

    # -- in the owner ------------------------------------------------------------------------------
    def pull(self, tally: Tally) -> None:
        """Add the workers' new calls to ``tally`` (the owner's; in a worker, only with ``watch``)."""
        pid = os.getpid()
        offsets = self._offsets if self.owner == pid else self._watch
        if offsets is None:
            return
        owner = self.owner == pid
        mine = f"{pid}."
        directory = os.path.join(self.folder, self.uid)
        with self._read:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return  # no worker has made a call in this scope yet
            latest: dict[str, int] = {}
            for entry in entries:
                named = _file_pid_seq(entry.name)
                if named is not None and named[1] > latest.get(named[0], -1):
                    latest[named[0]] = named[1]
            for entry in entries:
                done = offsets.get(entry.name, 0)
                try:
                    stat = entry.stat()
                    size = stat.st_size
                    if not owner and entry.name.startswith(mine):
                        size = min(size, self._mine.get(entry.name, 0))  # later lines: the stand-in's own
                    if size <= done:
                        if owner:
                            self._retire(entry, done, stat, latest)
                        continue
                    with open(entry.path, "rb") as f:
                        f.seek(done)
                        data = f.read(size - done)
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1  # complete lines only: a worker may be writing the next
                offsets[entry.name] = done + end
                if owner and done + end == size:
                    self._retire(entry, size, stat, latest)
                for line in data[:end].splitlines():
                    try:
                        call = load(line)
                    except Exception:
                        log.warning("llmtally: a garbled line in the relay %s skipped", entry.path)
                        continue
                    tally._calls.append(call)
                    tally._sent += 1  # a request of the scope's (max_requests counts them)
                    if len(tally._calls) > tally._trim_at:
                        tally._trim()

    def _retire(
        self, entry: os.DirEntry[str], done: int, stat: os.stat_result, latest: dict[str, int]
    ) -> None:
        """Delete a file read to its end whose worker has moved on to a later one, once it has been
        left alone a while (its worker may have chosen it just before moving on)."""
        import time

        named = _file_pid_seq(entry.name)
        if named is None or named[1] >= latest.get(named[0], -1) or done != stat.st_size:
            return
        if time.time() - stat.st_mtime < _SETTLED:
            return
        with contextlib.suppress(OSError):
            if os.stat(entry.path).st_size == done:  # nothing written since it was read
                os.unlink(entry.path)
                self._offsets.pop(entry.name, None)


def ensure(tally: Tally) -> Relay:
    """``tally``'s relay, made now if it has none (its owner is this process)."""
    relay = tally._relay
    if relay is None:
        with _lock:
            relay = tally._relay
            if relay is None:
                relay = tally._relay = Relay(os.urandom(8).hex(), _folder.get(), os.getpid())
                _owned[tally] = relay
                # A service opens a scope per request: each one's files go with it.
                gone = weakref.finalize(tally, _forget, os.path.join(relay.folder, relay.uid), relay.owner)
                gone.atexit = False  # at exit the scope may still be read (``_remove`` reads it first)
    return relay


def _forget(directory: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(directory, ignore_errors=True)


def stand_in(name: str | None, tags: dict[str, Any], uid: str, folder: str, owner: int) -> Tally:
    """In a worker: the scope ``uid`` of process ``owner``, whose calls are relayed there."""
    from .tally import Tally

    tally = _stand_ins.pop(uid, None)
    if tally is None:
        tally = Tally(name, tags or None, keep_calls=False)
        tally._relay = Relay(uid, folder, owner)
        if len(_stand_ins) >= _STAND_INS:
            del _stand_ins[next(iter(_stand_ins))]  # the least recently used
    _stand_ins[uid] = tally
    return tally


# -- one call as one line ----------------------------------------------------------------------------
_PLAIN = (
    "provider",
    "endpoint",
    "model",
    "requested_model",
    "currency",
    "status",
    "ok",
    "error",
    "stream",
    "estimated",
    "started_at",
    "latency",
    "request_id",
    "url_host",
    "price_source",
    "native_currency",
    "run_id",
)
_MONEY = ("cost", "computed_cost", "native_cost")


def dump(call: Call) -> bytes:
    record: dict[str, Any] = {name: getattr(call, name) for name in _PLAIN}
    for name in _MONEY:
        value = getattr(call, name)
        record[name] = None if value is None else str(value)
    u = call.usage
    if u is not None:
        record["usage"] = {k: v for k in TOKEN_NAMES if (v := getattr(u, k))}
    record["scope_path"] = list(call.scope_path)
    record["tags"] = {
        str(k): v if v is None or isinstance(v, str | int | float | bool) else str(v)
        for k, v in call.tags.items()
    }
    if call.context:
        record["context"] = [list(pair) for pair in call.context]
    return json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n"


def load(line: bytes) -> Call:
    record: dict[str, Any] = json.loads(line)

    def money(name: str) -> Decimal | None:
        value = record.pop(name, None)
        return None if value is None else Decimal(value)

    usage = record.pop("usage", None)
    cost, computed, native = money("cost"), money("computed_cost"), money("native_cost")
    context = record.pop("context", None)
    call = Call(
        record.pop("provider"),
        record.pop("endpoint"),
        record.pop("model"),
        usage=None if usage is None else Usage(**usage),
        cost=cost,
        computed_cost=computed,
        native_cost=native,
        scope_path=tuple(record.pop("scope_path", ())),
        tags=record.pop("tags", None) or {},
        context=None if context is None else tuple((str(a), str(b)) for a, b in context),
    )
    for name in _PLAIN[3:]:  # the rest as they were sent
        if name in record:
            setattr(call, name, record[name])
    return call
