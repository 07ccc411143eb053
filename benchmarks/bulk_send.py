"""Bulk send throughput: a sequential ``requests.Session`` loop against the bulk operator's path.

    .venv/bin/python benchmarks/bulk_send.py [--quick] [--recipients 2000] [--latency 0.02]

Every case sends one free-form message to each of ``--recipients`` numbers (default 2,000)
through the simulator, started in its own process by its command line
(``python -m airflow_provider_wa019.testing --latency 0.02 --max-concurrency 64``), so its
server threads do not share this process's GIL and every request waits the injected latency, as
against a real API across a network:

* ``sequential``  a plain loop over one ``requests.Session``: ``session.post(...)`` and
                  ``response.json()`` per recipient, the reference (1.00x);
* ``bulk c=N``    the path ``WhatsAppBulkSendOperator`` runs in a task: ``BulkSender`` with a
                  ``WhatsAppHook`` (validation, reason rules, one connection pool), at most N
                  requests in flight, with the progress ledger written in batches to a store
                  whose every write costs ``--ledger-write-ms`` (default 10 ms: one
                  ledger write of a 500-entry chunk took 10-13 ms under ``dag.test()``
                  on the 2-core VM, through the Execution API into SQLite), for N = 1, 4 and 8.

The recipients are split into ``--rounds`` rounds (default 4) and the cases run interleaved,
round by round with the order rotating, so drift on a noisy machine hits them all alike.
Printed per case: messages per second (all rounds), its ratio to the sequential loop, and the
client's CPU time per message. Targets: bulk c=8 at least 5x the sequential loop; bulk c=1
within 10% of it. The exit status is 1 when a target is missed, unless ``--report-only``.

``--quick`` sends 400 recipients in 2 rounds (about 20 s instead of about 100 s).
Loopback only; every loop is bounded by the recipient count.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Runnable from a checkout without installing: the package sits next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY = "Your order has shipped and will arrive tomorrow between 10:00 and 14:00."
SEND_PATH = "/api/whatsapp/sendMessage"
CONCURRENCIES = (1, 4, 8)


def start_simulator(numbers: list[str], latency: float) -> tuple[subprocess.Popen[str], str, str]:
    """The simulator CLI in a child process; returns it, its base URL and its connection JSON."""
    args = [
        sys.executable,
        "-m",
        "airflow_provider_wa019.testing",
        "--port",
        "0",
        "--latency",
        str(latency),
        "--max-concurrency",
        "64",
        "--open-window",
        *numbers,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    base_url = proc.stdout.readline().strip().removeprefix("base_url: ")
    name, _, conn = proc.stdout.readline().strip().partition("=")
    if not base_url.startswith("http://127.0.0.1:") or name != "AIRFLOW_CONN_WA019_DEFAULT":
        proc.kill()
        raise RuntimeError(f"the simulator did not start: {base_url!r} {name!r}")
    return proc, base_url, conn


def sequential_case(base_url: str, conn: dict) -> Callable[[list[str]], tuple[int, float, float]]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {conn['password']}"
    url = base_url + SEND_PATH
    sender = conn["extra"]["sender"]

    def run(numbers: list[str]) -> tuple[int, float, float]:
        sent = 0
        cpu, wall = time.process_time(), time.perf_counter()
        for number in numbers:
            response = session.post(url, json={"from": sender, "to": number, "body": BODY}, timeout=(5, 30))
            sent += response.json().get("reason") == 1
        return sent, time.perf_counter() - wall, time.process_time() - cpu

    return run


def bulk_case(concurrency: int, ledger_write: float) -> Callable[[list[str]], tuple[int, float, float]]:
    from airflow_provider_wa019.bulk import BulkSender, MemoryLedgerStore, ProgressLedger, parse_recipients
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    hook = WhatsAppHook()
    hook.message_log_level = logging.DEBUG  # as the operator sets it: no line per message
    log = logging.getLogger("wa019.benchmark")
    log.setLevel(logging.WARNING)
    writes: list[int] = []

    def run(numbers: list[str]) -> tuple[int, float, float]:
        recipients, _ = parse_recipients(numbers)
        store = MemoryLedgerStore(write_delay=ledger_write)
        engine = BulkSender(
            lambda number, body: hook.send_message(number, body),
            prepare=lambda recipient: BODY,
            ledger=ProgressLedger(store),
            max_concurrency=concurrency,
            log=log,
            progress_seconds=3600,
        )
        cpu, wall = time.process_time(), time.perf_counter()
        report = engine.run(recipients)
        elapsed, cpu_used = time.perf_counter() - wall, time.process_time() - cpu
        writes.append(store.writes)
        return report.summary()["sent"], elapsed, cpu_used

    run.writes = writes  # type: ignore[attr-defined]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=2000, help="recipients per case (default 2000)")
    parser.add_argument("--latency", type=float, default=0.02, help="simulator latency per request, s")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument(
        "--ledger-write-ms", type=float, default=10.0, help="cost of one ledger write (default 10)"
    )
    parser.add_argument("--quick", action="store_true", help="400 recipients in 2 rounds")
    parser.add_argument("--report-only", action="store_true", help="exit 0 even if a target is missed")
    args = parser.parse_args()
    if args.quick:
        args.recipients, args.rounds = 400, 2
    if args.recipients < args.rounds or args.rounds < 1:
        parser.error("need at least one recipient per round")

    numbers = [f"97250{i:07d}" for i in range(args.recipients)]
    proc, base_url, conn_json = start_simulator(numbers, args.latency)
    try:
        os.environ["AIRFLOW_CONN_WA019_DEFAULT"] = conn_json
        conn = json.loads(conn_json)
        cases: dict[str, Callable[[list[str]], tuple[int, float, float]]] = {
            "sequential": sequential_case(base_url, conn)
        }
        for c in CONCURRENCIES:
            cases[f"bulk c={c}"] = bulk_case(c, args.ledger_write_ms / 1000)
        # Warm-up: imports, connections, phonenumbers' metadata; not measured.
        for run in cases.values():
            run(numbers[:10])

        totals = {name: [0, 0.0, 0.0] for name in cases}
        chunks = [numbers[i :: args.rounds] for i in range(args.rounds)]
        names = list(cases)
        print(
            f"{args.recipients} recipients, {args.latency * 1000:g} ms simulator latency, "
            f"{args.rounds} interleaved rounds, ledger writes {args.ledger_write_ms:g} ms each"
        )
        for round_no, chunk in enumerate(chunks):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]
            for name in order:
                sent, wall, cpu = cases[name](chunk)
                if sent != len(chunk):
                    raise RuntimeError(f"{name}: {sent} of {len(chunk)} messages accepted")
                totals[name][0] += sent
                totals[name][1] += wall
                totals[name][2] += cpu
            print(f"  round {round_no + 1}/{args.rounds} done", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    rates = {name: sent / wall for name, (sent, wall, _) in totals.items()}
    base = rates["sequential"]
    print()
    print(f"{'case':<12} {'msg/s':>8} {'vs sequential':>14} {'client CPU/msg':>15} {'ledger writes':>14}")
    for name, (sent, _, cpu) in totals.items():
        writes = getattr(cases[name], "writes", None)
        print(
            f"{name:<12} {rates[name]:>8.1f} {rates[name] / base:>13.2f}x {cpu / sent * 1e6:>12.0f} us"
            f" {sum(writes) if writes is not None else '-':>14}"
        )
    c8, c1 = rates["bulk c=8"] / base, rates["bulk c=1"] / base
    targets = [
        (f"bulk c=8 >= 5x sequential: {c8:.2f}x", c8 >= 5),
        (f"bulk c=1 within 10% of sequential: {c1:.2f}x", c1 >= 0.9),
    ]
    print()
    for text, met in targets:
        print(f"{'met   ' if met else 'MISSED'} {text}")
    return 0 if args.report_only or all(met for _, met in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
