"""The HTTP plumbing: a threading HTTP/1.1 server that reads requests and writes answers.

It knows nothing of the API: :class:`Server` is given an ``answer`` callable
``(method, path, query, headers, body, client_port) -> Response`` and :class:`Handler` reads
each request's body (``Content-Length`` or chunked), calls it, and writes the
:class:`~airflow_provider_wa019.testing.records.Response` in one buffered write on a kept-alive
connection. The server tracks its open connections so ``stop()`` can end them at once, and is
quiet about clients that hang up.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_wa019.testing.records import Response

#: ``(method, path, query, headers, body, client_port) -> Response``; ``headers`` look names up
#: case-insensitively, as HTTP does.
Answer = Callable[[str, str, str, Message, bytes, int], Response]


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    block_on_close = False
    request_queue_size = 128  # bulk clients open many connections at once

    def __init__(self, address: tuple[str, int], answer: Answer) -> None:
        self.answer = answer
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet about clients that hang up (timeouts, stop()); loud about anything else (a bug).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        # Keep-alive handler threads block reading the next request; wake them with EOF.
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections like with the real API
    # Headers and body leave in one buffered write (flushed by handle_one_request) with TCP_NODELAY:
    # two small writes would meet Nagle + delayed ACK and cost ~40 ms per keep-alive request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server_version = "wa019-simulator"
    sys_version = ""
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read sim.requests instead
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(Response.json(400, {"status": "FAIL", "message": "bad request framing"}))
            return
        # self.headers (an email Message) looks names up case-insensitively, like HTTP does.
        response = self.server.answer(
            self.command, split.path or "/", split.query, self.headers, raw, self.client_address[1]
        )
        self._write(response)

    def _write(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if response.body:
                self.wfile.write(response.body)
            self.wfile.flush()  # here, so a vanished client is handled below rather than logged
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout during a delay fault): nothing to tell it.
            self.close_connection = True
