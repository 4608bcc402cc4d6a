"""The loopback HTTP/1.1 server behind `FakeProvider.serve`.

Plain answers carry a Content-Length; streams are chunked with one server-sent event per
chunk, written straight to the socket so a client sees them one at a time. Connections stay
open between requests, as the SDKs' pools expect, and `LoopbackServer.close` shuts every one
of them down so no handler thread outlives the ``with`` block.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._wire import Answer

if TYPE_CHECKING:
    from ._provider import FakeProvider

__all__ = ["LoopbackServer"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Without this, Nagle's algorithm holds back each small write (a header block, an event)
        # until the client's delayed ACK: ~40 ms per request, and streams that arrive in clumps.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            # The client hung up (or close() shut the socket); nothing left to answer.
            self.close_connection = True

    def _serve(self) -> None:
        body = self._read_body()
        try:
            answer = self.server.provider.answer(self.command, self.path, dict(self.headers.items()), body)
        except Exception as exc:
            # A broken handler should fail the test with its own message, not as a dropped connection.
            traceback.print_exc()
            message = f"FakeProvider handler raised {exc!r}"
            error = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
            answer = Answer(500, {"content-type": "application/json"}, json.dumps(error).encode())
        if answer.delay:
            time.sleep(answer.delay)
        if answer.events is None:
            self._send_head(answer, {"content-length": str(len(answer.body))})
            self.wfile.write(answer.body)
            return
        self._send_head(answer, {"transfer-encoding": "chunked"})
        for event in answer.events:
            if event:  # an empty chunk would end the body early
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        if answer.truncated:
            # Drop the connection with the chunked body unfinished, like a provider that died mid-stream.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(b"0\r\n\r\n")

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _serve

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_head(self, answer: Answer, framing: dict[str, str]) -> None:
        self.send_response(answer.status, answer.reason())
        for name, value in {**answer.headers, **framing}.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 refuses bursts: fifty async tasks connecting at once.
    request_queue_size = 1024

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider
        self.connections: set[socket.socket] = set()
        self.handler_threads: set[threading.Thread] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
            self.handler_threads = {t for t in self.handler_threads if t.is_alive()}
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.handler_threads.add(threading.current_thread())
        super().process_request_thread(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class LoopbackServer:
    """`FakeProvider` answering on ``127.0.0.1`` at an ephemeral port, in a daemon thread."""

    def __init__(self, provider: FakeProvider) -> None:
        self._server = _Server(provider)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="llmtally-fake", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, then end the idle keep-alive connections the handler threads are waiting on."""
        self._server.shutdown()
        with self._server.connections_lock:
            open_connections = list(self._server.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join()
        # Handler threads are daemons, but a clean stop waits for them: every open connection's
        # thread has registered itself once the connection set drains.
        deadline = time.monotonic() + 5
        while self._server.connections and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._server.connections_lock:
            threads = list(self._server.handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
