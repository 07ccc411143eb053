"""Servers that break HTTP where the simulator, a well-behaved HTTP server, cannot (import as
``from fault_support import ...``; a support module, not a test module).

- ``BrokenServer("cut_body" | "hang_up" | "gzip_bomb")``: reads each request, then breaks the
  exchange; counts the requests it read.
- ``GatewayServer(status, upstream)``: a reverse proxy that lets the simulator take the message,
  then answers 502/504 itself.
- ``gzip_bomb()``: 200 MB of "0" gzipped to about 200 KB, made once per process.
"""

from __future__ import annotations

import functools
import socket
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

OK_ANSWER = '{"status":"OK","reason":1,"unique":"m-1","to":"972501234567"}'


@functools.cache
def gzip_bomb(size: int = 200_000_000) -> bytes:
    """A gzip stream of ``size`` "0" bytes (about 200 KB for 200 MB), made once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"0" * 1_000_000
    return b"".join(compressor.compress(block) for _ in range(size // len(block))) + compressor.flush()


class BrokenServer:
    """Reads each request, then breaks the exchange: ``cut_body`` promises 200 bytes and sends
    19 before closing; ``hang_up`` closes without answering; ``gzip_bomb`` answers 200 with a
    gzip bomb as the body. Counts the requests it read."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.count = 0
        if behaviour == "gzip_bomb":
            gzip_bomb()  # made before the request arrives, so its cost is not the server's latency
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        continue
                    self.count += 1
                    if self.behaviour == "gzip_bomb":
                        bomb = gzip_bomb()
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                            + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
                            + bomb
                        )
                    if self.behaviour == "cut_body":
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                            + OK_ANSWER.encode()[:19]
                        )
                except OSError:
                    pass

    def __enter__(self) -> BrokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


class GatewayServer:
    """A reverse proxy in front of a simulator that forwards each request, lets the simulator take
    the message, then answers ``status`` itself: a gateway that lost the answer (502) or stopped
    waiting for it (504)."""

    def __init__(self, status: int, upstream: str) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                conn.request("POST", self.path, body, dict(self.headers))
                conn.getresponse().read()  # the API answered: the message is taken
                conn.close()
                page = f"<html><h1>{status} gateway error</h1></html>".encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> GatewayServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def canned_server(
    head: bytes, chunks: Iterator[bytes], pause: float = 0.0
) -> Iterator[tuple[str, list[int]]]:
    """Answers one request with ``head`` and then the chunks, ``pause`` s apart. Yields the base
    URL and a list holding how many chunks it managed to send."""
    sock = socket.create_server(("127.0.0.1", 0))
    sent = [0]
    stop = threading.Event()

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            try:
                conn.sendall(head)
                for chunk in chunks:
                    if pause and stop.wait(pause):
                        return
                    conn.sendall(chunk)
                    sent[0] += 1
            except OSError:  # the client stopped reading: what we want
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", sent
    finally:
        stop.set()
        sock.close()
        thread.join(timeout=10)
