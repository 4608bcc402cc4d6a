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

import contextlib
import json
import logging
import os
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
            import atexit
            import tempfile

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
    import shutil

    shutil.rmtree(path, ignore_errors=True)


_folder = _Folder()
#: The scopes of this process that have a relay (read once more at exit).
_owned: weakref.WeakKeyDictionary[Tally, Relay] = weakref.WeakKeyDictionary()
#: Stand-ins made in this worker process, by relay id: a pool worker runs many tasks of one scope.
_stand_ins: dict[str, Tally] = {}


class Relay:
    """Where the calls of one scope made in other processes are sent, and how far its owner has read."""

    __slots__ = ("_offsets", "_out", "_read", "folder", "owner", "uid")

    def __init__(self, uid: str, folder: str, owner: int) -> None:
        self.uid = uid
        self.folder = folder
        self.owner = owner
        self._offsets: dict[str, int] = {}
        self._read = threading.Lock()
        self._out: tuple[int, int] | None = None  # (pid, fd) of this worker's file

    # -- in a worker -------------------------------------------------------------------------------
    def push(self, call: Call) -> None:
        """Append ``call`` for the owner to read (one ``write``, so a line is never interleaved)."""
        pid = os.getpid()
        out = self._out
        if out is None or out[0] != pid:
            directory = os.path.join(self.folder, self.uid)
            # Not makedirs: the owner's folder gone (it has exited) is an error, not a folder to make.
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
            fd = os.open(
                os.path.join(directory, f"{pid}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            out = self._out = (pid, fd)
        os.write(out[1], dump(call))

    # -- in the owner ------------------------------------------------------------------------------
    def pull(self, tally: Tally) -> None:
        """Add the workers' new calls to ``tally`` (the owner's; a no-op elsewhere)."""
        if self.owner != os.getpid():
            return
        directory = os.path.join(self.folder, self.uid)
        with self._read:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return  # no worker has made a call in this scope yet
            for entry in entries:
                done = self._offsets.get(entry.name, 0)
                try:
                    if entry.stat().st_size <= done:
                        continue
                    with open(entry.path, "rb") as f:
                        f.seek(done)
                        data = f.read()
                except OSError:
                    continue
                end = data.rfind(b"\n") + 1  # complete lines only: a worker may be writing the next
                self._offsets[entry.name] = done + end
                for line in data[:end].splitlines():
                    try:
                        call = load(line)
                    except Exception:
                        log.warning("llmtally: a garbled line in the relay %s skipped", entry.path)
                        continue
                    tally._calls.append(call)
                    if len(tally._calls) > tally._trim_at:
                        tally._trim()


def ensure(tally: Tally) -> Relay:
    """``tally``'s relay, made now if it has none (its owner is this process)."""
    relay = tally._relay
    if relay is None:
        with _lock:
            relay = tally._relay
            if relay is None:
                relay = tally._relay = Relay(os.urandom(8).hex(), _folder.get(), os.getpid())
                _owned[tally] = relay
    return relay


def stand_in(name: str | None, tags: dict[str, Any], uid: str, folder: str, owner: int) -> Tally:
    """In a worker: the scope ``uid`` of process ``owner``, whose calls are relayed there."""
    from .tally import Tally

    tally = _stand_ins.get(uid)
    if tally is None:
        tally = Tally(name, tags or None, keep_calls=False)
        tally._relay = Relay(uid, folder, owner)
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
        str(k): v if isinstance(v, str | int | float | bool) else str(v) for k, v in call.tags.items()
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
