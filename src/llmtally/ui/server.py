"""Serving the dashboard: the socket, the token, the uvicorn server, in the foreground or a thread.

Bound to loopback (the default) the dashboard is for this machine's user and needs no token, but
answers only to the host names it was bound as. Bound to any other address, every request must
carry a token made at start and printed with the address (``?token=``): the ledger says what a
team spends on what, which is nobody else's business.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import socket
import threading
from collections.abc import Mapping
from typing import Any

import uvicorn

from ..ledger import Ledger
from .app import Guard, create_app

__all__ = ["Dashboard", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host.lower() == "localhost":
        host = "127.0.0.1"
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Dashboard:
    """The dashboard over ``ledger``, bound at once (so the address is known before it serves)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        money: Mapping[str, Any] | None = None,
        token: str | None = None,
        poll_seconds: float = 2.0,
    ) -> None:
        self.ledger = ledger
        self.socket = _bind(host, port)
        self.port = int(self.socket.getsockname()[1])
        self.loopback = is_loopback(host)
        #: Required beyond loopback (made here unless given); never on loopback.
        self.token = None if self.loopback else (token or secrets.token_urlsafe(24))
        shown = f"[{host.strip('[]')}]" if ":" in host else host
        if self.loopback:
            names = {shown, "localhost", "127.0.0.1", "[::1]"}
            hosts: set[str] | None = {f"{n}:{self.port}" for n in names} | names
        else:
            hosts = None
        app = Guard(create_app(ledger, money=money, poll_seconds=poll_seconds), hosts=hosts, token=self.token)
        if host.strip("[]") in ("0.0.0.0", "::", ""):  # every address: name the machine, not 0.0.0.0
            import socket

            shown = socket.gethostname()
        self.address = f"http://{shown}:{self.port}/"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open: with the token when one is needed."""
        return self.address + (f"?token={self.token}" if self.token else "")

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C), in this thread."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self) -> Dashboard:
        """Serve in a background thread (tests, benchmarks); ``stop()`` ends it."""
        self._thread = threading.Thread(target=self.serve, name="llmtally-ui", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(OSError):
            self.socket.close()
