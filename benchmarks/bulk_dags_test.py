"""The bulk operator in a real ``airflow dags test`` run: messages a second, memory, XCom size.

    .venv/bin/python benchmarks/bulk_dags_test.py [--recipients 20000 100000] [--latency 0.02]

For each ``--recipients`` count (default 20,000 and 100,000) this writes a DAG file whose
upstream ``@task`` returns that many recipient dicts (``{"to", "name", "order"}``) and whose
``WhatsAppBulkSendOperator`` (``max_concurrency=32``) sends each a rendered free-form body, then
runs ``airflow dags test`` on it in a child process, against the lean loopback server of
``benchmarks/bulk_server.py`` (answers after ``--latency``, default 20 ms; ``--simulator`` uses
the provider's simulator, ``python -m airflow_provider_wa019.testing``, instead). Airflow runs in
a temporary ``AIRFLOW_HOME`` with a SQLite metadata DB, migrated first; the ledger is written to
Airflow Variables through the task SDK, exactly as in a deployment. ``airflow dags test`` runs
the tasks in its own process, pinned to one core (``--cpu``), the server on another.

Printed per run, read from the run itself:

* msg/s: the bulk's own ``Bulk send done ... sent N in T s`` log line (the send, ledger
  included; not the upstream task or Airflow's start-up);
* peak RSS of the ``airflow dags test`` process (``/proc/<pid>/status`` sampled every 20 ms), its
  RSS when the bulk task started (after the upstream task pushed the list), and the peak over
  that: what the bulk task itself added; then the RSS at the start and the peak of each phase of
  the bulk task: ``pull`` (the list from XCom, parsed), ``send`` (the engine), ``push`` (XCom
  ``results``, which ``airflow dags test`` hands to an Execution API server in the same process);
* XCom ``results``: bytes stored in the metadata DB, and per recipient.

Not run in CI (a 100,000-recipient run takes minutes); re-run it to refresh the README's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bulk_server  # noqa: E402

DAG_ID = "wa019_bulk_benchmark"
SENDER = "972771234567"
TOKEN = "bench-token-0123456789"
DAG_FILE = """
import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator

COUNT = int(os.environ["WA019_BENCH_RECIPIENTS"])

with DAG("{dag_id}", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:

    @task
    def recipients() -> list:
        return [{{"to": f"97250{{i:07d}}", "name": f"Client {{i}}", "order": f"A-{{i}}"}} for i in range(COUNT)]

    WhatsAppBulkSendOperator(
        task_id="bulk",
        recipients=recipients(),
        body="Hi {{{{ name }}}}, your order {{{{ order }}}} has shipped ({{{{ ds }}}}).",
        max_concurrency=32,
        progress_interval=10,
    )
"""
_DONE = re.compile(r"Bulk send done: (?P<summary>.*?); this try sent (?P<sent>\d+) in (?P<seconds>[\d.]+) s")


def rss_kib(pid: int, field: str = "VmRSS") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """RSS of a process every 20 ms, and its peak in each phase that :meth:`enter` starts."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        #: phase -> [RSS when it started, peak while it lasted] (KiB)
        self.phases: dict[str, list[int]] = {}
        self._phase: str | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            if self._sample() is None:
                return

    def _sample(self) -> int | None:
        rss = rss_kib(self.pid)
        if rss is not None:
            self.peak = max(self.peak, rss)
            if self._phase is not None:
                phase = self.phases[self._phase]
                phase[1] = max(phase[1], rss)
        return rss

    def enter(self, phase: str) -> None:
        rss = self._sample() or 0
        self.phases[phase] = [rss, rss]
        self._phase = phase

    def stop(self) -> None:
        self._done.set()


def airflow_env(home: Path, conn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_WA019_DEFAULT": conn,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_server(latency: float, simulator: bool, cpu: int | None) -> tuple[subprocess.Popen[str], str]:
    """The lean server (or the simulator) in its own process; returns it and the connection JSON."""
    if not simulator:
        proc, port = bulk_server.start(latency, cpu=cpu)
        conn = {
            "conn_type": "wa019",
            "host": f"http://127.0.0.1:{port}",
            "password": TOKEN,
            "extra": {"sender": SENDER},
        }
        return proc, json.dumps(conn)
    args = [sys.executable, "-m", "airflow_provider_wa019.testing", "--port", "0", "--latency", str(latency)]
    args += ["--max-concurrency", "64", "--token", TOKEN, "--sender", SENDER]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # base_url: ...
    name, _, conn = proc.stdout.readline().strip().partition("=")
    if name != "AIRFLOW_CONN_WA019_DEFAULT":
        proc.kill()
        raise RuntimeError("the simulator did not start")
    return proc, conn


def run_once(home: Path, env: dict[str, str], count: int, cpu: int | None, log: Path) -> dict[str, float]:
    env = {**env, "WA019_BENCH_RECIPIENTS": str(count)}
    args = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=pin,
    )
    sampler = Sampler(proc.pid)
    sampler.start()
    done: re.Match[str] | None = None
    assert proc.stdout is not None
    with log.open("w") as out:
        for line in proc.stdout:
            out.write(line)
            # The bulk task's phases: pull and parse the list, send, push the results.
            if "starting task_id=bulk" in line:
                sampler.enter("pull")
            elif "Bulk send to " in line:
                sampler.enter("send")
            elif done is None and (done := _DONE.search(line)):
                sampler.enter("push")
            elif "end task task_id=bulk" in line:
                sampler.enter("after")
    proc.wait()
    wall = time.perf_counter() - started
    sampler.stop()
    sampler.join()
    if proc.returncode != 0 or done is None:
        raise RuntimeError(f"airflow dags test failed ({proc.returncode}); see {log}")
    sent = int(done["sent"])
    seconds = float(done["seconds"])
    with sqlite3.connect(home / "airflow.db") as db:
        (size,) = db.execute(
            "SELECT length(value) FROM xcom WHERE dag_id = ? AND task_id = 'bulk' AND key = 'results' "
            "ORDER BY rowid DESC LIMIT 1",
            (DAG_ID,),
        ).fetchone()
    return {
        "recipients": count,
        "sent": sent,
        "seconds": seconds,
        "rate": sent / seconds if seconds else float("nan"),
        "wall": wall,
        "peak_mb": sampler.peak / 1024,
        "phases": {name: (start / 1024, peak / 1024) for name, (start, peak) in sampler.phases.items()},
        "xcom_bytes": size,
        "summary": done["summary"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--latency", type=float, default=0.02, help="server latency per request, s")
    parser.add_argument(
        "--simulator", action="store_true", help="the provider's simulator, not the lean server"
    )
    parser.add_argument(
        "--cpu", type=int, default=None, help="core for airflow dags test (default: the first)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the AIRFLOW_HOME and logs")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else cores[0]
    server_cpu = next((c for c in cores if c != cpu), None)
    home = Path(tempfile.mkdtemp(prefix="wa019-bulk-bench-"))
    (home / "dags").mkdir()
    (home / "dags" / "wa019_bulk_benchmark.py").write_text(DAG_FILE.format(dag_id=DAG_ID))
    server, conn = start_server(args.latency, args.simulator, server_cpu)
    results = []
    try:
        env = airflow_env(home, conn)
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        for count in args.recipients:
            log = home / f"dags_test_{count}.log"
            print(f"airflow dags test, {count} recipients ...", flush=True)
            results.append(run_once(home, env, count, cpu, log))
    finally:
        server.terminate()
        server.wait(timeout=10)
        if not args.keep:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}")

    kind = "simulator" if args.simulator else "lean server"
    print()
    print(f"{kind}, {args.latency * 1000:g} ms latency, max_concurrency=32, airflow dags test on core {cpu}")
    print(
        f"{'recipients':>10} {'msg/s':>7} {'bulk s':>7} {'wall s':>7} {'peak RSS':>9} {'bulk task start':>16} "
        f"{'bulk added':>11} {'XCom results':>13} {'bytes/recipient':>16}"
    )
    for r in results:
        phases = r["phases"]
        start = phases.get("pull", phases.get("send", (0.0, 0.0)))[0]
        added = max(peak for _, peak in phases.values()) - start if phases else float("nan")
        print(
            f"{r['recipients']:>10} {r['rate']:>7.0f} {r['seconds']:>7.1f} {r['wall']:>7.1f} "
            f"{r['peak_mb']:>6.0f} MB {start:>13.0f} MB {added:>8.0f} MB "
            f"{r['xcom_bytes'] / 1e6:>10.2f} MB {r['xcom_bytes'] / r['recipients']:>16.1f}"
        )
        print(f"{'':>10} {r['summary']}")
        detail = ", ".join(
            f"{name}: {begin:.0f} -> peak {peak:.0f} MB" for name, (begin, peak) in phases.items()
        )
        print(f"{'':>10} RSS by phase of the bulk task: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
