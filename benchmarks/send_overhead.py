"""Per-send cost of ``WhatsAppHook.send_message`` against its peers, measured in one run.

    python benchmarks/send_overhead.py [--sends 2000] [--batch 50] [--max-seconds 120]

Every case POSTs the same JSON payload (``from``/``to``/``body``) with a bearer token to the same
loopback server and reads the same 019sms success answer:

* ``raw Session``       a reused ``requests.Session`` as a user writes it (``session.post(...)``,
                        ``response.json()``); the reference (1.00x);
* ``raw Session, no trust_env`` the same with ``trust_env = False``, the floor of anything built
                        on ``requests`` (without it requests re-reads the environment and ~/.netrc
                        on every send);
* ``HttpHook.run``      one Airflow ``HttpHook`` (apache-airflow-providers-http), ``.run()`` per
                        send, then ``response.json()``;
* ``WhatsAppHook``      one hook, ``send_message()`` per send: number normalisation, body
                        validation, two log lines, the POST, and parsing into a ``SendResult``.

The server is deliberately lean: a raw-socket HTTP/1.1 keep-alive responder in a separate
process that answers a canned body (a stdlib ``ThreadingHTTPServer``, like the simulator's,
costs 150-210 us of CPU per request and would make every client look alike). ``--server
simulator`` runs against the provider's simulator instead; there only the cpu columns compare
the clients. Two figures per send: wall time, and the client thread's own CPU time
(``time.thread_time``), which excludes the server whatever the machine's load. The cases are interleaved in batches (order rotating each
round), so drift on a noisy machine hits them all alike. Ratios from one run hold; absolute
microseconds drift between machines and runs.

Targets: WhatsAppHook <= 1.15x the raw Session, and faster than HttpHook. Exits 1 if one is
missed, unless ``--report-only`` is given (CI prints the figures without gating on timings).

apache-airflow-providers-http is not a dependency of this provider. If it is missing, the script
installs it into the running venv with ``uv pip install`` (pinned to the installed Airflow),
unless ``--no-install`` is given, in which case the HttpHook case is skipped with a note.
Loopback only; every loop is bounded by ``--sends`` and ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TOKEN = "bench-token-0123456789"
SENDER = "972771234567"
TO = "972501234567"
BODY = "Your order *A-1001* has shipped and will arrive tomorrow between 10:00 and 14:00."
PAYLOAD = {"from": SENDER, "to": TO, "body": BODY}
SEND_PATH = "/api/whatsapp/sendMessage"

# The answer the 019sms API gives to an accepted message.
ANSWER = json.dumps(
    {
        "status": "OK",
        "reason": 1,
        "unique": "n6qg3giyyloifhxx666yhg",
        "to": TO,
        "from": SENDER,
        "body": BODY,
        "timestamp": "1767261600",
        "templateTimeLeft": "1380",
        "conversationTimeLeft": "1440",
    },
    separators=(",", ":"),
).encode()

# A lean HTTP/1.1 keep-alive server: one thread per connection, headers found by "\r\n\r\n",
# body by Content-Length, one canned answer written with a single send. Prints its port.
SERVER_CODE = r"""
import socket, sys, threading
import os
ANSWER = bytes.fromhex(os.environ["WA019_BENCH_ANSWER"])
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER))
REPLY = HEAD + ANSWER

def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                end = buf.find(b"\r\n\r\n")
            head, buf = buf[:end].lower(), buf[end + 4:]
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:].split(b"\r\n", 1)[0])
            while len(buf) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            buf = buf[length:]
            conn.sendall(REPLY)
    except OSError:
        pass
    finally:
        conn.close()

listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), listener.close(), sys.exit()), daemon=True).start()
while True:
    try:
        conn, _ = listener.accept()
    except OSError:
        break
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def start_server(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server process; return it and its base URL."""
    if kind == "simulator":
        # The provider's own simulator (python -m airflow_provider_wa019.testing), a stdlib
        # ThreadingHTTPServer: realistic answers, but its own cost dominates wall times.
        args = ["-m", "airflow_provider_wa019.testing", "--port", "0", "--token", TOKEN]
        args += ["--sender", SENDER, "--open-window", TO]
        proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout
        line = proc.stdout.readline().decode()
        if not line.startswith("base_url: "):
            proc.kill()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        return proc, line.split(": ", 1)[1].strip()
    # The lean server stops when its stdin closes (this process exiting, even killed, closes it).
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "WA019_BENCH_ANSWER": ANSWER.hex()},
    )
    assert proc.stdout
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def ensure_http_provider(install: bool) -> str | None:
    """Return None when HttpHook can be imported, else the reason the case is skipped."""
    if importlib.util.find_spec("airflow.providers.http") is not None:
        return None
    if not install:
        return "apache-airflow-providers-http is not installed and --no-install was given"
    from importlib.metadata import version

    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        return "apache-airflow-providers-http is not installed and uv was not found to install it"
    airflow_version = version("apache-airflow")
    print(
        f"installing apache-airflow-providers-http into {sys.prefix} (benchmark only; "
        f"apache-airflow stays {airflow_version}) ...",
        file=sys.stderr,
    )
    result = subprocess.run(
        [uv, "pip", "install", "--python", sys.executable, "--quiet",
         "apache-airflow-providers-http", f"apache-airflow=={airflow_version}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        return f"installing apache-airflow-providers-http failed: {result.stderr.strip()[-500:]}"
    importlib.invalidate_caches()
    return None


def build_cases(base_url: str, with_http_hook: bool) -> dict[str, Callable[[], object]]:
    import requests

    cases: dict[str, Callable[[], object]] = {}
    url = base_url + SEND_PATH
    auth = {"Authorization": f"Bearer {TOKEN}"}

    session = requests.Session()

    def raw_session() -> object:
        response = session.post(url, json=PAYLOAD, headers=auth, timeout=(5, 30))
        response.raise_for_status()
        return response.json()

    cases["raw Session"] = raw_session

    lean = requests.Session()
    lean.trust_env = False

    def raw_session_no_env() -> object:
        response = lean.post(url, json=PAYLOAD, headers=auth, timeout=(5, 30))
        response.raise_for_status()
        return response.json()

    cases["raw Session, no trust_env"] = raw_session_no_env

    if with_http_hook:
        from airflow.providers.http.hooks.http import HttpHook

        http_hook = HttpHook(method="POST", http_conn_id="bench_http")

        def http_hook_run() -> object:
            response = http_hook.run(
                SEND_PATH, json=PAYLOAD, headers=auth, extra_options={"timeout": (5, 30)}
            )
            return response.json()

        cases["HttpHook.run"] = http_hook_run

    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    wa_hook = WhatsAppHook("bench_wa019")

    def wa019_send() -> object:
        return wa_hook.send_message(TO, BODY)

    cases["WhatsAppHook"] = wa019_send
    return cases


def measure(
    cases: dict[str, Callable[[], object]], sends: int, batch: int, warmup: int, max_seconds: float
) -> dict[str, tuple[list[int], list[int]]]:
    names = list(cases)
    for name in names:  # warm-up: connections open, caches filled, lazy imports done
        for _ in range(warmup):
            cases[name]()
    times: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in names}
    perf, cpu = time.perf_counter_ns, time.thread_time_ns
    deadline = time.monotonic() + max_seconds
    rounds = (sends + batch - 1) // batch
    for r in range(rounds):
        if time.monotonic() > deadline:
            print(
                f"note: stopped after {r} of {rounds} rounds (--max-seconds {max_seconds})", file=sys.stderr
            )
            break
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = cases[name]
            wall, own = times[name]
            gc.collect()
            for _ in range(batch):
                w0, c0 = perf(), cpu()
                fn()
                c1, w1 = cpu(), perf()
                wall.append(w1 - w0)
                own.append(c1 - c0)
    return times


@contextlib.contextmanager
def output_to_devnull() -> Iterator[None]:
    """Point file descriptors 1 and 2 at /dev/null (loggers keep their stream objects)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=2000, help="measured sends per case (default 2000)")
    parser.add_argument("--batch", type=int, default=50, help="sends per case per round (default 50)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured sends per case first")
    parser.add_argument("--max-seconds", type=float, default=120, help="stop measuring after this long")
    parser.add_argument("--no-install", action="store_true", help="skip HttpHook if its provider is missing")
    parser.add_argument(
        "--server",
        choices=("lean", "simulator"),
        default="lean",
        help="lean raw-socket server (default), or the provider's simulator (compare the cpu columns)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="exit 0 even if a target is missed (CI on a shared machine)",
    )
    args = parser.parse_args()
    if not (0 < args.sends <= 100_000 and 0 < args.batch <= args.sends and 0 <= args.warmup <= 10_000):
        parser.error("need 0 < --batch <= --sends <= 100000 and 0 <= --warmup <= 10000")

    # A throw-away Airflow home: the hooks read their connections from AIRFLOW_CONN_* only.
    home = tempfile.mkdtemp(prefix="wa019-bench-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        }
    )
    skip_reason = ensure_http_provider(install=not args.no_install)
    proc, base_url = start_server(args.server)
    try:
        port = base_url.rsplit(":", 1)[1]
        os.environ["AIRFLOW_CONN_BENCH_WA019"] = json.dumps(
            {"conn_type": "wa019", "host": base_url, "password": TOKEN, "extra": {"sender": SENDER}}
        )
        os.environ["AIRFLOW_CONN_BENCH_HTTP"] = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": int(port), "schema": "http"}
        )
        cases = build_cases(base_url, with_http_hook=skip_reason is None)
        # Both hooks log every send at INFO, as they do in a task; that cost is part of a send.
        # Their lines go to stdout/stderr, which point at /dev/null while measuring.
        started = time.monotonic()
        with output_to_devnull():
            times = measure(cases, args.sends, args.batch, args.warmup, args.max_seconds)
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(home, ignore_errors=True)

    import airflow
    import requests

    print(
        f"send overhead: {len(times['WhatsAppHook'][0])} sends per case, interleaved in batches of "
        f"{args.batch}, {elapsed:.0f} s; Python {sys.version.split()[0]}, Airflow {airflow.__version__}, "
        f"requests {requests.__version__}; {args.server} loopback server in its own process"
    )
    if skip_reason:
        print(f"HttpHook case skipped: {skip_reason}")
    ref = "raw Session"
    ref_wall = statistics.median(times[ref][0]) / 1000
    ref_cpu = statistics.median(times[ref][1]) / 1000
    header = f"{'client':28} {'wall med':>9} {'wall p99':>9} {'cpu med':>9} {'cpu p99':>9} {'wall x':>7} {'cpu x':>7}"
    print(header)
    print("-" * len(header))
    summary: dict[str, tuple[float, float]] = {}
    for name, (wall, own) in times.items():
        w_med, c_med = statistics.median(wall) / 1000, statistics.median(own) / 1000
        summary[name] = (w_med / ref_wall, c_med / ref_cpu)
        print(
            f"{name:28} {w_med:8.0f}us {pct(wall, 0.99):8.0f}us {c_med:8.0f}us {pct(own, 0.99):8.0f}us "
            f"{w_med / ref_wall:6.2f}x {c_med / ref_cpu:6.2f}x"
        )
    print("(median and p99 per send; x = median relative to the raw Session; cpu = client thread CPU)")

    ok = True
    wa_wall, wa_cpu = summary["WhatsAppHook"]
    verdict = "met" if max(wa_wall, wa_cpu) <= 1.15 else "MISSED"
    ok &= verdict == "met"
    print(f"target WhatsAppHook <= 1.15x raw Session: wall {wa_wall:.2f}x, cpu {wa_cpu:.2f}x -> {verdict}")
    if "HttpHook.run" in summary:
        hh_wall, hh_cpu = summary["HttpHook.run"]
        verdict = "met" if wa_wall < hh_wall and wa_cpu < hh_cpu else "MISSED"
        ok &= verdict == "met"
        print(
            f"target WhatsAppHook faster than HttpHook: wall {wa_wall / hh_wall:.2f}x, "
            f"cpu {wa_cpu / hh_cpu:.2f}x of HttpHook -> {verdict}"
        )
    return 0 if ok or args.report_only else 1


if __name__ == "__main__":
    sys.exit(main())
