"""A real Airflow deployment for the end-to-end tests, started and stopped from Python.

Used by ``tests/e2e/conftest.py`` (import as ``from e2e_deployment import ...``); no Airflow import
here: every Airflow component runs in its own subprocess, configured only through environment
variables, exactly as in a deployment.

- ``ensure_debian_packages``: PostgreSQL and Chromium from Debian's packages, installed with
  apt-get when missing (root, no stdin).
- ``ProcessSet``: every process the tests start, each in its own session (process group) with its
  output in a log file; ``stop_all`` ends them by process group, then kills anything that still
  carries this run's marker variable in its environment, so nothing outlives the tests.
- ``PostgresCluster``: a throw-away cluster on 127.0.0.1 in a temporary folder (run as the
  ``postgres`` user when the tests run as root: PostgreSQL refuses root).
- ``AirflowAPI``: the public REST API (``/api/v2``) with a JWT from ``POST /auth/token``.
- ``SimulatorAPI``: the simulator's ``/__sim__/`` control endpoints.

Every wait is bounded; every failure message names the log files to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO_ROOT / "example_dags"

#: Every process started here gets ``WA019_E2E_RUN=<run id>`` in its environment; the final sweep
#: kills whatever still has it (children that left their process group included).
MARKER_VAR = "WA019_E2E_RUN"

APT_TIMEOUT = 900.0

# The scenario shared by the tests and the fixtures.
CONN_ID = "wa019_default"
SENDER = "972771234567"
#: wa019_example_send's customer, and the three numbers wa019_example_mapped pages: these clients
#: wrote to us (the simulator starts with their 24 h windows open), so free-form messages pass.
CUSTOMER = "972501234567"
ON_CALL = ("972501234567", "972527654321", "972541112222")
#: wa019_example_send's new_contact never wrote: the API answers reason 8 and the task skips.
NEW_CONTACT = "972509876543"
FINISHED_RUN_STATES = ("success", "failed")
#: wa019_example_deadline's report is due this many seconds after its run is queued (half an hour
#: as shipped; read by the DAG file at parse time). The scheduler looks for missed deadlines on
#: every loop, at most ``[scheduler] scheduler_idle_sleep_time`` (1 s) apart.
REPORT_DUE_SECONDS = 3

T = TypeVar("T")


class DeploymentError(RuntimeError):
    """Something the end-to-end set-up needs did not work; the message says where to look."""


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, indented, for failure messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"    (cannot read {path}: {err})"
    last = text.splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in last) if last else "    (empty)"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    alive: Callable[[], None] | None = None,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns something other than None/False, for at most ``timeout`` s.

    ``alive`` runs before each try and raises if a process the wait depends on has died;
    ``on_timeout`` adds details (states, log paths) to the timeout message.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            result = check()
        except (requests.RequestException, OSError) as err:
            result, last_error = None, err
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            details = on_timeout() if on_timeout else ""
            raise DeploymentError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
                + (f"\n{details}" if details else "")
            )
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Debian packages


@dataclass(frozen=True)
class SystemTools:
    pg_bindir: Path
    chromium: Path


def _pg_bindir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parent.parent.name)] or [0],
    )
    return found[-1].parent if found else None


def _chromium() -> Path | None:
    for candidate in ("/usr/bin/chromium", "/usr/lib/chromium/chromium"):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _clusters() -> set[tuple[str, str]]:
    return {(p.parent.name, p.name) for p in Path("/etc/postgresql").glob("*/*") if p.is_dir()}


def ensure_debian_packages(log_dir: Path) -> SystemTools:
    """Find PostgreSQL's server binaries and Debian's Chromium; apt-get install what is missing.

    ``apt-get update`` runs only when something has to be installed. Raises DeploymentError (the
    tests then fail, never skip) when a package is missing and cannot be installed.
    """
    missing = []
    if _pg_bindir() is None:
        missing.append("postgresql")
    if _chromium() is None:
        missing.append("chromium")
    if missing:
        _apt_install(missing, log_dir / "apt-get.log")
    pg_bindir, chromium = _pg_bindir(), _chromium()
    if pg_bindir is None or chromium is None:
        raise DeploymentError(
            "after apt-get install, still missing: "
            + ", ".join(n for n, v in (("postgresql", pg_bindir), ("chromium", chromium)) if v is None)
            + f"; see {log_dir / 'apt-get.log'}"
        )
    return SystemTools(pg_bindir=pg_bindir, chromium=chromium)


def _apt_install(packages: Sequence[str], log_path: Path) -> None:
    hint = (
        f"install them yourself (apt-get install {' '.join(packages)}), or skip the end-to-end "
        "tests explicitly with `bash scripts/test.sh --skip-e2e` (WA019_SKIP_E2E=1)"
    )
    if shutil.which("apt-get") is None:
        raise DeploymentError(
            f"the end-to-end tests need {', '.join(packages)} and there is no apt-get: {hint}"
        )
    if os.geteuid() != 0:
        raise DeploymentError(
            f"the end-to-end tests need Debian packages {', '.join(packages)}, which are missing, "
            f"and installing them needs root: {hint}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    opts = ["-o", "DPkg::Lock::Timeout=300", "-o", "Dpkg::Options::=--force-confold"]
    clusters_before = _clusters()
    with log_path.open("ab") as log:
        for argv in (
            ["apt-get", *opts, "update"],
            ["apt-get", *opts, "install", "-y", "--no-install-recommends", *packages],
        ):
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                rc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=APT_TIMEOUT,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                raise DeploymentError(
                    f"`{' '.join(argv)}` failed ({rc}); see {log_path}:\n{tail(log_path)}\n{hint}"
                )
    # Debian's postgresql package creates a "main" cluster and may start it as a service (unless
    # policy-rc.d forbids it). The tests run their own cluster; stop any the install started.
    for version, name in sorted(_clusters() - clusters_before):
        if shutil.which("pg_ctlcluster"):
            subprocess.run(
                ["pg_ctlcluster", version, name, "stop"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            )


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.popen.pid

    def ensure_running(self) -> None:
        rc = self.popen.poll()
        if rc is not None:
            raise DeploymentError(
                f"{self.name} (pid {self.pid}) exited with code {rc}; its log is {self.log_path}:\n"
                f"{tail(self.log_path)}"
            )

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Signal the whole process group, wait up to ``timeout`` s, then SIGKILL what is left."""
        if self.popen.poll() is None or self._group_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, self.stop_signal)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.popen.poll() is not None and not self._group_alive():
                    break
                time.sleep(0.2)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@dataclass
class ProcessSet:
    """The processes of one end-to-end run."""

    run_id: str
    log_dir: Path
    base_env: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, MARKER_VAR: self.run_id, **(extra or {})}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(map(str, argv))}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(env),
                cwd=str(cwd or self.log_dir),
                start_new_session=True,  # own process group: stopped as a whole
                preexec_fn=_die_with_parent,  # runs after the switch to ``user``, so it sticks
                **_as_user(user),
            )
        proc = ManagedProcess(name, popen, log_path, stop_signal)
        self.processes.append(proc)
        return proc

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        """Run a command to completion (bounded), its output in ``<name>.log``; raise if it fails."""
        proc = self.start(name, argv, env=env, cwd=cwd, user=user)
        try:
            rc = proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stop(timeout=5)
            raise DeploymentError(
                f"{name} did not finish within {timeout:.0f} s; see {proc.log_path}:\n{tail(proc.log_path)}"
            ) from None
        finally:
            self.processes.remove(proc)
        if rc != 0:
            raise DeploymentError(
                f"{name} failed (exit code {rc}); see {proc.log_path}:\n{tail(proc.log_path)}"
            )

    def ensure_running(self) -> None:
        for proc in self.processes:
            proc.ensure_running()

    def log_paths(self) -> str:
        return ", ".join(f"{p.name}: {p.log_path}" for p in self.processes)

    def stop_all(self) -> list[str]:
        """Stop every process (last started first), then sweep; returns what the sweep had to kill."""
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        return sweep(self.run_id)


try:  # Linux: a child gets SIGTERM if pytest itself dies (killed, not stopped), so nothing lingers.
    import ctypes

    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (ImportError, OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM this child when the test process goes away."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _as_user(user: str | None) -> dict[str, Any]:
    if user is None or os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def marked_pids(run_id: str) -> list[int]:
    """PIDs of processes whose environment carries this run's marker."""
    needle = f"{MARKER_VAR}={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def sweep(run_id: str, timeout: float = 10.0) -> list[str]:
    """SIGKILL every process still carrying this run's marker; returns a description of each."""
    killed = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = marked_pids(run_id)
        if not pids:
            break
        for pid in pids:
            try:
                cmdline = (
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                cmdline = "?"
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                desc = f"{pid}: {cmdline.strip()[:120]}"
                if desc not in killed:
                    killed.append(desc)
        time.sleep(0.2)
    return killed


# --------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass
class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1, with password (scram) authentication."""

    bindir: Path
    workdir: Path  # data and socket folder, removed by the caller
    procs: ProcessSet
    user: str = "airflow"
    password: str = "airflow-e2e"
    database: str = "airflow"
    port: int = 0
    process: ManagedProcess | None = None

    @property
    def run_as(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    @property
    def sqlalchemy_url(self) -> str:
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def start(self, timeout: float = 60.0) -> None:
        import psycopg2

        if self.run_as:
            try:
                entry = pwd.getpwnam(self.run_as)
            except KeyError:
                raise DeploymentError(
                    "PostgreSQL refuses to run as root and there is no 'postgres' user; "
                    "reinstall Debian's postgresql package (it creates the user)"
                ) from None
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        data, sockets, pwfile = self.workdir / "data", self.workdir / "sockets", self.workdir / "pwfile"
        pwfile.write_text(self.password + "\n")
        sockets.mkdir()
        if self.run_as:
            for path in (sockets, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.procs.run(
            "postgres-initdb",
            [
                self.bindir / "initdb",
                "-D",
                data,
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=120,
            cwd=self.workdir,
            user=self.run_as,
        )
        self.port = free_port()
        self.process = self.procs.start(
            "postgres",
            [
                self.bindir / "postgres",
                "-D",
                data,
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={sockets}",
                # A throw-away cluster: durability buys nothing, speed does.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            cwd=self.workdir,
            user=self.run_as,
            stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for clients
        )

        def connect() -> Any:
            return psycopg2.connect(
                host="127.0.0.1",
                port=self.port,
                user=self.user,
                password=self.password,
                dbname="postgres",
                connect_timeout=3,
            )

        def ready() -> Any:
            try:
                return connect()
            except psycopg2.OperationalError:
                return None

        conn = wait_for(
            ready,
            timeout=timeout,
            what=f"PostgreSQL on 127.0.0.1:{self.port}",
            alive=self.process.ensure_running,
            on_timeout=lambda: f"see {self.process.log_path}",
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()


# --------------------------------------------------------------------------------------------
# HTTP clients


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never a proxy from the environment
    return session


class AirflowAPI:
    """Airflow's public REST API, authenticated like a user: a JWT from ``POST /auth/token``."""

    def __init__(self, base_url: str, log_hint: Callable[[], str], timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.log_hint = log_hint
        self.timeout = timeout
        self.http = _session()

    def login(self, username: str = "admin", password: str = "admin") -> str:
        """Get a JWT as documented for the simple auth manager and send it on every request.

        With ``simple_auth_manager_all_admins`` any credentials give an admin token; with
        configured users the same call needs a real user's password.
        """
        resp = self.http.post(
            f"{self.base_url}/auth/token",
            json={"username": username, "password": password},
            timeout=self.timeout,
        )
        self._check(resp, (200, 201))
        token = resp.json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"
        return token

    def _check(self, resp: requests.Response, expected: Iterable[int]) -> None:
        if resp.status_code not in tuple(expected):
            raise AssertionError(
                f"{resp.request.method} {resp.request.url} answered HTTP {resp.status_code} "
                f"(expected {', '.join(map(str, expected))}): {resp.text[:2000]}\n"
                f"Airflow logs: {self.log_hint()}"
            )

    def call(
        self, method: str, path: str, *, expected: Iterable[int] = (200,), **kwargs: Any
    ) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        resp = self.http.request(method, f"{self.base_url}{path}", **kwargs)
        self._check(resp, tuple(expected))
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs).json()

    # -- DAGs and runs ---------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        body = self.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).json()
        assert body["is_paused"] is False, body

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.call(
            "POST",
            f"/api/v2/dags/{dag_id}/dagRuns",
            json={
                "dag_run_id": run_id,
                # A logical date, so that templates such as {{ ds }} render, as for a scheduled run.
                "logical_date": datetime.now(timezone.utc).isoformat(),
                "conf": dict(conf or {}),
            },
        ).json()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """Every run of ``dag_id``, oldest first."""
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after&limit=100")["dag_runs"]

    def wait_parsed(self, dag_id: str, timeout: float, alive: Callable[[], None]) -> None:
        """Wait until the dag-processor has parsed ``dag_id``; a timeout lists the import errors."""

        def parsed() -> bool:
            return self.http.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=10).status_code == 200

        wait_for(
            parsed,
            timeout=timeout,
            interval=1.0,
            what=f"the dag-processor to parse {dag_id}",
            alive=alive,
            on_timeout=lambda: f"import errors: {dumps(self.get('/api/v2/importErrors')['import_errors'])}",
        )

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        body = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances?limit=100")
        return body["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str | tuple[str, int], str | None]:
        """``{task_id: state}``, with ``(task_id, map_index)`` keys for mapped task instances."""
        states: dict[str | tuple[str, int], str | None] = {}
        for ti in self.task_instances(dag_id, run_id):
            key = ti["task_id"] if ti["map_index"] == -1 else (ti["task_id"], ti["map_index"])
            states[key] = ti["state"]
        return states

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        body = self.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
            f"/xcomEntries/{key}",
            # The stored (JSON) value as is; ``deserialize=true`` needs [api]
            # enable_xcom_deserialize_support on Airflow 3.0 and changes nothing for a str or list.
            params={"map_index": map_index},
        )
        return body["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """The task's log as Airflow serves it (the raw JSON answer, every field included)."""
        return self.call(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        ).text

    def wait_for_run(
        self, dag_id: str, run_id: str, *, timeout: float, alive: Callable[[], None]
    ) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.dag_run(dag_id, run_id)
            return run if run["state"] in FINISHED_RUN_STATES else None

        def details() -> str:
            try:
                states = self.task_states(dag_id, run_id)
            except (AssertionError, requests.RequestException) as err:
                states = f"(cannot read: {err})"
            return f"task states: {states}\nAirflow logs: {self.log_hint()}"

        return wait_for(
            finished,
            timeout=timeout,
            interval=1.0,
            what=f"DAG run {dag_id}/{run_id} to finish",
            alive=alive,
            on_timeout=details,
        )


class SimulatorAPI:
    """The simulator's control endpoints (``/__sim__/...``), from this process."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = _session()

    def _json(self, method: str, action: str, body: Mapping[str, Any] | None = None) -> Any:
        resp = self.http.request(method, f"{self.base_url}/__sim__/{action}", json=body, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def sent(self) -> list[dict[str, Any]]:
        return self._json("GET", "sent")

    def requests(self) -> list[dict[str, Any]]:
        return self._json("GET", "requests")

    def open_window(self, number: str) -> None:
        self._json("POST", "open-window", {"number": number})

    def set_webhook(self, url: str) -> None:
        """Where the simulator delivers clients' messages (the URL configured at the platform)."""
        self._json("POST", "webhook", {"url": url})

    def client_says(self, number: str, text: str, **options: Any) -> dict[str, Any]:
        """A client writes ``text``: the simulator opens their window and delivers the message to
        the webhook (``times``, ``secret``, ``quote`` as in ``WhatsAppSimulator.client_says``).
        Returns ``{"unique": ..., "deliveries": [{"status": ..., ...}, ...]}``."""
        return self._json("POST", "client-says", {"number": number, "text": text, **options})


def read_simulator_url(log_path: Path, proc: ManagedProcess, timeout: float = 30.0) -> str:
    """The ``base_url: ...`` line the simulator CLI prints at start."""

    def url() -> str | None:
        match = re.search(r"^base_url: (\S+)$", log_path.read_text(errors="replace"), re.MULTILINE)
        return match.group(1) if match else None

    return wait_for(
        url,
        timeout=timeout,
        what="the simulator's base_url line",
        alive=proc.ensure_running,
        on_timeout=lambda: f"see {log_path}",
    )


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# The whole deployment


@dataclass
class Deployment:
    """PostgreSQL, the simulator, and Airflow's api-server, scheduler, dag-processor and triggerer.

    ``start()`` raises DeploymentError with the log to read when a part does not come up;
    ``stop()`` always ends everything (call it in a ``finally``).
    """

    out_dir: Path
    run_id: str
    tools: SystemTools
    sim_token: str
    open_windows: Sequence[str]
    sender: str = "972771234567"
    startup_timeout: float = 180.0
    procs: ProcessSet = field(init=False)
    airflow_home: Path = field(init=False)
    log_dir: Path = field(init=False)
    pg_workdir: Path | None = None
    postgres: PostgresCluster | None = None
    sim_url: str = ""
    api_url: str = ""
    api: AirflowAPI = field(init=False)
    sim: SimulatorAPI = field(init=False)
    swept: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_dir = self.out_dir / "logs"
        self.airflow_home = self.out_dir / "airflow-home"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessSet(self.run_id, self.log_dir, _clean_env())

    def webhook_url(self, secret: str, conn_id: str = CONN_ID) -> str:
        """The URL a user gives the platform (README, "Receiving messages"): the api-server's
        webhook for ``conn_id``, the secret in the query string."""
        return f"{self.api_url}/wa019/webhook/{conn_id}?secret={secret}"

    def log_hint(self) -> str:
        return f"{self.procs.log_paths()}; task logs under {self.airflow_home / 'logs'}"

    def ensure_running(self) -> None:
        self.procs.ensure_running()

    def start(self) -> None:
        import tempfile

        # 1. The simulator, as its own process.
        sim = self.procs.start(
            "simulator",
            [
                sys.executable,
                "-m",
                "airflow_provider_wa019.testing",
                "--port",
                "0",
                "--token",
                self.sim_token,
                "--sender",
                self.sender,
                "--open-window",
                *self.open_windows,
            ],
        )
        self.sim_url = read_simulator_url(sim.log_path, sim)
        self.sim = SimulatorAPI(self.sim_url)

        # 2. PostgreSQL. Its data lives outside pytest's folder, which the postgres user cannot enter.
        self.pg_workdir = Path(tempfile.mkdtemp(prefix="wa019-e2e-pg-"))
        self.postgres = PostgresCluster(self.tools.pg_bindir, self.pg_workdir, self.procs)
        self.postgres.start()

        # 3. Airflow: migrate, then the four components.
        api_port = free_port()
        self.api_url = f"http://127.0.0.1:{api_port}"
        airflow_env = self.airflow_env(api_port)
        self.procs.base_env.update(airflow_env)
        airflow = [sys.executable, "-m", "airflow"]
        self.procs.run("airflow-db-migrate", [*airflow, "db", "migrate"], timeout=300)
        self.procs.start(
            "api-server", [*airflow, "api-server", "--host", "127.0.0.1", "--port", str(api_port)]
        )
        # --skip-serve-logs: the log server would listen on every interface; the api-server reads the
        # task logs from the shared log folder instead.
        self.procs.start("scheduler", [*airflow, "scheduler", "--skip-serve-logs"])
        self.procs.start("dag-processor", [*airflow, "dag-processor"])
        # The triggerer runs deferred tasks and the AsyncCallbacks of deadline alerts (awaited
        # there); --skip-serve-logs for the same reason as the scheduler's.
        self.procs.start("triggerer", [*airflow, "triggerer", "--skip-serve-logs"])

        self.api = AirflowAPI(self.api_url, self.log_hint)
        wait_for(
            self._healthy,
            timeout=self.startup_timeout,
            interval=1.0,
            what="the api-server, scheduler, dag-processor and triggerer to report healthy",
            alive=self.ensure_running,
            on_timeout=lambda: f"logs: {self.log_hint()}",
        )
        self.api.login()

    def airflow_env(self, api_port: int) -> dict[str, str]:
        import base64
        import secrets

        assert self.postgres is not None
        return {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.sqlalchemy_url,
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # 2 shared cores
            "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # as shipped: the tests unpause
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            # One secret for every component: the scheduler signs the tasks' tokens, the
            # api-server checks them.
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SECRETS__USE_CACHE": "False",
            "WA019_EXAMPLE_REPORT_DUE_SECONDS": str(REPORT_DUE_SECONDS),
        }

    def _healthy(self) -> bool:
        resp = self.api.http.get(f"{self.api_url}/api/v2/monitor/health", timeout=5)
        if resp.status_code != 200:
            return False
        health = resp.json()
        return all(
            (health.get(part) or {}).get("status") == "healthy"
            for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")
        )

    def stop(self) -> None:
        self.swept = self.procs.stop_all()
        if self.pg_workdir is not None:
            shutil.rmtree(self.pg_workdir, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    """This process's environment without Airflow settings, pytest variables or proxies."""
    drop_prefixes = ("AIRFLOW", "PYTEST_", "WA019_")
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes) and k.lower() not in proxies
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
