"""Time per webhook delivery, in-process, on SQLite: what the platform waits for before its 200.

    python benchmarks/webhook_latency.py [--deliveries 2000] [--redeliver-every 10] [--report-only]

Set up as the tests are (tests/conftest.py): a fresh AIRFLOW_HOME in a temporary folder with a
file-based SQLite metadata DB, migrated in-process, the connection in ``AIRFLOW_CONN_*``. The
app is the one the plugin gives Airflow (``WhatsAppWebhookPlugin.fastapi_apps``), mounted at
``/wa019`` and served by uvicorn on 127.0.0.1 in a background thread; one keep-alive
``http.client`` connection POSTs the deliveries one after another and times each from request to
answer. Every ``--redeliver-every``-th delivery repeats an earlier message of the run (the
platform's re-deliveries), answered "duplicate"; the rest are new messages, each one asset
event. Before the run, ``--backlog`` events of earlier messages (2 to 47 h old, inside the 48 h
duplicate window) stand for a busy account; the duplicate check of a new message reads only the
events since it was sent, less an hour, so they cost it little (``--backlog 0`` to compare).

Log records go to a file in the temporary home (formatted and written as in an api-server, not
printed). Target: p99 <= 50 ms per delivery. Exits 1 if missed, unless ``--report-only`` (CI
prints the figures only). Loopback only; about 20-40 s, most of it the DB migration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TARGET_P99_MS = 50.0
SECRET = "bench-" + uuid.uuid4().hex
CONN_ID = "wa019_bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--redeliver-every", type=int, default=10, help="0: no re-deliveries")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--backlog",
        type=int,
        default=10_000,
        help="earlier messages already recorded, spread over the last 2-47 h (a busy account)",
    )
    parser.add_argument("--report-only", action="store_true", help="exit 0 even if the target is missed")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="wa019-webhook-bench-"))
    try:
        return run(home, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(home: Path, args: argparse.Namespace) -> int:
    # As tests/conftest.py: everything Airflow reads at import is in the environment first.
    (home / "dags").mkdir()
    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")) or name == "AIRFLOW_CONFIG":
            del os.environ[name]
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
                {"conn_type": "wa019", "password": "tok", "extra": {"webhook_secret": SECRET}}
            ),
        }
    )
    started = time.perf_counter()
    from airflow.utils.db import initdb

    initdb()
    setup_seconds = time.perf_counter() - started
    log_file = home / "api-server.log"
    log_to_file(log_file)
    with output_to(log_file):  # Airflow 3.3's structlog loggers print to stdout themselves
        figures = measure(args)
    return report(figures, setup_seconds, args)


def measure(args: argparse.Namespace) -> dict[str, Any]:

    import pendulum
    import uvicorn
    from fastapi import FastAPI

    from airflow_provider_wa019.api import inbound_payload
    from airflow_provider_wa019.webhook.plugin import WhatsAppWebhookPlugin

    [entry] = WhatsAppWebhookPlugin.fastapi_apps
    app = FastAPI()
    app.mount(entry["url_prefix"], entry["app"])

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=True, proxy_headers=False, lifespan="off", ws="none")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("uvicorn did not start")
        time.sleep(0.01)

    import http.client

    port = sock.getsockname()[1]
    path = f"{entry['url_prefix']}/webhook/{CONN_ID}?secret={SECRET}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    when = pendulum.now("UTC")

    def body(n: int) -> bytes:
        return json.dumps(
            inbound_payload(
                unique=f"BENCH{n:08d}",
                sender="972501234567",
                to="972771234567",
                body=f"message {n}: when does my order arrive?",
                timestamp=when,
                sender_name="Ronen",
            )
        ).encode()

    def deliver(data: bytes) -> tuple[float, int, str]:
        start = time.perf_counter()
        connection.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        content = answer.read()
        elapsed = time.perf_counter() - start
        return elapsed, answer.status, json.loads(content).get("status", "")

    for n in range(args.warmup):
        deliver(body(-1 - n))
    add_backlog(args.backlog, body)

    timings: dict[str, list[float]] = {"recorded": [], "duplicate": []}
    failures = 0
    new = 0
    run_started = time.perf_counter()
    for i in range(args.deliveries):
        if args.redeliver_every and i % args.redeliver_every == args.redeliver_every - 1 and new:
            data, expected = body((i * 7919) % new), "duplicate"
        else:
            data, expected = body(new), "recorded"
            new += 1
        elapsed, status, outcome = deliver(data)
        if status != 200 or outcome != expected:
            failures += 1
        timings.setdefault(outcome, []).append(elapsed)
    run_seconds = time.perf_counter() - run_started
    connection.close()
    server.should_exit = True
    thread.join(10)
    return {"timings": timings, "failures": failures, "run_seconds": run_seconds}


def report(figures: dict[str, Any], setup_seconds: float, args: argparse.Namespace) -> int:
    import airflow

    timings, failures, run_seconds = figures["timings"], figures["failures"], figures["run_seconds"]
    every = sorted(t for values in timings.values() for t in values)
    p99 = percentile(every, 99)
    print(
        f"webhook deliveries: {len(every)} in {run_seconds:.1f} s (Airflow {airflow.__version__}, SQLite, "
        f"{args.backlog} earlier events in the window, DB set-up {setup_seconds:.1f} s)"
    )
    print(f"{'':12} {'count':>6} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for name, values in (("all", every), *timings.items()):
        if values:
            values = sorted(values)
            print(
                f"{name:12} {len(values):>6} {statistics.median(values) * 1000:>10.2f} "
                f"{percentile(values, 99) * 1000:>8.2f} {values[-1] * 1000:>8.2f}"
            )
    met = p99 * 1000 <= TARGET_P99_MS and failures == 0
    print(
        f"target p99 <= {TARGET_P99_MS:g} ms: {'met' if met else 'MISSED'} (p99 {p99 * 1000:.2f} ms"
        + (f", {failures} unexpected answers" if failures else "")
        + ")"
    )
    return 0 if met or args.report_only else 1


def add_backlog(count: int, body: Any) -> None:
    """``count`` events of earlier messages, 2 to 47 h old, as the webhook records them."""
    if count <= 0:
        return
    from datetime import datetime, timedelta, timezone

    import sqlalchemy as sa
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from airflow_provider_wa019.api import parse_inbound
    from airflow_provider_wa019.inbound import EXTRA_KEY, inbound_uri

    now = datetime.now(timezone.utc)
    with create_session() as session:
        asset_id = session.scalar(sa.select(AssetModel.id).where(AssetModel.uri == inbound_uri(CONN_ID)))
        rows = [
            {
                "asset_id": asset_id,
                "extra": {EXTRA_KEY: parse_inbound(json.loads(body(10_000_000 + n))).to_dict()},
                "timestamp": now - timedelta(hours=2) - timedelta(hours=45) * n / count,
            }
            for n in range(count)
        ]
        session.execute(sa.insert(AssetEvent), rows)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 into ``path`` meanwhile (whatever holds sys.stdout)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as target:
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def log_to_file(path: Path) -> None:
    """Every log record to one file, as an api-server writes its log (not to the terminal)."""
    import logging

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "airflow", "airflow_provider_wa019"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True


if __name__ == "__main__":
    sys.exit(main())
