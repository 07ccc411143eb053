"""The fault matrix: every injected fault, through the real hook and through a real task run.

One table is the contract (README, "What each answer does to the task"). For each fault it says
what the hook raises (always one of the provider's typed errors, never a ``requests``/``urllib3``
/``json`` exception) and how many requests reached the server, then what a task with
``retries=1`` ends as (state, try number) and how many requests both tries made in all.

Faults come from the simulator (``fail_next``), from the loopback addresses in
``airflow_provider_wa019.testing`` (refused, connect timeout), and from a raw-socket server below
that breaks the HTTP exchange itself (which the simulator, a well-behaved HTTP server, cannot).
Connection settings make retries fast: backoff 10 ms, waits capped at 0.1 s (Retry-After too).
"""

from __future__ import annotations

import functools
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG
from airflow_support import run_dag

from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator
from airflow_provider_wa019.testing import (
    DEFAULT_SENDER,
    DEFAULT_TOKEN,
    WhatsAppSimulator,
    refused_address,
    unresponsive_address,
)

CLIENT = "972501234567"
# Connect timeout 0.3 s (three tries of an unresponsive address: ~1 s); read timeout 0.5 s.
FAST = {"backoff_factor": 0.01, "max_retry_wait": 0.1, "timeout": [0.3, 0.5]}
START = pendulum.datetime(2026, 1, 1, tz="UTC")
MANY = 99  # "every request from now on" for a queued simulator fault
# The connection's proxies, for the rows that need one (set by fault_server, cleared after).
PROXY: dict[str, str] = {}

SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"
OK_ANSWER = '{"status":"OK","reason":1,"unique":"m-1","to":"972501234567"}'


@dataclass(frozen=True)
class Fault:
    """One row of the matrix.

    ``sim``: ``fail_next`` arguments (``n`` = how many requests), or ``server``: one of
    ``"refused"``, ``"unresponsive"``, ``"dead_proxy"`` (the simulator behind a proxy that refuses),
    ``"gateway_502"``/``"gateway_504"`` (a gateway forwarding to the simulator, then answering that
    status), or a raw-socket behaviour (``"cut_body"``, ``"hang_up"``, ``"gzip_bomb"``).
    ``hook``: the error the hook raises, None for a successful send. ``hook_requests``: requests
    the server saw from one ``send_message``. ``task``: (final state, try number) with
    ``retries=1``. ``task_requests``: requests the server saw from both tries.
    """

    hook: type[WhatsAppError] | None
    hook_requests: int
    task: tuple[str, int]
    task_requests: int
    sim: dict[str, Any] = field(default_factory=dict)
    server: str = "simulator"
    reason: int | None = None  # the WhatsAppAPIError's reason, where there is one


# fmt: off
MATRIX: dict[str, Fault] = {
    # WhatsApp's own "error, try again": retried by the hook (3 tries), then by Airflow.
    "reason 6 burst of 2, hook recovers":
        Fault(None, 3, (SUCCESS, 1), 3, sim={"reason": 6, "n": 2}),
    "reason 6 burst of 5, the task's retry recovers":
        Fault(WhatsAppAPIError, 3, (SUCCESS, 2), 6, sim={"reason": 6, "n": 5}, reason=6),
    "reason 6 throughout":
        Fault(WhatsAppAPIError, 3, (FAILED, 2), 6, sim={"reason": 6, "n": MANY}, reason=6),
    # Not processed: retried by the hook (urllib3), then by Airflow.
    "429 with Retry-After once (capped)":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429, "retry_after": 3600}),
    "429 with Retry-After throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "retry_after": 1, "n": MANY}),
    "429 without Retry-After once":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429}),
    "429 without Retry-After throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "n": MANY}),
    "503 twice, hook recovers":
        Fault(None, 3, (SUCCESS, 1), 3, sim={"status": 503, "n": 2}),
    "connection refused":
        Fault(WhatsAppTransientError, 0, (FAILED, 2), 0, server="refused"),
    "connect timeout":
        Fault(WhatsAppTransientError, 0, (FAILED, 2), 0, server="unresponsive"),
    # May have been processed: delivery unknown, never retried by the hook; Airflow's retries apply.
    "500":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"status": 500, "n": MANY}),
    "read timeout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"delay": 1.0, "n": MANY}),
    "connection dropped mid-body":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="cut_body"),
    "connection closed without an answer":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="hang_up"),
    # A gateway's 502/504 may come after the API took the message: never re-sent by the hook.
    "502 throughout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"status": 502, "n": MANY}),
    "504 throughout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"status": 504, "n": MANY}),
    # The same through a real gateway in front of the simulator: the count is of messages the
    # simulator accepted, so a retry would show as a duplicate delivery.
    "gateway 502 after the API took the message":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="gateway_502"),
    "gateway 504 after the API took the message":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="gateway_504"),
    # Not a whole number of seconds: unusable, so treated as absent; still the rate limit it is.
    "429 with Retry-After 1.5 once":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429, "retry_after": "1.5"}),
    "429 with Retry-After -5 once":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429, "retry_after": "-5"}),
    "429 with Retry-After 'soon' throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "retry_after": "soon", "n": MANY}),
    "503 with Retry-After 'soon' once":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 503, "retry_after": "soon"}),
    # A proxy that refuses: nothing reached the API.
    "proxy refuses":
        Fault(WhatsAppTransientError, 0, (FAILED, 2), 0, server="dead_proxy"),
    # Answers no API sends; each fails without a retry (a retry could send twice).
    "JSON nested 100,000 deep":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, sim={"body": "[" * 100_000 + "]" * 100_000, "n": MANY}),
    "5 MB answer":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1,
              sim={"body": '{"status":"OK","reason":1,"unique":"m-1","x":"' + "a" * 5_000_000 + '"}', "n": MANY}),
    "gzip bomb":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, server="gzip_bomb"),
    # An answer that is not the documented JSON: unclear, failed without any retry.
    "body cut mid-JSON":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, sim={"body": '{"status":"OK","reason":1,"uni', "n": MANY}),
    "HTML error page":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1,
              sim={"body": "<html><h1>502 Bad Gateway</h1></html>", "n": MANY}),
    "empty 200":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, sim={"body": "", "n": MANY}),
    "JSON array":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, sim={"body": f"[{OK_ANSWER}]", "n": MANY}),
    "reason not a number":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1,
              sim={"body": '{"status":"OK","reason":"OK","unique":"m-1"}', "n": MANY}),
    "missing unique":
        Fault(WhatsAppResponseError, 1, (FAILED, 1), 1, sim={"body": '{"status":"OK","reason":1}', "n": MANY}),
    # Numbers as strings are the API's own habit: a "reason" in digits counts as that reason.
    "reason '1' as a string":
        Fault(None, 1, (SUCCESS, 1), 1, sim={"body": '{"status":"OK","reason":"1","unique":"m-1"}'}),
    "reason '7' as a string":
        Fault(WhatsAppAPIError, 1, (SKIPPED, 1), 1, sim={"body": '{"status":"FAIL","reason":"7"}'}, reason=7),
    "reason '6' as a string throughout":
        Fault(WhatsAppAPIError, 3, (FAILED, 2), 6, sim={"body": '{"status":"FAIL","reason":"6"}', "n": MANY},
              reason=6),
}
# fmt: on


# --------------------------------------------------------------------------------------------
# A raw-socket server for faults below HTTP


class BrokenServer:
    """Reads each request, then breaks the exchange: ``cut_body`` promises 200 bytes and sends
    19 before closing; ``hang_up`` closes without answering. Counts the requests it read."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.count = 0
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


@functools.cache
def gzip_bomb(size: int = 200_000_000) -> bytes:
    """A gzip stream of ``size`` "0" bytes (about 200 KB for 200 MB), made once."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"0" * 1_000_000
    return b"".join(compressor.compress(block) for _ in range(size // len(block))) + compressor.flush()


@contextmanager
def fault_server(fault: Fault) -> Iterator[tuple[str, Callable[[], int]]]:
    """Yield (base_url, count of requests the server saw) with the fault armed."""
    if fault.server.startswith("gateway_"):
        with WhatsAppSimulator() as sim:
            sim.open_window(CLIENT)
            with GatewayServer(int(fault.server.rsplit("_", 1)[1]), sim.base_url) as gateway:
                yield gateway.base_url, lambda: len(sim.sent)
    elif fault.server == "dead_proxy":
        with WhatsAppSimulator() as sim, refused_address() as proxy:
            sim.open_window(CLIENT)
            PROXY["http"] = proxy
            try:
                yield sim.base_url, lambda: len(sim.requests)
            finally:
                PROXY.clear()
    elif fault.server == "simulator":
        with WhatsAppSimulator() as sim:
            sim.open_window(CLIENT)
            kwargs = dict(fault.sim)
            sim.fail_next(kwargs.pop("n", 1), **kwargs)
            yield sim.base_url, lambda: len(sim.requests)
    elif fault.server == "refused":
        with refused_address() as base_url:
            yield base_url, lambda: 0
    elif fault.server == "unresponsive":
        with unresponsive_address() as base_url:
            yield base_url, lambda: 0
    else:
        gzip_bomb()  # made before the request arrives, so its cost is not the server's latency
        with BrokenServer(fault.server) as server:
            yield server.base_url, lambda: server.count


def settled_count(count: Callable[[], int], expected: int) -> int:
    # The simulator records a delayed request once its answer is written, after the client gave
    # up: wait (bounded) for the expected number, then report what is there.
    deadline = time.monotonic() + 5
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return count()


# --------------------------------------------------------------------------------------------
# The matrix


@pytest.mark.parametrize("name", MATRIX, ids=list(MATRIX))
def test_fault_through_the_hook(name, wa019_env):
    fault = MATRIX[name]
    with fault_server(fault) as (base_url, count):
        wa019_env(host=base_url, password=DEFAULT_TOKEN, sender=DEFAULT_SENDER, proxies=dict(PROXY), **FAST)
        with WhatsAppHook() as hook:
            if fault.hook is None:
                result = hook.send_message(CLIENT, "Your order shipped")
                assert result.unique
            else:
                # Nothing but the provider's typed errors escapes, and exactly the documented one.
                with pytest.raises(WhatsAppError) as err:
                    hook.send_message(CLIENT, "Your order shipped")
                assert type(err.value) is fault.hook, repr(err.value)
                if fault.reason is not None:
                    assert err.value.reason == fault.reason
                # retryable is what the operator turns into "Airflow's retries apply".
                assert err.value.retryable == (fault.task[1] == 2)
        assert settled_count(count, fault.hook_requests) == fault.hook_requests


@pytest.mark.parametrize("name", MATRIX, ids=list(MATRIX))
def test_fault_through_a_task_run(name, wa019_env, airflow_db):
    fault = MATRIX[name]
    with fault_server(fault) as (base_url, count):
        wa019_env(host=base_url, password=DEFAULT_TOKEN, sender=DEFAULT_SENDER, proxies=dict(PROXY), **FAST)
        with DAG(f"fault_{abs(hash(name))}", schedule=None, start_date=START, catchup=False) as dag:
            WhatsAppSendOperator(
                task_id="send",
                to=CLIENT,
                body="Your order shipped",
                retries=1,
                retry_delay=timedelta(milliseconds=1),
            )
        result = run_dag(dag)
        assert result.tis["send"] == fault.task
        assert settled_count(count, fault.task_requests) == fault.task_requests
    if fault.task[0] == SUCCESS:
        assert result.xcom("send")
    else:
        with pytest.raises(KeyError):
            result.xcom("send")
