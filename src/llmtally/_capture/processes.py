"""Carry the open scopes into worker processes: ``multiprocessing`` and ``ProcessPoolExecutor``.

A ``track()`` scope around a process pool used to count nothing of its workers' calls (a forked
worker counted them in its own copy of the scope; a spawned one was outside it). Three patches,
each reversible, make the workers' calls count in the scopes they were sent from (``_core.relay``
carries them back):

- ``ProcessPoolExecutor.submit`` and ``multiprocessing.Pool``'s ``apply_async``, ``map`` family and
  ``imap`` family send each task as ``InScopes(fn)``: in the worker, it runs in stand-ins of the
  scopes open where it was *submitted* (a pool outlives the scope that created it, so a worker's
  inherited scopes are not the task's), and settles its calls before returning, so they are
  counted by the time its result is back;
- ``Process.start`` hands a spawned (or forkserver) process the scopes open where it was started,
  for its whole life; a forked one has them already (``Runtime._before_fork`` gives them relays).

A spawned worker starts metering with the parent's ledger (``LLMTALLY_LEDGER``), so its calls are
recorded there under the scopes' names, as a forked worker's are. A scope with limits is rebuilt in
the worker with them, what the scope had spent when the task was sent, and the relay's offsets
then: the worker reads the other workers' calls since, so its checks count everything the scope
has spent (``_core.relay.Relay.watch``); a shared budget is reopened by its ledger URL.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from .._core.pipeline import PIPELINE, _pid
from .._core.scope import _EMPTY, Suppressed, _push, _Quiet, _scopes, _state, _suppressed

if TYPE_CHECKING:
    from .._core.relay import Relay

__all__ = ["InScopes", "ProcessesInstrumentor"]

#: The parent's ledger URL for spawned workers ("none" for none); set by the runtime.
ledger_of: Callable[[], str | None] = lambda: None  # noqa: E731
#: The shared-budget store of a ledger URL (``Runtime.budget_store``); set by the runtime.
store_of: Callable[[str], Any] | None = None
_QUIET = _Quiet(Suppressed(), None)
_Portable = tuple[tuple[str | None, dict[str, Any], str, str, int, Any], ...]


def _plain(tags: dict[str, object]) -> dict[str, Any]:
    return {
        str(k): v if isinstance(v, str | int | float | bool) or v is None else str(v) for k, v in tags.items()
    }


def _portable(frame: tuple[Any, ...]) -> _Portable:
    """The open scopes as a worker can rebuild them: names, tags, each one's relay, and its limits
    with what it has spent so far."""
    from .._core import relay  # loaded when work first leaves for another process, not at start

    out = []
    for tally in frame:
        r = relay.ensure(tally)
        out.append((tally.name, _plain(tally.tags), r.uid, r.folder, r.owner, _limits_of(tally, r)))
    return tuple(out)


def _limits_of(tally: Any, r: Relay) -> Any:
    """A limited scope's limits, and where it stands now: spent (its totals, its requests) and how
    far it has read its workers' calls (a worker counts the others' calls from there)."""
    limits = tally._limits
    if limits is None:
        return None
    totals = copy.copy(tally._settled())
    with r._read:
        offsets = dict(r._offsets)
    shared = None
    if limits.shared is not None:
        shared = (limits.shared.name, str(limits.shared.store.ledger.url), limits.shared.period)
    kept = (limits.max_cost, limits.max_tokens, limits.max_requests, limits.on_exceed, limits.preflight)
    return (*kept, shared, tally._sent, totals, offsets)


def _frame_of(portable: _Portable) -> Any:
    from .._core import relay

    frame = _EMPTY
    for name, tags, uid, folder, owner, limited in portable:
        if limited is None:
            tally = relay.stand_in(name, tags, uid, folder, owner)
        else:
            tally = _limited_stand_in(name, tags, uid, folder, owner, limited)
        frame = _push(frame, tally)
    return frame


def _limited_stand_in(
    name: str | None, tags: dict[str, Any], uid: str, folder: str, owner: int, limited: Any
) -> Any:
    """A stand-in that checks the scope's limits against all it has spent: what it had spent when
    the task was sent, the other workers' calls since, and this task's own."""
    from .._core import relay
    from .._core.tally import Tally
    from .._limits import Limits, Shared

    max_cost, max_tokens, max_requests, on_exceed, preflight, shared, sent, totals, offsets = limited
    budget = None
    if shared is not None and store_of is not None:
        budget = Shared(shared[0], store_of(shared[1]), shared[2])
    limits = Limits(max_cost, max_tokens, max_requests, on_exceed, preflight, shared=budget)
    tally = Tally(name, tags or None, limits, keep_calls=False)
    r = tally._relay = relay.Relay(uid, folder, owner)
    r.watch(offsets)
    tally._sent = sent
    tally._totals = totals
    return tally


def _start_here(portable: _Portable, ledger: str | None) -> None:
    """In a worker: metering on (a spawned worker's first task), with the parent's ledger."""
    if _state.started or (not portable and (not ledger or ledger == "none")):
        return
    if ledger and "LLMTALLY_LEDGER" not in os.environ:
        os.environ["LLMTALLY_LEDGER"] = ledger
    _state.start()


class InScopes:
    """``fn`` run in the scopes open where it was submitted: in this process, or rebuilt in the worker
    process it is pickled to."""

    __slots__ = ("fn", "frame", "quiet")

    def __init__(self, fn: Any, frame: Any, quiet: Any) -> None:
        self.fn = fn
        self.frame = frame
        self.quiet = quiet

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _scopes.set(self.frame)
        quiet = _suppressed.set(self.quiet)
        try:
            return self.fn(*args, **kwargs)
        finally:
            _suppressed.reset(quiet)
            _scopes.reset(token)
            pid = _pid[0]
            if any(t._relay is not None and t._relay.owner != pid for t in self.frame):
                # Relayed before the result goes back: the scope's owner reads it complete.
                try:
                    PIPELINE.flush()
                except Exception:  # pragma: no cover - settle() logs its own failures
                    pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (_task, (self.fn, _portable(self.frame), self.quiet is not None, ledger_of()))


def _task(fn: Any, portable: _Portable, quiet: bool, ledger: str | None) -> InScopes:
    _start_here(portable, ledger)
    return InScopes(fn, _frame_of(portable), _QUIET if quiet else None)


class _Handoff:
    """The scopes open where a ``multiprocessing.Process`` was started; pickled with it to a spawned
    child, where unpickling opens them for the child's life (in its main thread, before ``run``)."""

    __slots__ = ("frame", "quiet")

    def __init__(self, frame: Any, quiet: Any) -> None:
        self.frame = frame
        self.quiet = quiet

    def __reduce__(self) -> tuple[Any, ...]:
        return (_adopt, (_portable(self.frame), self.quiet is not None, ledger_of()))


def _adopt(portable: _Portable, quiet: bool, ledger: str | None) -> None:
    import atexit

    _start_here(portable, ledger)
    _scopes.set(_frame_of(portable))
    if quiet:
        _suppressed.set(_QUIET)
    # A spawned process ends with sys.exit: its last calls are settled, and so relayed, first.
    atexit.register(PIPELINE.flush)


def _wrap(fn: Any) -> InScopes:
    return fn if isinstance(fn, InScopes) else InScopes(fn, _scopes.get(), _suppressed.get())


class ProcessesInstrumentor:
    """Patches process starts and process-pool task submission; ``unpatch()`` restores them."""

    modules: ClassVar[tuple[str, ...]] = (
        "multiprocessing.process",
        "multiprocessing.pool",
        "concurrent.futures.process",
    )

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def _replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        if getattr(original, "__llmtally__", False):
            return
        patched = make(original)
        patched.__llmtally__ = True
        patched.__wrapped__ = original
        self._saved.append((owner, name, original))
        setattr(owner, name, patched)

    def patch(self, module: ModuleType) -> None:
        name = module.__name__
        if name == "multiprocessing.process":
            self._replace(module.BaseProcess, "start", _start)
        elif name == "multiprocessing.pool":
            for method in ("apply_async", "_map_async", "imap", "imap_unordered"):
                self._replace(module.Pool, method, _pool_method)
        elif name == "concurrent.futures.process":
            self._replace(module.ProcessPoolExecutor, "submit", _submit)

    def unpatch(self) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved = []


def _start(original: Any) -> Any:
    def start(process: Any) -> None:
        frame, quiet = _scopes.get(), _suppressed.get()
        if frame or quiet is not None:
            process._llmtally_scopes = _Handoff(frame, quiet)
        original(process)

    return start


def _pool_method(original: Any) -> Any:
    def method(pool: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        from multiprocessing.pool import ThreadPool

        if not isinstance(pool, ThreadPool):  # threads get the scopes from Thread.start
            func = _wrap(func)
        return original(pool, func, *args, **kwargs)

    return method


def _submit(original: Any) -> Any:
    def submit(executor: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return original(executor, _wrap(fn), *args, **kwargs)

    return submit
