"""Run the command line with its stdout on a pseudo-terminal, as a person at a terminal sees it."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest


def on_a_terminal(args: list[str], columns: int = 200, **env: str) -> bytes:
    """``python -m llmtally ARGS`` with its stdout on a pseudo-terminal COLUMNS wide: all it wrote.
    ``NO_COLOR`` is unset unless given (a terminal that wants colour)."""
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("no pseudo-terminals on Windows")
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    environ = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color", **env}
    if "NO_COLOR" not in env:
        environ.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmtally", *args], stdout=follower, stderr=subprocess.PIPE, env=environ
    )
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            proc.kill()
            raise AssertionError("llmtally wrote nothing for 60 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return b"".join(chunks)
