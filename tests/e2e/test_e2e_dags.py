"""The example DAGs under a real scheduler, triggered and checked through Airflow's REST API.

What only a real deployment shows: the provider is discovered by the api-server, the scheduler
and the task processes; the connection comes from the metadata DB (created over REST, its token
encrypted with the Fernet key) rather than an ``AIRFLOW_CONN_*`` variable; XComs, skips and
failures land in PostgreSQL; and the task log users read in the UI explains a failure without
showing the token.
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

from e2e_deployment import CONN_ID, CUSTOMER, NEW_CONTACT, ON_CALL, SENDER, Deployment, dumps, wait_for

SEND_DAG = "wa019_example_send"
MAPPED_DAG = "wa019_example_mapped"
#: Bounds for one DAG run (a task process costs a few seconds on 2 busy cores) and for parsing.
RUN_TIMEOUT = 180.0
PARSE_TIMEOUT = 120.0


def _wait_parsed(dep: Deployment, dag_id: str) -> None:
    def parsed() -> bool:
        resp = dep.api.http.get(f"{dep.api_url}/api/v2/dags/{dag_id}", timeout=10)
        return resp.status_code == 200

    def import_errors() -> str:
        errors = dep.api.get("/api/v2/importErrors")["import_errors"]
        return f"import errors: {dumps(errors)}\nlogs: {dep.log_hint()}"

    wait_for(
        parsed,
        timeout=PARSE_TIMEOUT,
        interval=1.0,
        what=f"the dag-processor to parse {dag_id}",
        alive=dep.ensure_running,
        on_timeout=import_errors,
    )


def run_dag(dep: Deployment, dag_id: str, label: str) -> tuple[str, dict[str, Any]]:
    """Unpause, trigger through ``POST /api/v2/dags/{dag_id}/dagRuns``, wait; returns (run id, run)."""
    _wait_parsed(dep, dag_id)
    dep.api.unpause(dag_id)
    run_id = f"e2e__{label}__{uuid.uuid4().hex[:8]}"
    created = dep.api.trigger(dag_id, run_id)
    assert created["dag_run_id"] == run_id
    run = dep.api.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT, alive=dep.ensure_running)
    return run_id, run


def _explain(dep: Deployment, dag_id: str, run_id: str) -> str:
    return (
        f"task states: {dep.api.task_states(dag_id, run_id)}\n"
        f"task logs: {dep.airflow_home / 'logs' / f'dag_id={dag_id}' / f'run_id={run_id}'}\n"
        f"process logs: {dep.log_hint()}"
    )


def _airflow_log_files(dep: Deployment) -> list[Path]:
    """Every log Airflow wrote: task logs, and the api-server's, scheduler's, dag-processor's."""
    files = [p for p in (dep.airflow_home / "logs").rglob("*") if p.is_file()]
    files += [p for p in dep.log_dir.glob("*.log") if p.name != "simulator.log"]
    return files


def test_send_dag_returns_the_simulators_message_id_and_skips_the_closed_window(
    deployment: Deployment, wa019_conn: dict[str, object]
) -> None:
    dep = deployment
    sent_before = len(dep.sim.sent())
    requests_before = len(dep.sim.requests())

    run_id, run = run_dag(dep, SEND_DAG, "send")

    states = dep.api.task_states(SEND_DAG, run_id)
    assert states == {
        "send_order_confirmation": "success",
        "record_message_id": "success",
        "send_to_new_contact": "skipped",  # reason 8: the contact never wrote to us
        "summarize": "success",
    }, _explain(dep, SEND_DAG, run_id)
    assert run["state"] == "success", _explain(dep, SEND_DAG, run_id)

    new = dep.sim.sent()[sent_before:]
    assert [m["to"] for m in new] == [CUSTOMER], f"the simulator recorded {dumps(new)}"
    unique = new[0]["unique"]
    assert "A-1001" in new[0]["body"]
    assert dep.api.xcom(SEND_DAG, run_id, "send_order_confirmation") == unique
    assert dep.api.xcom(SEND_DAG, run_id, "record_message_id") == unique

    refused = [
        r for r in dep.sim.requests()[requests_before:] if (r.get("json") or {}).get("to") == NEW_CONTACT
    ]
    assert [(r["response_json"] or {}).get("reason") for r in refused] == [8], dumps(refused)
    skip_log = dep.api.task_log(SEND_DAG, run_id, "send_to_new_contact", try_number=1)
    assert "reason 8" in skip_log, f"the skipped task's log does not say why: {skip_log[-3000:]}"


def test_mapped_dag_sends_one_message_per_recipient(
    deployment: Deployment, wa019_conn: dict[str, object]
) -> None:
    dep = deployment
    sent_before = len(dep.sim.sent())

    run_id, run = run_dag(dep, MAPPED_DAG, "mapped")

    states = dep.api.task_states(MAPPED_DAG, run_id)
    assert states == {
        **{("page_on_call", i): "success" for i in range(len(ON_CALL))},
        "collect": "success",
    }, _explain(dep, MAPPED_DAG, run_id)
    assert run["state"] == "success", _explain(dep, MAPPED_DAG, run_id)

    new = dep.sim.sent()[sent_before:]
    by_number = {m["to"]: m["unique"] for m in new}
    assert sorted(by_number) == sorted(ON_CALL), f"the simulator recorded {dumps(new)}"
    assert all(run["logical_date"][:10] in m["body"] for m in new), "{{ ds }} was not rendered"
    # Each mapped instance returned the id of the message sent to its own recipient.
    for index, number in enumerate(ON_CALL):
        assert dep.api.xcom(MAPPED_DAG, run_id, "page_on_call", map_index=index) == by_number[number]
    assert sorted(dep.api.xcom(MAPPED_DAG, run_id, "collect")) == sorted(by_number.values())


def test_wrong_token_fails_without_retry_and_the_log_explains_without_the_token(
    deployment: Deployment, wa019_conn: dict[str, object], sim_token: str
) -> None:
    dep = deployment
    wrong = f"wrong-token-{secrets.token_hex(12)}"
    path = f"/api/v2/connections/{CONN_ID}"

    def set_token(token: str) -> None:
        dep.api.call(
            "PATCH",
            path,
            params={"update_mask": "password"},
            json={"connection_id": CONN_ID, "conn_type": "wa019", "password": token},
        )

    sent_before = len(dep.sim.sent())
    set_token(wrong)
    try:
        run_id, run = run_dag(dep, SEND_DAG, "wrong_token")
    finally:
        set_token(sim_token)  # the other tests need the right one

    states = dep.api.task_states(SEND_DAG, run_id)
    assert states["send_order_confirmation"] == "failed", _explain(dep, SEND_DAG, run_id)
    assert states["record_message_id"] == "upstream_failed", _explain(dep, SEND_DAG, run_id)
    assert run["state"] == "failed"
    assert dep.sim.sent()[sent_before:] == [], "nothing may be sent with a wrong token"
    ti = next(
        t for t in dep.api.task_instances(SEND_DAG, run_id) if t["task_id"] == "send_order_confirmation"
    )
    assert ti["try_number"] == 1, f"a wrong token must not be retried: {dumps(ti)}"

    log = dep.api.task_log(SEND_DAG, run_id, "send_order_confirmation", try_number=1)
    assert "reason 3" in log, (
        f"the failed task's log (read through the REST API) does not explain the failure: {log[-3000:]}"
    )
    assert wrong not in log, "the task log shows the (wrong) token"
    assert sim_token not in log, "the task log shows the connection's token"
    leaks = [
        str(p)
        for p in _airflow_log_files(dep)
        if wrong in p.read_text(errors="replace") or sim_token in p.read_text(errors="replace")
    ]
    assert not leaks, f"a token appears in these Airflow logs: {leaks}"


def test_test_connection_through_the_api_server(
    deployment: Deployment, wa019_conn: dict[str, object], sim_token: str
) -> None:
    """``POST /api/v2/connections/test`` runs the hook's test_connection() inside the api-server.

    The body carries the connection as the form holds it, token included: every Airflow 3 release
    tests that. (Testing a stored connection by id alone, as the README's troubleshooting suggests
    for 3.3.2, needs Airflow 3.2 or later, apache/airflow#59643; the browser check does that.)
    """
    dep = deployment
    requests_before = len(dep.sim.requests())
    result = dep.api.call(
        "POST",
        "/api/v2/connections/test",
        json={
            "connection_id": CONN_ID,
            "conn_type": "wa019",
            "host": dep.sim_url,
            "password": sim_token,
            "extra": json.dumps({"sender": SENDER}),
        },
    ).json()
    assert result["status"] is True, result
    new = dep.sim.requests()[requests_before:]
    assert new, "test_connection() made no request to the simulator"
    assert all(r["method"] == "GET" for r in new), f"test_connection() must not send: {dumps(new)}"
    headers = {k.lower(): v for k, v in new[-1]["headers"].items()}
    assert headers.get("authorization") == "Bearer ***", f"the stored token was not the one sent: {headers}"
