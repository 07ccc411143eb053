"""A CeleryExecutor deployment for the end-to-end tests: Redis, PostgreSQL, Airflow, two workers.

Used by ``tests/e2e/test_e2e_celery.py`` (module-scoped, beside the session's LocalExecutor
deployment of ``e2e_deployment.py``, whose helpers it reuses). Like that one it imports no Airflow:
every component is its own process, configured through ``AIRFLOW__...`` variables only.

- ``ensure_celery_packages``: Debian's ``postgresql`` and ``redis-server``, installed with apt-get
  when missing (a Redis service the package may start is stopped again, by its PID).
- ``CeleryDeployment``: the simulator (its own process), PostgreSQL (metadata DB and Celery's
  result backend), Redis on 127.0.0.1 (the broker), then ``airflow db migrate``, the api-server,
  scheduler, dag-processor and two ``airflow celery worker`` processes, ``w1`` and ``w2``.
  Airflow's checks for a lost task are shortened (see ``airflow_env``) so that a killed worker's
  tasks are failed and retried within seconds rather than minutes.
- ``CeleryDeployment.kill_worker``: SIGKILL a worker with everything it started, the way a lost
  node ends: the Celery process, its pool processes, their task supervisors and the task
  processes (which Airflow 3.3 puts in process groups of their own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from e2e_deployment import (
    AirflowAPI,
    Deployment,
    DeploymentError,
    ManagedProcess,
    PostgresCluster,
    SimulatorAPI,
    SystemTools,
    _apt_install,
    _pg_bindir,
    free_port,
    read_simulator_url,
    wait_for,
)

WORKERS = ("w1", "w2")
#: Task slots per worker: enough for every campaign task at once on the one that survives.
WORKER_CONCURRENCY = 6
#: Airflow's lost-task checks, shortened: a task whose supervisor has not heartbeated for this
#: long is failed (and retried) by the scheduler, which looks every DETECTION_INTERVAL seconds;
#: supervisors heartbeat every HEARTBEAT_INTERVAL seconds, so a live task on a loaded machine
#: has several chances within the timeout.
HEARTBEAT_TIMEOUT = 20
DETECTION_INTERVAL = 2
HEARTBEAT_INTERVAL = 3


@dataclass(frozen=True)
class CeleryTools:
    pg_bindir: Path
    redis_server: Path


def _redis_server() -> Path | None:
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _redis_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "redis-server":
                    pids.add(int(entry.name))
    return pids


def ensure_celery_packages(log_dir: Path) -> CeleryTools:
    """PostgreSQL's server binaries and ``redis-server``; apt-get install what is missing.

    Debian's redis-server package starts a service on port 6379 where services may start (not
    in containers whose policy-rc.d forbids it): the tests run their own Redis, so a redis-server
    process that appeared during the install is stopped by its PID.
    """
    missing = [
        name for name, found in (("postgresql", _pg_bindir()), ("redis-server", _redis_server())) if not found
    ]
    if missing:
        before = _redis_pids()
        _apt_install(missing, log_dir / "apt-get.log")
        for pid in _redis_pids() - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    pg_bindir, redis = _pg_bindir(), _redis_server()
    if pg_bindir is None or redis is None:
        raise DeploymentError(
            "after apt-get install, still missing: "
            + ", ".join(n for n, v in (("postgresql", pg_bindir), ("redis-server", redis)) if v is None)
            + f"; see {log_dir / 'apt-get.log'}"
        )
    return CeleryTools(pg_bindir=pg_bindir, redis_server=redis)


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (by parent PID, whatever their group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by its parent


@dataclass
class CeleryDeployment(Deployment):
    """The campaign's deployment (see the module docstring). ``start()`` raises DeploymentError
    naming the log to read; ``stop()`` always ends everything (call it in a ``finally``)."""

    celery_tools: CeleryTools | None = None
    #: ``--template NAME=BODY`` of the simulator: the campaign sends an approved template.
    templates: Sequence[str] = ()
    sim_latency: float = 0.02
    redis_port: int = 0
    redis_dir: Path | None = None
    workers: dict[str, ManagedProcess] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, out_dir: Path, run_id: str, tools: CeleryTools, **kwargs: object) -> CeleryDeployment:
        # Deployment's SystemTools also names Chromium, which this deployment never starts.
        return cls(
            out_dir=out_dir,
            run_id=run_id,
            tools=SystemTools(pg_bindir=tools.pg_bindir, chromium=Path(os.devnull)),
            celery_tools=tools,
            **kwargs,  # type: ignore[arg-type]
        )

    def ensure_running(self) -> None:
        """Every process must run, except the workers this test killed on purpose."""
        killed = {self.workers[name].pid for name in self.killed}
        for proc in self.procs.processes:
            if proc.pid not in killed:
                proc.ensure_running()

    def start(self) -> None:
        assert self.celery_tools is not None
        # 1. The simulator, as its own process, answering after sim_latency like a nearby API.
        sim = self.procs.start(
            "simulator",
            [
                sys.executable, "-m", "airflow_provider_wa019.testing",
                "--port", "0",
                "--token", self.sim_token,
                "--sender", self.sender,
                "--latency", str(self.sim_latency),
                *(["--template", *self.templates] if self.templates else []),
                *(["--open-window", *self.open_windows] if self.open_windows else []),
            ],
        )  # fmt: skip
        self.sim_url = read_simulator_url(sim.log_path, sim)
        self.sim = SimulatorAPI(self.sim_url)

        # 2. PostgreSQL: the metadata DB and Celery's result backend.
        self.pg_workdir = Path(tempfile.mkdtemp(prefix="wa019-e2e-celery-pg-"))
        self.postgres = PostgresCluster(self.tools.pg_bindir, self.pg_workdir, self.procs)
        self.postgres.start()

        # 3. Redis, the broker: loopback only, nothing written to disk.
        self.redis_dir = Path(tempfile.mkdtemp(prefix="wa019-e2e-redis-"))
        self.redis_port = free_port()
        redis = self.procs.start(
            "redis",
            [
                self.celery_tools.redis_server,
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.redis_dir,
            ],
            cwd=self.redis_dir,
        )  # fmt: skip
        wait_for(
            lambda: _redis_ping(self.redis_port),
            timeout=30,
            what=f"Redis on 127.0.0.1:{self.redis_port}",
            alive=redis.ensure_running,
            on_timeout=lambda: f"see {redis.log_path}",
        )

        # 4. Airflow: migrate, then the components and the two workers.
        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        self.procs.base_env.update(self.airflow_env(api_port))
        airflow = [sys.executable, "-m", "airflow"]
        self.procs.run("airflow-db-migrate", [*airflow, "db", "migrate"], timeout=300)
        self.procs.start(
            "api-server", [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(api_port)]
        )
        self.procs.start("scheduler", [*airflow, "scheduler", "--skip-serve-logs"])
        self.procs.start("dag-processor", [*airflow, "dag-processor"])
        for name in WORKERS:
            # --skip-serve-logs: the api-server reads task logs from the shared log folder. Gossip
            # and mingle only add start-up time and chatter between two workers on one machine.
            self.workers[name] = self.procs.start(
                f"worker-{name}",
                [
                    *airflow, "celery", "worker",
                    "--celery-hostname", f"{name}@%h",
                    "--concurrency", str(WORKER_CONCURRENCY),
                    "--skip-serve-logs", "--without-gossip", "--without-mingle",
                ],
            )  # fmt: skip

        self.api = AirflowAPI(self.api_url, self.log_hint)
        wait_for(
            self._healthy,
            timeout=self.startup_timeout,
            interval=1.0,
            what="the api-server, scheduler and dag-processor to report healthy and both workers ready",
            alive=self.ensure_running,
            on_timeout=lambda: f"logs: {self.log_hint()}",
        )
        self.api.login()

    def airflow_env(self, api_port: int) -> dict[str, str]:
        assert self.postgres is not None
        pg = self.postgres
        return {
            **super().airflow_env(api_port),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(2 * WORKER_CONCURRENCY),
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": (
                f"db+postgresql+psycopg2://{pg.user}:{pg.password}@127.0.0.1:{pg.port}/{pg.database}"
            ),
            # A lost worker's tasks: failed after HEARTBEAT_TIMEOUT s without a heartbeat (Airflow
            # 3.1-3.3 names; 300 s by default), then retried a second later (tasks that set no
            # retry_delay of their own, as the example campaign).
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(DETECTION_INTERVAL),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1",
            # A task the killed worker had taken from the queue but not started stays "queued":
            # Airflow requeues it after this long (600 s by default).
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
        }

    def _healthy(self) -> bool:
        resp = self.api.http.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        if resp.status_code != 200:
            return False
        health = resp.json()
        components = all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "dag_processor")
        )
        # Celery prints "<hostname> ready." once the worker consumes from the broker.
        ready = all(
            f"{name}@" in text and " ready." in text
            for name, text in ((n, w.log_path.read_text(errors="replace")) for n, w in self.workers.items())
        )
        return components and ready

    def worker_of(self, pid: int) -> str | None:
        """The worker whose process tree holds ``pid`` (a task process), or None."""
        for name, worker in self.workers.items():
            if name not in self.killed and pid in process_tree(worker.pid):
                return name
        return None

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL worker ``name`` and every process it started, as a lost node ends.

        The tree is stopped (SIGSTOP) first, so nothing in it can fork, send or write while it
        is being collected, then killed; returns the PIDs killed.
        """
        worker = self.workers[name]
        self.killed.add(name)
        stopped: set[int] = set()
        for _ in range(3):  # a process forked between listing and stopping is caught next round
            fresh = [pid for pid in process_tree(worker.pid) if pid not in stopped]
            if not fresh:
                break
            for pid in fresh:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            stopped.update(fresh)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: not any(_alive(pid) for pid in stopped),
            timeout=30,
            interval=0.1,
            what=f"the processes of worker {name} to die",
        )
        return sorted(stopped)

    def stop(self) -> None:
        # Workers first, with their task processes (in process groups of their own on Airflow
        # 3.3, which stopping the worker's group would miss): SIGTERM the trees, then SIGKILL.
        # A killed worker was reaped already (its PID may belong to another process by now).
        live = [w for w in self.workers.values() if w.popen.poll() is None]
        trees = {pid for worker in live for pid in process_tree(worker.pid)}
        for pid in trees:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in trees):
            time.sleep(0.2)
        for pid in trees:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            super().stop()
        finally:
            if self.redis_dir is not None:
                shutil.rmtree(self.redis_dir, ignore_errors=True)
