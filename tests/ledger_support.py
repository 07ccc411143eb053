"""What users and Airflow do to a finished task instance, for the bulk ledger's tests.

* :func:`rest_api`: Airflow's own Core REST API (``/api/v2``) in this process, as the web UI
  calls it: ``mark_success`` and ``clear`` go through it, so Airflow applies its own rules
  (``clear_on_success`` deletes task state on mark-success, a clear bumps ``max_tries``...).
* :func:`discard_task_state`: what apache/airflow#72100 makes a clear do by default (Airflow 3.3
  has ``task_state_store``; older releases have no task state to discard).
* :func:`run_cleared_task`: the next try of a cleared task instance, run as the scheduler would
  queue it, with the task SDK's in-process supervisor (``dag.test()`` would replace the whole run).
* :func:`ledger_variables` / :func:`set_variable`: the ledger's Airflow Variables, read and
  written in the metadata DB (to look at them, or to age a ledger as weeks passing would).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from airflow_support import ensure_airflow_db

_client: Any = None


def rest_api() -> Any:
    """A ``TestClient`` of Airflow's Core API, signed in as an admin of the simple auth manager."""
    global _client
    if _client is None:
        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
        from fastapi.testclient import TestClient

        ensure_airflow_db()
        app = create_app(apps="core")
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        _client = TestClient(app, headers={"Authorization": f"Bearer {token}"})
    return _client


def mark_success(dag_id: str, run_id: str, task_id: str) -> None:
    """Mark a task instance successful, as the UI's "Mark as success" does."""
    answer = rest_api().patch(
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}", json={"new_state": "success"}
    )
    assert answer.status_code == 200, answer.text


def clear(dag_id: str, run_id: str, task_ids: list[str], **options: Any) -> None:
    """Clear task instances, as the UI's "Clear" does (``POST .../clearTaskInstances``; the API's
    ``only_failed`` defaults to True, the UI sends False for the task instances it shows)."""
    body = {"dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False, **options}
    answer = rest_api().post(f"/api/v2/dags/{dag_id}/clearTaskInstances", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["task_instances"], answer.text


def task_state_supported() -> bool:
    try:
        from airflow.state import get_state_backend  # noqa: F401  (Airflow 3.3+)
    except ImportError:
        return False
    return True


def task_state_rows(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> int:
    """How many ``task_state_store`` keys the task instance has (0 before Airflow 3.3)."""
    if not task_state_supported():
        return 0
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    columns = TaskStateStoreModel.__table__.c
    with create_session() as session:
        return session.scalar(
            select(func.count()).where(
                columns.dag_id == dag_id,
                columns.run_id == run_id,
                columns.task_id == task_id,
                columns.map_index == map_index,
            )
        )


def discard_task_state(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> None:
    """Delete every ``task_state_store`` key of the task instance, with Airflow's own backend
    (what the Execution API's ``DELETE /task-state-store/{ti}`` and ``clear_on_success`` call)."""
    if not task_state_supported():
        return  # Airflow < 3.3: there is no task state
    from airflow._shared.state import TaskScope
    from airflow.state import get_state_backend
    from airflow.utils.session import create_session

    scope = TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index)
    with create_session() as session:
        get_state_backend().clear(scope, session=session)


def run_cleared_task(dag: Any, run_id: str, task_id: str, map_index: int = -1) -> str:
    """Run the next try of a cleared task instance; returns its final state."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.api.datamodels._generated import TaskInstance as SdkTaskInstance
    from airflow.sdk.execution_time.supervisor import run_task_in_process
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag.dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        ).one()
        assert ti.state is None, f"not cleared: {ti.state}"
        run = ti.dag_run
        if run.state != DagRunState.RUNNING:  # a clear queues a finished run: the scheduler starts it
            run.state = DagRunState.RUNNING
            run.start_date = run.start_date or timezone.utcnow()
        ti.try_number += 1  # what the scheduler does when it queues the cleared task
        ti.state = TaskInstanceState.QUEUED
        sdk_ti = SdkTaskInstance(
            id=UUID(str(ti.id)),
            task_id=ti.task_id,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            try_number=ti.try_number,
            map_index=ti.map_index,
            dag_version_id=UUID(str(ti.dag_version_id)),
        )
    return run_task_in_process(ti=sdk_ti, task=dag.get_task(task_id)).state


def ti_row(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> tuple[str | None, int, int]:
    """``(state, try_number, max_tries)`` of a task instance."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        ).one()
        return ti.state, ti.try_number, ti.max_tries


def ledger_variables(prefix: str = "wa019_bulk.") -> dict[str, tuple[Any, str | None]]:
    """Variables whose key starts with ``prefix``: key -> (JSON value, or the text when it is no
    JSON, description)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.startswith(prefix))).all()
        return {row.key: (_json_or_text(row.val), row.description) for row in rows}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def set_variable(key: str, value: Any, *, raw: bool = False) -> None:
    """Write a Variable straight into the metadata DB (JSON unless ``raw``)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    text = value if raw else json.dumps(value)
    with create_session() as session:
        row = session.scalars(select(Variable).where(Variable.key == key)).one_or_none()
        if row is None:
            session.add(Variable(key=key, val=text))
        else:
            row.val = text
