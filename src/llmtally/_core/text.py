"""Text from outside (a server's reply, a downloaded catalogue, the ledger) made safe to show.

A model name is whatever the server sent, and a scope or tag whatever the user's code passed: a
terminal must not act on them (clear the screen, retitle the window, open a link, move the cursor,
reorder the line) and a reader must see what is there. Every character Python does not call
printable (C0 and C1 controls, DEL, format characters such as bidi overrides and zero-width ones,
line and paragraph separators, spaces other than " ", surrogates, private and unassigned code
points) is shown as a Python-style escape: ``\\x1b``, ``\\u202e``, ``\\U000e0041``.
"""

from __future__ import annotations

__all__ = ["printable"]


def _escape(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(text: str) -> str:
    """``text`` with every character that is not printable shown as an escape."""
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
