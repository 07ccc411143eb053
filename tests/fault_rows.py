"""The fault matrix's rows, for every transport: each answer or fault, how to arm it, and what a
send through the hook must then raise and how many requests reach the server.

Support, not a test module: tests/test_faults.py (the sync hook and real task runs) and
tests/test_async_hook.py (the same rows through the async hook) both read these rows, so the two
transports are held to one table. The contract is the README's "What each answer does to the
task". The raw-socket servers are in tests/fault_support.py.

Each row: ``hook`` (the error type, None for a success) and ``hook_requests`` (requests the server
saw from one ``send_message``) for any hook; ``task``/``task_requests`` for a task run with
``retries=1``; the optional columns say more (reason, status, text, answers, deliveries, time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow_support import FAST
from fault_support import OK_ANSWER, BrokenServer, GatewayServer

from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
)
from airflow_provider_wa019.testing import (
    DEFAULT_SENDER,
    DEFAULT_TOKEN,
    WhatsAppSimulator,
    refused_address,
    unresponsive_address,
)

CLIENT = "972501234567"
MANY = 99  # "every request from now on" for a queued simulator fault

SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"


@dataclass(frozen=True)
class Fault:
    """One row of the matrix.

    How the row is made: ``sim``: ``fail_next`` arguments (``n`` = how many requests), or
    ``server``: one of ``"refused"``, ``"unresponsive"``, ``"dead_proxy"`` (the simulator behind a
    proxy that refuses), ``"gateway_502"``/``"gateway_504"`` (a gateway forwarding to the
    simulator, then answering that status), or a raw-socket behaviour (``"cut_body"``,
    ``"hang_up"``, ``"gzip_bomb"``). ``conn``: connection settings on top of ``FAST`` (a wrong
    ``password``, another ``sender``, a ``timeout``). ``wrote``: hours since the client last
    wrote (None: never, a first contact). ``op``: arguments of the task's operator.

    What must happen: ``hook``: the error the hook raises, None for a successful send.
    ``hook_requests``: requests the server saw from one ``send_message``. ``task``: (final state,
    try number) with ``retries=1``. ``task_requests``: requests the server saw from both tries.

    And, where given, of the hook's send: ``reason``/``http_status`` of its error, ``text`` (a
    regular expression its message matches), ``answers`` (what the server answered each request:
    (HTTP status, reason or None)), ``delivered`` (messages the simulator accepted), ``seconds``
    (the bounds of how long it took).
    """

    hook: type[WhatsAppError] | None
    hook_requests: int
    task: tuple[str, int]
    task_requests: int
    sim: dict[str, Any] = field(default_factory=dict)
    server: str = "simulator"
    conn: dict[str, Any] = field(default_factory=dict)
    wrote: float | None = 0
    op: dict[str, Any] = field(default_factory=dict)
    reason: int | None = None
    http_status: int | None = None
    text: str | None = None
    answers: tuple[tuple[int, int | None], ...] | None = None
    delivered: int | None = None
    seconds: tuple[float, float] = (0, 10)  # no row waits out a Retry-After or a read timeout of 30 s


# fmt: off
MATRIX: dict[str, Fault] = {
    # The API's refusals: one request, not retried by the hook nor by Airflow. 7 and 8 (the
    # 24-hour window) skip the task, unless skip_on_reasons leaves them out.
    "reason 2 unknown sender":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, conn={"sender": "972779999999"}, reason=2,
              text="'from' account does not exist"),
    "reason 3 wrong token":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, conn={"password": "wrong-token"}, reason=3),
    "reason 4 bad number":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, sim={"reason": 4}, reason=4),
    "reason 5 empty body":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, sim={"reason": 5}, reason=5),
    "reason 7 window closed":
        Fault(WhatsAppAPIError, 1, (SKIPPED, 1), 1, wrote=25, reason=7, text="template"),
    "reason 8 first contact":
        Fault(WhatsAppAPIError, 1, (SKIPPED, 1), 1, wrote=None, reason=8, delivered=0),
    "reason 8 not in skip_on_reasons":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, wrote=None, op={"skip_on_reasons": ()}, reason=8),
    "unknown reason 42":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, sim={"reason": 42}, reason=42,
              text="undocumented reason code 42"),
    # A refused token over HTTP is reason 3 too, never retried (the body is no API answer).
    "HTTP 401":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, sim={"status": 401, "body": '{"message": "Unauthorized"}', "n": MANY},
              reason=3, http_status=401),
    "HTTP 403":
        Fault(WhatsAppAPIError, 1, (FAILED, 1), 1, sim={"status": 403, "body": '{"message": "Unauthorized"}', "n": MANY},
              reason=3, http_status=403),
    # WhatsApp's own "error, try again": retried by the hook (3 tries), then by Airflow.
    "reason 6 once, hook recovers":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"reason": 6}),
    "reason 6 burst of 2, hook recovers":
        Fault(None, 3, (SUCCESS, 1), 3, sim={"reason": 6, "n": 2},
              answers=((200, 6), (200, 6), (200, 1)), delivered=1),
    "reason 6 burst of 5, the task's retry recovers":
        Fault(WhatsAppAPIError, 3, (SUCCESS, 2), 6, sim={"reason": 6, "n": 5}, reason=6),
    "reason 6 throughout":
        Fault(WhatsAppAPIError, 3, (FAILED, 2), 6, sim={"reason": 6, "n": MANY}, reason=6),
    # Not processed: retried by the hook (urllib3), then by Airflow.
    "429 with Retry-After once (capped)":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429, "retry_after": 3600}, answers=((429, None), (200, 1))),
    "429 with Retry-After throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "retry_after": 1, "n": MANY}),
    "429 with Retry-After 0 throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "retry_after": 0, "n": MANY},
              text="HTTP 429", delivered=0),
    "429 without Retry-After once":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 429}),
    "429 without Retry-After throughout":
        Fault(WhatsAppTransientError, 3, (FAILED, 2), 6, sim={"status": 429, "n": MANY}, delivered=0),
    "503 once, hook recovers":
        Fault(None, 2, (SUCCESS, 1), 2, sim={"status": 503}, answers=((503, None), (200, 1)), delivered=1),
    "503 twice, hook recovers":
        Fault(None, 3, (SUCCESS, 1), 3, sim={"status": 503, "n": 2}),
    "connection refused":
        Fault(WhatsAppTransientError, 0, (FAILED, 2), 0, server="refused", text="Connection refused"),
    # Three connect attempts of 0.2 s each, not one 5 s read timeout.
    "connect timeout":
        Fault(WhatsAppTransientError, 0, (FAILED, 2), 0, server="unresponsive", conn={"timeout": [0.2, 5]},
              text=r"could not connect .* within 0\.2 s on 3 tries", seconds=(0.5, 4)),
    # May have been processed: delivery unknown, never retried by the hook; Airflow's retries apply.
    "500":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2,
              sim={"status": 500, "body": "<html>Internal Server Error</html>", "n": MANY},
              http_status=500, text="delivery unknown"),
    "read timeout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"delay": 1.0, "n": MANY},
              text=r"no answer .* within 0\.5 s"),
    "connection dropped mid-body":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="cut_body"),
    "connection closed without an answer":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, server="hang_up"),
    # A gateway's 502/504 may come after the API took the message: never re-sent by the hook.
    "502 throughout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"status": 502, "n": MANY},
              http_status=502, text="HTTP 502", answers=((502, None),)),
    "504 throughout":
        Fault(WhatsAppDeliveryUnknownError, 1, (FAILED, 2), 2, sim={"status": 504, "n": MANY},
              http_status=504, text="HTTP 504", answers=((504, None),)),
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
              sim={"body": "<html><h1>502 Bad Gateway</h1></html>", "n": MANY}, text="HTTP 200"),
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
# Arming a row


@dataclass
class Armed:
    """A row's server, ready: where to send, what to count, the simulator if there is one."""

    base_url: str
    count: Callable[[], int]
    sim: WhatsAppSimulator | None = None
    proxies: dict[str, str] = field(default_factory=dict)

    def answers(self) -> list[tuple[int, int | None]]:
        assert self.sim is not None
        return [
            (r.response_status, r.response_json.get("reason") if r.response_status == 200 else None)
            for r in self.sim.requests
        ]


@contextmanager
def fault_server(fault: Fault, make_sim) -> Iterator[Armed]:
    """Yield the row's server with the fault armed (simulators from the ``make_sim`` fixture)."""

    def simulator() -> WhatsAppSimulator:
        sim = make_sim(connection=False)
        if fault.wrote is not None:
            sim.open_window(CLIENT, at=sim.now().subtract(hours=fault.wrote))
        return sim

    with ExitStack() as stack:
        if fault.server.startswith("gateway_"):
            sim = simulator()
            gateway = stack.enter_context(GatewayServer(int(fault.server.rsplit("_", 1)[1]), sim.base_url))
            yield Armed(gateway.base_url, lambda: len(sim.sent), sim)
        elif fault.server == "dead_proxy":
            sim = simulator()
            proxy = stack.enter_context(refused_address())
            yield Armed(sim.base_url, lambda: len(sim.requests), sim, proxies={"http": proxy})
        elif fault.server == "simulator":
            sim = simulator()
            if fault.sim:
                kwargs = dict(fault.sim)
                sim.fail_next(kwargs.pop("n", 1), **kwargs)
            yield Armed(sim.base_url, lambda: len(sim.requests), sim)
        elif fault.server in ("refused", "unresponsive"):
            address = refused_address() if fault.server == "refused" else unresponsive_address()
            yield Armed(stack.enter_context(address), lambda: 0)
        else:
            server = stack.enter_context(BrokenServer(fault.server))
            yield Armed(server.base_url, lambda: server.count)


def connect(wa019_env, fault: Fault, server: Armed) -> None:
    settings = {"password": DEFAULT_TOKEN, "sender": DEFAULT_SENDER, **FAST, "proxies": server.proxies}
    wa019_env(host=server.base_url, **{**settings, **fault.conn})


def settled_count(count: Callable[[], int], expected: int) -> int:
    # The simulator records a delayed request once its answer is written, after the client gave
    # up: wait (bounded) for the expected number, then report what is there.
    deadline = time.monotonic() + 5
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return count()
