"""The open scopes and the switch that suppresses metering: two ContextVars and how they change.

The open scopes are a ``_Frame`` in a ContextVar: a tuple of the open Tallies, outermost first
(what a call made now counts in), that also knows the scope whose entry made it (``owner``) and
the frame before that entry (``prev``). Entering a scope sets a new frame; leaving it sets its
``prev`` back, so nesting and exceptions restore the outer state exactly (LangChain's callback sets
its variable without a reset and loses the outer scope). Nothing about an entry is kept in the
Tally: one Tally entered at once by many threads or tasks (a decorated coroutine under
``asyncio.gather``, a scope object shared by a thread pool) changes only each context's own value,
and no reset token can belong to another context.

A scope left while scopes entered after it are still open (a generator holding a scope across a
``yield``, closed inside another scope) is taken out of the middle: the frames above it are rebuilt
without it, so the scopes still open stay open and the closed one is gone.

asyncio tasks copy the context, so they see the scopes that were open when they were created;
threads get them from ``_capture.threads``.

This module is loaded by ``import llmtally``: builtins only at the top.
"""

from __future__ import annotations

from _contextvars import ContextVar

TYPE_CHECKING = False  # typing imports re (milliseconds); mypy reads it the same way.
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .tally import Tally

__all__ = [
    "Suppressed",
    "current_scopes",
    "enter",
    "is_started",
    "is_suppressed",
    "leave",
    "mark_started",
    "set_starter",
]


class _Frame(tuple):  # type: ignore[type-arg]
    """The open scopes, outermost first; the scope whose entry made this frame; the frame before.

    Settlement also keeps the scopes' names and merged tags here (``names_and_tags``): every call
    made while these scopes are open shares them.
    """

    owner: object
    prev: _Frame | None
    names_and_tags: tuple[tuple[str, ...], Mapping[str, object]]


_EMPTY = _Frame()
_EMPTY.owner = _EMPTY.prev = None
_scopes: ContextVar[_Frame] = ContextVar("llmtally_scopes", default=_EMPTY)


def _push(stack: _Frame, owner: object) -> _Frame:
    # Entered again while open (a recursive decorated function): the same scopes, each counted once.
    frame = _Frame(stack) if owner in stack else _Frame((*stack, owner))
    frame.owner = owner
    frame.prev = stack
    return frame


def enter(tally: Tally) -> None:
    """Open ``tally`` in the current context."""
    _scopes.set(_push(_scopes.get(), tally))


def leave(tally: Tally) -> None:
    """Close ``tally``'s latest entry in the current context (a no-op if it has none here)."""
    top = _scopes.get()
    if top.owner is tally:  # the usual case: the innermost scope leaves
        _scopes.set(top.prev)  # type: ignore[arg-type]
        return
    above = []
    frame: _Frame | None = top
    while frame is not None and frame.owner is not tally:
        above.append(frame)
        frame = frame.prev
    if frame is None or frame.prev is None:
        return  # not entered in this context: nothing to undo
    base = frame.prev
    for later in reversed(above):
        base = _push(base, later.owner)
    _scopes.set(base)


def current_scopes() -> tuple[Tally, ...]:
    """The open scopes, outermost first."""
    return _scopes.get()


# -- suppress ---------------------------------------------------------------------------------------


class _Quiet:
    """The value of the suppress switch while on: whose entry set it, and the value before."""

    __slots__ = ("owner", "prev")

    def __init__(self, owner: Suppressed, prev: _Quiet | None) -> None:
        self.owner = owner
        self.prev = prev


#: Set inside ``with llmtally.suppress():``: nothing in it is metered.
_suppressed: ContextVar[_Quiet | None] = ContextVar("llmtally_suppressed", default=None)


def is_suppressed() -> bool:
    return _suppressed.get() is not None


class Suppressed:
    """``with llmtally.suppress():`` -- calls made inside are not metered, counted or recorded.

    Like a Tally, it keeps no per-entry state of its own: one object can be entered at once by
    many threads or tasks.
    """

    __slots__ = ()

    def __enter__(self) -> None:
        _suppressed.set(_Quiet(self, _suppressed.get()))

    def __exit__(self, *exc: object) -> None:
        top = _suppressed.get()
        if top is not None and top.owner is self:
            _suppressed.set(top.prev)
            return
        # Left out of order: take this entry out of the chain, keep the later ones.
        above = []
        quiet = top
        while quiet is not None and quiet.owner is not self:
            above.append(quiet)
            quiet = quiet.prev
        if quiet is None:
            return
        base = quiet.prev
        for later in reversed(above):
            base = _Quiet(later.owner, base)
        _suppressed.set(base)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


# -- the runtime's start ----------------------------------------------------------------------------


class _State:
    """Whether the runtime has started; checked on every scope entry, so one attribute read."""

    started = False

    @staticmethod
    def start() -> None:
        """Replaced by the public API layer (``_api``) with the runtime's start."""


_state = _State()


def set_starter(start: Callable[[], None]) -> None:
    """What the first scope entry runs (the runtime's ``start``: hooks, threads, environment)."""
    _state.start = start  # type: ignore[method-assign]


def mark_started(started: bool) -> None:
    _state.started = started


def is_started() -> bool:
    return _state.started
