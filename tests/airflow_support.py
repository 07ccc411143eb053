"""Helpers for tests that run DAGs for real (import as ``from airflow_support import ...``).

Relies on tests/conftest.py having pointed Airflow at a temporary AIRFLOW_HOME with a file-based
SQLite DB before Airflow was imported.

- ``run_dag(dag)`` runs a DAG object in-process with ``dag.test()`` and returns a ``DagRunResult``
  (dag run state, per-task ``(state, try_number)``, stored XComs read back and deserialised).
- ``airflow_dags_test(dag_id, dags_folder=...)`` runs ``airflow dags test`` in a subprocess and
  returns its combined output (``.task_log(task_id)``: one task's part): the reliable way to
  assert on task log lines, which ``dag.test()`` sends through structlog to a stream that
  pytest's ``capfd``/``caplog`` may not see. ``latest_run(dag_id)`` then reads what it did.
- ``set_connection_env(monkeypatch, conn_id, ...)`` stores a connection in ``AIRFLOW_CONN_<ID>``
  (JSON form) for one test; the ``wa019_env`` fixture in conftest.py wraps it for wa019, and the
  ``make_sim`` fixture starts a simulator and points a connection at it with ``FAST`` settings.
- ``FAST``: the connection extras every test uses for quick retries and short timeouts.

Seen on Airflow 3.3.2: connections from ``AIRFLOW_CONN_*`` are read from ``os.environ`` at each
``BaseHook.get_connection`` call (no cache while ``[secrets] use_cache`` is off, as conftest forces),
so a variable set or changed after Airflow was imported is seen by the next task, and monkeypatch's
clean-up is enough to keep tests apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pytest

    from airflow_provider_wa019.testing import WhatsAppSimulator

WA019_CONN_ID = "wa019_default"

# Connection extras for quick hook retries in tests: backoff 10 ms, every wait capped at 0.1 s
# (Retry-After too), connect timeout 0.3 s (three tries of an unresponsive address: ~1 s), read
# timeout 0.5 s (a delayed answer of 1 s is a read timeout). Override a key where a test needs
# another value, e.g. ``make_sim(timeout=[0.3, 3])`` for answers delayed by 2 s.
FAST: Mapping[str, Any] = MappingProxyType(
    {"backoff_factor": 0.01, "max_retry_wait": 0.1, "timeout": [0.3, 0.5]}
)

# The key of ``DagRunResult.tis``: the task id for an unmapped task, (task id, map index) for a
# mapped one.
TiKey = str | tuple[str, int]

_db_ready = False
_last_logical_date: datetime | None = None


# --------------------------------------------------------------------------------------------
# Metadata DB


def ensure_airflow_db() -> None:
    """Create/migrate the test metadata DB once per process (in-process, about 1-2 s on SQLite)."""
    global _db_ready
    if _db_ready:
        return
    from airflow import settings

    home = os.environ.get("AIRFLOW_HOME", "")
    url = str(settings.SQL_ALCHEMY_CONN or "")
    if not (home and url.startswith("sqlite:///") and home in url):
        raise RuntimeError(
            f"Refusing to initialise Airflow DB {url!r}: expected a SQLite file inside the test "
            f"AIRFLOW_HOME {home!r}. Is tests/conftest.py loaded before Airflow is imported?"
        )
    from airflow.utils.db import initdb

    initdb()
    _db_ready = True


def _write_dag_to_db(dag: Any) -> None:
    """Serialise ``dag`` into the metadata DB, as the DAG processor would after parsing it.

    ``dag.test()`` refuses a DAG that is not serialized, and it only finds DAGs by parsing files in
    DAGS_FOLDER, which never sees a DAG built inside a test function.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()  # the DagModel row refers to the bundle row
    if getattr(dag, "relative_fileloc", None) is None:
        # Set by DagBag when it parses a file; Airflow 3.0 fails to write a DAG without it.
        dag.relative_fileloc = os.path.basename(dag.fileloc)
    try:  # Airflow >= 3.2 (moved out of airflow.models.dagbag)
        from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    except ImportError:
        from airflow.models import dagbag as _dagbag

        DagBag = _dagbag.DagBag
        sync_bag_to_db = getattr(_dagbag, "sync_bag_to_db", None)  # Airflow 3.1
        if sync_bag_to_db is None:  # Airflow 3.0: a DagBag method
            bag = DagBag(dag_folder=os.devnull, include_examples=False, collect_dags=False)
            bag.bag_dag(dag)
            bag.sync_to_db("dags-folder", None)
            return
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


# --------------------------------------------------------------------------------------------
# In-process DAG runs


@dataclass(frozen=True)
class DagRunResult:
    """What one ``dag.test()`` run left in the metadata DB.

    ``state``: the dag run's final state (a ``DagRunState``, which compares equal to its string,
    e.g. ``"success"``). ``tis``: ``task_id`` (or ``(task_id, map_index)`` for mapped tasks) ->
    ``(state, try_number)``, where ``state`` is a ``TaskInstanceState``/string or None.
    """

    dag_id: str
    run_id: str
    logical_date: datetime | None
    state: str | None
    tis: Mapping[TiKey, tuple[str | None, int]] = field(repr=True)

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        """The XCom value a task instance of this run stored, deserialised; KeyError if none."""
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == self.run_id,
                    XComModel.task_id == task_id,
                    XComModel.map_index == map_index,
                    XComModel.key == key,
                )
            ).one_or_none()
            if row is None:
                stored = session.execute(
                    select(XComModel.task_id, XComModel.map_index, XComModel.key).where(
                        XComModel.dag_id == self.dag_id, XComModel.run_id == self.run_id
                    )
                ).all()
                raise KeyError(
                    f"no XCom {key!r} for task {task_id!r} map_index {map_index} in run {self.run_id}; "
                    f"stored: {sorted(tuple(r) for r in stored)}"
                )
            return _deserialize_xcom(row)

    def state_of(self, task_id: str, map_index: int = -1) -> str | None:
        """Shortcut for the state part of ``tis``."""
        key: TiKey = task_id if map_index < 0 else (task_id, map_index)
        return self.tis[key][0]


def _deserialize_xcom(row: Any) -> Any:
    # Values written by the task SDK are stored in serde form ({"__classname__": ...} for tuples,
    # datetimes, ...); the XCom backend's own deserialize_value turns them back into objects
    # (XComModel.deserialize_value does not).
    from airflow.sdk.execution_time.xcom import XCom

    return XCom.deserialize_value(row)


def _unique_logical_date() -> datetime:
    global _last_logical_date
    now = datetime.now(timezone.utc)
    if _last_logical_date is not None and now <= _last_logical_date:
        now = _last_logical_date + timedelta(milliseconds=1)
    _last_logical_date = now
    return now


def _delete_runs_at(dag_id: str, logical_date: datetime) -> None:
    # dag.test() reuses an existing run with the same run id (derived from the logical date) and,
    # if it already finished, returns it without running anything: drop it so the DAG runs again.
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(
            delete(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date)
            .execution_options(synchronize_session=False)
        )


def run_dag(
    dag: Any,
    *,
    conf: dict[str, Any] | None = None,
    logical_date: datetime | None = None,
) -> DagRunResult:
    """Run ``dag`` once with ``dag.test()`` in this process and return what it did.

    Works for DAGs defined anywhere (usually inside the test). Every call makes a new dag run,
    also for the same dag id: with ``logical_date=None`` a fresh, strictly increasing UTC time is
    used; an explicit ``logical_date`` that was used before replaces that earlier run.
    Retries run to the end (``dag.test()`` waits out ``retry_delay``: keep it tiny in tests).
    """
    ensure_airflow_db()
    _write_dag_to_db(dag)
    if logical_date is None:
        logical_date = _unique_logical_date()
    else:
        if logical_date.tzinfo is None:
            raise ValueError("logical_date must be timezone-aware")
        _delete_runs_at(dag.dag_id, logical_date)

    dr = dag.test(logical_date=logical_date, run_conf=conf)
    return _result_of(dr.dag_id, dr.run_id, logical_date, dr.state)


def latest_run(dag_id: str) -> DagRunResult:
    """The newest dag run of ``dag_id`` in the test metadata DB (e.g. after ``airflow dags test``)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).one()
        run_id, logical_date, state = dr.run_id, dr.logical_date, dr.state
    return _result_of(dag_id, run_id, logical_date, state)


def _result_of(dag_id: str, run_id: str, logical_date: datetime | None, state: str | None) -> DagRunResult:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, TaskInstance.try_number)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
        ).all()
    tis: dict[TiKey, tuple[str | None, int]] = {}
    for task_id, map_index, ti_state, try_number in rows:
        key: TiKey = task_id if map_index < 0 else (task_id, map_index)
        tis[key] = (ti_state, try_number)
    return DagRunResult(dag_id=dag_id, run_id=run_id, logical_date=logical_date, state=state, tis=tis)


# --------------------------------------------------------------------------------------------
# `airflow dags test` in a subprocess


@dataclass(frozen=True)
class CliResult:
    returncode: int
    output: str  # stdout and stderr, interleaved
    args: list[str]

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\n(exit code {self.returncode})\n{self.output}"

    def task_log(self, task_id: str) -> str:
        """The part of ``output`` one task wrote (all its map indexes and tries), in order.

        ``airflow dags test`` runs tasks one after another and brackets each with
        ``[DAG TEST] starting task_id=...`` and ``[DAG TEST] end task task_id=...`` lines (Airflow
        3.1 to 3.3), so a test can tell which task wrote a line.
        """
        parts: list[str] = []
        current: list[str] | None = None
        for line in self.output.splitlines(keepends=True):
            if f"[DAG TEST] starting task_id={task_id} " in line:
                current = []
            if current is not None:
                current.append(line)
                if f"[DAG TEST] end task task_id={task_id} " in line:
                    parts.append("".join(current))
                    current = None
        if current is not None:
            parts.append("".join(current))
        if not parts:
            raise KeyError(f"task {task_id!r} did not run in:\n{self}")
        return "".join(parts)


def airflow_dags_test(
    dag_id: str,
    *,
    dags_folder: str | os.PathLike[str],
    conf: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
) -> CliResult:
    """Run ``airflow dags test <dag_id>`` in a subprocess; return its exit code and combined output.

    The DAG must be defined at module level in a ``.py`` file inside ``dags_folder`` (e.g. a file
    the test wrote to ``tmp_path``). The subprocess inherits this process's environment (so
    connections set with monkeypatch are seen) and test metadata DB, plus ``env`` on top. Airflow
    3.3 exits non-zero when the dag run failed; assert on ``returncode`` and ``output`` yourself.
    """
    ensure_airflow_db()
    args = [sys.executable, "-m", "airflow", "dags", "test", dag_id]
    if conf is not None:
        args += ["--conf", json.dumps(dict(conf))]
    child_env = dict(os.environ)
    child_env["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(dags_folder).resolve())
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        child_env.update(env)
    proc = subprocess.run(
        args,
        env=child_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(returncode=proc.returncode, output=proc.stdout, args=args)


# --------------------------------------------------------------------------------------------
# Connections


class ConnectionSetter(Protocol):
    """Type of the ``wa019_env`` fixture's value."""

    def __call__(
        self,
        sim: WhatsAppSimulator | None = None,
        /,
        *,
        host: str | None = ...,
        password: str | None = ...,
        sender: str | None = ...,
        port: int | None = ...,
        conn_id: str = ...,
        conn_type: str = ...,
        **extra: object,
    ) -> dict[str, object]: ...


class SimulatorFactory(Protocol):
    """Type of the ``make_sim`` fixture's value."""

    def __call__(
        self, *, connection: bool | str = ..., open_windows: Iterable[str] = ..., **kwargs: Any
    ) -> WhatsAppSimulator: ...


def set_connection_env(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    *,
    conn_type: str,
    host: str | None = None,
    login: str | None = None,
    password: str | None = None,
    port: int | None = None,
    schema: str | None = None,
    extra: Mapping[str, object] | str | None = None,
) -> dict[str, object]:
    """Store a connection in ``AIRFLOW_CONN_<CONN_ID>`` (JSON form) until the test ends.

    Fields left as None are omitted; ``extra`` may be a string, stored as it is (e.g. JSON that
    does not parse). Returns the dict that was stored.
    """
    data: dict[str, object] = {"conn_type": conn_type}
    for name, value in (
        ("host", host),
        ("login", login),
        ("password", password),
        ("port", port),
        ("schema", schema),
    ):
        if value is not None:
            data[name] = value
    if isinstance(extra, str):
        data["extra"] = extra
    elif extra:
        data["extra"] = dict(extra)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(data))
    return data


# --------------------------------------------------------------------------------------------
# Callback contexts


def callback_context(dag_id: str = "direct", task_id: str = "t") -> dict[str, Any]:
    """A context as Airflow hands a task's failure callback (what a notifier's default text reads),
    for calling a notifier directly."""
    from airflow.sdk import DAG

    class TI:  # the attributes the default text reads
        state = "failed"
        try_number = 2
        log_url = "http://airflow.test/log"

    TI.task_id = task_id  # type: ignore[attr-defined]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return {"dag": DAG(dag_id, schedule=None, start_date=start), "ti": TI(), "run_id": "manual__1"}
