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

import socket
import threading
import time
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

SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"
OK_ANSWER = '{"status":"OK","reason":1,"unique":"m-1","to":"972501234567"}'


@dataclass(frozen=True)
class Fault:
    """One row of the matrix.

    ``sim``: ``fail_next`` arguments (``n`` = how many requests), or ``server``: one of
    ``"refused"``, ``"unresponsive"``, or a raw-socket behaviour (``"cut_body"``, ``"hang_up"``).
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
    "502 throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 502, "n": MANY}),
    "503 twice, hook recovers":
        Fault(None, 3, (SUCCESS, 1), 3, sim={"status": 503, "n": 2}),
    "504 throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 504, "n": MANY}),
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


@contextmanager
def fault_server(fault: Fault) -> Iterator[tuple[str, Callable[[], int]]]:
    """Yield (base_url, count of requests the server saw) with the fault armed."""
    if fault.server == "simulator":
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
        wa019_env(host=base_url, password=DEFAULT_TOKEN, sender=DEFAULT_SENDER, **FAST)
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
        wa019_env(host=base_url, password=DEFAULT_TOKEN, sender=DEFAULT_SENDER, **FAST)
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
