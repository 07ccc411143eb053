"""Bulk send throughput: the bulk engine against what a user would hand-roll, in one run.

    .venv/bin/python benchmarks/bulk_send.py [--quick] [--report-only] [--latency 0.02]

A lean loopback server (``benchmarks/bulk_server.py``: an ``asyncio.Protocol`` in its own
process, pinned to the other core) answers every send after ``--latency`` (default 20 ms), as a
real API across a network would, with the 019sms accepted answer. This process (the client) is
pinned to one core (``os.sched_setaffinity``), so CPU per message decides what it can reach.
Every case sends one free-form message per recipient, the text made from the recipient's name
and order:

at 32 in flight (ceiling: 32 / latency, 1,600 msg/s at 20 ms)

* ``threads + requests``  a ``ThreadPoolExecutor`` of 32 threads over one shared
                          ``requests.Session``;
* ``aiohttp script``      asyncio + ``aiohttp`` + a semaphore of 32, what a user would write in 30
                          lines (one task per message, ``asyncio.gather``);
* ``engine``              the operator's path: ``BulkSender`` with ``WhatsAppAsyncHook`` (checks,
                          reason rules, typed results), the body rendered per recipient with Jinja
                          by the operator's own ``_message_functions``, the progress ledger
                          written in batches to a store whose every write costs
                          ``--ledger-write-ms`` (default 10 ms, as a ledger write through the task
                          SDK costs);
* ``raw asyncio streams`` not a peer: 32 connections writing and parsing HTTP by hand (no
                          library), the most this machine, loopback and server allow; printed so a
                          missed ceiling target can be told apart from a slow client.

at 1 in flight

* ``sequential loop``     a plain loop over one ``requests.Session``;
* ``engine``              as above, ``max_concurrency=1``.

The messages are split into ``--rounds`` rounds (default 3) and the cases run interleaved, round
by round with the order rotating, so drift on a noisy machine hits them all alike. Printed per
case: messages per second (all rounds), its ratio to the best peer, its share of the ceiling, and
the client's CPU time per message (this process, every thread). Targets: at 32 in flight the
engine at least 1.0x the aiohttp script and 0.9 of the ceiling; at 1 in flight the engine within
10% of the sequential loop. The exit status is 1 when a target is missed, unless
``--report-only``.

``--quick``: 900 messages per case at 32 in flight and 100 at 1, in 2 rounds (about 25 s instead
of about 60 s). Loopback only; every loop is bounded by the message count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Runnable from a checkout without installing: the package sits next to this folder.
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bulk_server  # noqa: E402

SEND_PATH = "/api/whatsapp/sendMessage"
SENDER = "972771234567"
TOKEN = "bench-token-0123456789"
BODY = "Hi {{ name }}, your order {{ order }} has shipped and arrives tomorrow ({{ ds }})."
DS = "2026-12-01"
#: Not a peer (no user would write it): the most this machine and server allow.
FLOOR = "raw asyncio streams"
# (sent, wall seconds, CPU seconds)
Case = Callable[[list[dict]], tuple[int, float, float]]


def text_of(recipient: dict) -> str:
    """The peers' body: what the engine renders from BODY, made with an f-string."""
    return f"Hi {recipient['name']}, your order {recipient['order']} has shipped and arrives tomorrow ({DS})."


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    sent = fn()
    return sent, time.perf_counter() - wall, time.process_time() - cpu


def requests_session(url: str):
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=32)
    session.mount("http://", adapter)
    return session


def sequential_case(url: str) -> Case:
    session = requests_session(url)

    def run(recipients: list[dict]) -> tuple[int, float, float]:
        def go() -> int:
            sent = 0
            for r in recipients:
                answer = session.post(
                    url, json={"from": SENDER, "to": r["to"], "body": text_of(r)}, timeout=30
                )
                sent += answer.json().get("reason") == 1
            return sent

        return timed(go)

    return run


def threads_case(url: str, concurrency: int) -> Case:
    from concurrent.futures import ThreadPoolExecutor

    session = requests_session(url)
    pool = ThreadPoolExecutor(concurrency)

    def one(r: dict) -> bool:
        answer = session.post(url, json={"from": SENDER, "to": r["to"], "body": text_of(r)}, timeout=30)
        return answer.json().get("reason") == 1

    def run(recipients: list[dict]) -> tuple[int, float, float]:
        return timed(lambda: sum(pool.map(one, recipients)))

    return run


def aiohttp_case(url: str, concurrency: int) -> Case:
    """The script a user would hand-roll: one session, a semaphore, gather."""
    import aiohttp

    async def main(recipients: list[dict]) -> int:
        semaphore = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one(r: dict) -> bool:
                async with semaphore:
                    message = {"from": SENDER, "to": r["to"], "body": text_of(r)}
                    async with session.post(url, json=message) as answer:
                        return (await answer.json()).get("reason") == 1

            return sum(await asyncio.gather(*(one(r) for r in recipients)))

    def run(recipients: list[dict]) -> tuple[int, float, float]:
        return timed(lambda: asyncio.run(main(recipients)))

    return run


def raw_case(port: int, concurrency: int) -> Case:
    """Not a peer: bare asyncio streams writing and reading the HTTP by hand (about 150 us a
    message), to show what this machine and server allow at all."""

    async def main(recipients: list[dict]) -> int:
        pending = iter(recipients)
        sent = 0

        async def connection() -> None:
            nonlocal sent
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for r in pending:
                body = json.dumps({"from": SENDER, "to": r["to"], "body": text_of(r)}).encode()
                writer.write(
                    b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (SEND_PATH.encode(), TOKEN.encode(), len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                answer = json.loads(await reader.readexactly(length))
                sent += answer.get("reason") == 1
            writer.close()

        await asyncio.gather(*(connection() for _ in range(concurrency)))
        return sent

    def run(recipients: list[dict]) -> tuple[int, float, float]:
        return timed(lambda: asyncio.run(main(recipients)))

    return run


def engine_case(concurrency: int, ledger_write: float) -> Case:
    """``WhatsAppBulkSendOperator``'s path without Airflow's task runner around it."""
    from airflow_provider_wa019.bulk import BulkSender, MemoryLedgerStore, ProgressLedger, parse_recipients
    from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook
    from airflow_provider_wa019.operators.bulk import WhatsAppBulkSendOperator

    operator = WhatsAppBulkSendOperator(task_id="bench", recipients=[], body=BODY)
    log = logging.getLogger("wa019.benchmark")
    log.setLevel(logging.WARNING)

    def run(recipients: list[dict]) -> tuple[int, float, float]:
        parsed, _ = parse_recipients(recipients)  # done before the send in the operator too
        hook = WhatsAppAsyncHook()
        hook.message_log_level = logging.DEBUG  # as the operator sets it: no line per message
        _ = hook.settings  # read on this thread, as the operator does
        prepare, send = operator._message_functions({"ds": DS, "params": {}}, hook)
        engine = BulkSender(
            send,
            prepare=prepare,
            ledger=ProgressLedger(MemoryLedgerStore(write_delay=ledger_write)),
            max_concurrency=concurrency,
            log=log,
            progress_seconds=3600,
            aclose=hook.close,
        )
        return timed(lambda: engine.run(parsed).summary()["sent"])

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="per case at 32 in flight (3000)")
    parser.add_argument("--sequential-messages", type=int, default=300, help="per case at 1 in flight")
    parser.add_argument("--latency", type=float, default=0.02, help="server latency per request, s")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--ledger-write-ms", type=float, default=10.0, help="cost of one ledger write")
    parser.add_argument("--quick", action="store_true", help="900 and 100 messages in 2 rounds")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even if a target is missed")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.sequential_messages, args.rounds = 900, 100, 2
    if min(args.messages, args.sequential_messages) < args.rounds or args.rounds < 1:
        parser.error("need at least one message per round")

    cores = sorted(os.sched_getaffinity(0))
    # Before any thread starts: threads inherit the affinity of the thread that makes them.
    os.sched_setaffinity(0, {cores[0]})
    server, port = bulk_server.start(args.latency, cpu=cores[1] if len(cores) > 1 else None)
    url = f"http://127.0.0.1:{port}{SEND_PATH}"
    os.environ["AIRFLOW_CONN_WA019_DEFAULT"] = json.dumps(
        {
            "conn_type": "wa019",
            "host": f"http://127.0.0.1:{port}",
            "password": TOKEN,
            "extra": {"sender": SENDER, "timeout": [5, 30]},
        }
    )
    width = 32
    groups: dict[int, dict[str, Case]] = {
        width: {
            "threads + requests": threads_case(url, width),
            "aiohttp script": aiohttp_case(url, width),
            "engine": engine_case(width, args.ledger_write_ms / 1000),
            FLOOR: raw_case(port, width),
        },
        1: {
            "sequential loop": sequential_case(url),
            "engine": engine_case(1, args.ledger_write_ms / 1000),
        },
    }
    sizes = {width: args.messages, 1: args.sequential_messages}
    totals = {(c, name): [0, 0.0, 0.0] for c, cases in groups.items() for name in cases}
    try:
        warm = [{"to": f"97259{i:07d}", "name": "Warm", "order": i} for i in range(40)]
        for cases in groups.values():  # imports, connections, phonenumbers' metadata: not measured
            for case in cases.values():
                case(warm)
        print(
            f"client pinned to core {cores[0]}, server on core {cores[1] if len(cores) > 1 else '-'}, "
            f"{args.latency * 1000:g} ms server latency, {args.rounds} interleaved rounds, "
            f"ledger writes {args.ledger_write_ms:g} ms each"
        )
        for round_no in range(args.rounds):
            for c, cases in groups.items():
                per_round = sizes[c] // args.rounds
                names = list(cases)
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    first = (round_no * len(names) + names.index(name)) * per_round
                    recipients = [
                        {"to": f"97250{first + i:07d}", "name": f"Client {first + i}", "order": f"A-{i}"}
                        for i in range(per_round)
                    ]
                    sent, wall, cpu = cases[name](recipients)
                    if sent != per_round:
                        raise RuntimeError(f"{name}: {sent} of {per_round} messages accepted")
                    total = totals[(c, name)]
                    total[0] += sent
                    total[1] += wall
                    total[2] += cpu
            print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)

    rates = {key: sent / wall for key, (sent, wall, _) in totals.items()}
    ceiling = {c: c / args.latency for c in groups}
    print()
    print(
        f"{'in flight':>9}  {'sender':<20} {'msg/s':>7} {'vs best peer':>13} {'of ceiling':>11} "
        f"{'client CPU/msg':>15}"
    )
    for c, cases in groups.items():
        best_peer = max(rates[(c, name)] for name in cases if name not in ("engine", FLOOR))
        for name in cases:
            sent, _, cpu = totals[(c, name)]
            rate = rates[(c, name)]
            print(
                f"{c:>9}  {name:<20} {rate:>7.0f} {rate / best_peer:>12.2f}x {rate / ceiling[c]:>11.2f} "
                f"{cpu / sent * 1e6:>12.0f} us"
            )
    script, engine = rates[(width, "aiohttp script")], rates[(width, "engine")]
    sequential, engine_1 = rates[(1, "sequential loop")], rates[(1, "engine")]
    targets = [
        (f"engine at {width} in flight >= 1.0x the aiohttp script: {engine / script:.2f}x", engine >= script),
        (
            f"engine at {width} in flight >= 0.9 of the ceiling ({ceiling[width]:.0f} msg/s): "
            f"{engine / ceiling[width]:.2f}",
            engine >= 0.9 * ceiling[width],
        ),
        (
            f"engine at 1 in flight within 10% of the sequential loop: {engine_1 / sequential:.2f}x",
            engine_1 >= 0.9 * sequential,
        ),
    ]
    print()
    for text, met in targets:
        print(f"{'met   ' if met else 'MISSED'} {text}")
    return 0 if args.report_only or all(met for _, met in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
