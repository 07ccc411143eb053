"""A lean loopback stand-in for the 019sms send endpoint, for the bulk benchmarks.

    .venv/bin/python benchmarks/bulk_server.py [--latency 0.02] [--port 0] [--cpu 1]

Prints ``port: N`` once listening, then answers every ``POST`` after ``--latency`` seconds with
the send contract's accepted answer (``{"status": "OK", "unique": ..., "reason": 1, ...}``, the
fields :func:`airflow_provider_wa019.api.parse_send_response` reads, as the simulator answers).
A request without a bearer ``Authorization`` header gets HTTP 401.

Why not the simulator or the stdlib ``ThreadingHTTPServer``: those cost 150-210 us of CPU per
request, so at 1,600 requests a second a benchmark would measure the server. This one is an
``asyncio.Protocol`` (no coroutine, no thread per request): it parses HTTP/1.1 keep-alive requests
with a ``Content-Length`` body, and schedules the answer with ``loop.call_later``, about 30 us of
CPU per request. It runs in its own process (``--cpu`` pins it to one core), so it never shares the
client's GIL or core. Loopback only; it keeps no per-request state once answered.

:func:`start` runs it as a child process and returns its port, for ``bulk_send.py`` and
``bulk_dags_test.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 33\r\n\r\n"
    b'{"status":"FAIL","message":"401"}'
)


class _SendProtocol(asyncio.Protocol):
    """One client connection: requests in, delayed answers out, in order."""

    def __init__(self, latency: float, uniques: itertools.count) -> None:
        self._latency = latency
        self._uniques = uniques
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(_HEAD_END)
            if end < 0:
                return
            head = bytes(buffer[:end]).lower()
            at = head.find(_CONTENT_LENGTH)
            length = 0
            if at >= 0:
                line_end = head.find(b"\r\n", at + 2)
                length = int(head[at + len(_CONTENT_LENGTH) : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            answer = self._answer(head, body)
            if self._latency > 0:
                self._loop.call_later(self._latency, self._write, answer)
            else:
                self._write(answer)

    def _answer(self, head: bytes, body: bytes) -> bytes:
        if b"\r\nauthorization: bearer " not in head:
            return _UNAUTHORIZED
        try:
            message = json.loads(body)
        except ValueError:
            message = {}
        unique = f"b{next(self._uniques):x}"
        payload = json.dumps(
            {
                "status": "OK",
                "unique": unique,
                "body": message.get("body", ""),
                "timestamp": int(time.time()),
                "from": message.get("from", ""),
                "to": message.get("to", ""),
                "templateTimeLeft": "1440",
                "conversationTimeLeft": "1440",
                "reason": 1,
            },
            separators=(",", ":"),
        ).encode()
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
            + payload
        )

    def _write(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)


async def serve(latency: float, port: int = 0, host: str = "127.0.0.1") -> None:
    """Serve until cancelled (SIGTERM/SIGINT when run as a script); prints ``port: N``."""
    loop = asyncio.get_running_loop()
    uniques = itertools.count(1)
    server = await loop.create_server(
        lambda: _SendProtocol(latency, uniques), host, port, backlog=1024, reuse_address=True
    )
    print(f"port: {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def start(latency: float, *, cpu: int | None = None) -> tuple[subprocess.Popen[str], int]:
    """This server in a child process (pinned to ``cpu`` if given); returns it and its port."""
    args = [sys.executable, str(Path(__file__).resolve()), "--latency", str(latency)]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("port: "):
        proc.kill()
        raise RuntimeError(f"the benchmark server did not start: {line!r}")
    return proc, int(line.removeprefix("port: "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.02, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this core")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    asyncio.run(serve(args.latency, args.port))


if __name__ == "__main__":
    main()
