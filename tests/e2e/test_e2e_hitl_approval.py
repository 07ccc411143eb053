"""Approvals on WhatsApp in a real deployment: ``wa019_example_approval``'s ``ApprovalOperator``
asks on WhatsApp and waits (Airflow 3.3: ``awaiting_input``; 3.1: deferred to the HITL
trigger on the triggerer); the simulator's client answers
through the api-server's webhook; the task resumes through Airflow's own answer path and the
scheduler runs (or skips) ``publish``.

(Named to sort after test_e2e_celery.py, whose own deployment runs best before the shared one
starts.) Every message sent here is an answer or a refused one, never an ordinary message: none becomes
an asset event that would start ``wa019_example_inbound`` (tests/e2e/test_e2e_inbound.py counts
its runs).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from e2e_deployment import Deployment, dumps, wait_for

APPROVAL_DAG = "wa019_example_approval"
APPROVER = "972528887766"
STRANGER = "972528887700"
RUN_TIMEOUT = 180.0
PARSE_TIMEOUT = 120.0


def _question(dep: Deployment, after: int) -> dict[str, Any]:
    """Wait for the question of a new run to reach the approver (sent messages after ``after``)."""

    def asked() -> dict[str, Any] | None:
        new = dep.sim.sent()[after:]
        return next((m for m in new if m["to"] == APPROVER and "Reply 1 to Approve" in m["body"]), None)

    return wait_for(
        asked,
        timeout=RUN_TIMEOUT,
        interval=1.0,
        what=f"{APPROVAL_DAG}'s question to reach the approver",
        alive=dep.ensure_running,
        on_timeout=lambda: f"sent: {dumps(dep.sim.sent()[after:])}; logs: {dep.log_hint()}",
    )


def _answer(dep: Deployment, number: str, text: str, **kw: Any) -> dict[str, Any]:
    said = dep.sim.client_says(number, text, **kw)
    [delivery] = said["deliveries"]
    assert delivery["status"] == 200, dumps(said)
    return {"unique": said["unique"], "answer": delivery["answer"]}


def _start(dep: Deployment) -> tuple[str, dict[str, Any]]:
    before = len(dep.sim.sent())
    run_id = f"approval-{uuid.uuid4().hex[:8]}"
    dep.api.trigger(APPROVAL_DAG, run_id, conf={"approver": f"+{APPROVER}"})
    return run_id, _question(dep, before)


def _wait_waiting(dep: Deployment, run_id: str) -> None:
    """Wait until ``approve_publish`` waits for its answer, then as long as a person would take
    to read the question. (On Airflow 3.3.2 an answer in the second after the task parks, before
    the executor has reported the parked process's exit, makes the scheduler fail the task: "the
    task instance's state attribute is queued". An answer in the UI that fast does the same.)"""
    wait_for(
        lambda: (
            dep.api.task_states(APPROVAL_DAG, run_id).get("approve_publish") in ("awaiting_input", "deferred")
        ),
        timeout=RUN_TIMEOUT,
        interval=0.5,
        what="approve_publish to wait for its answer",
        alive=dep.ensure_running,
    )
    time.sleep(3)


def _hitl(dep: Deployment, run_id: str) -> dict[str, Any]:
    return dep.api.get(
        f"/api/v2/dags/{APPROVAL_DAG}/dagRuns/{run_id}/taskInstances/approve_publish/-1/hitlDetails"
    )


def _reply_to(dep: Deployment, unique: str) -> dict[str, Any]:
    return wait_for(
        lambda: next((m for m in dep.sim.sent() if m.get("replyTo") == unique), None),
        timeout=60,
        interval=0.5,
        what=f"the webhook's reply to {unique}",
        alive=dep.ensure_running,
    )


def test_approve_from_whatsapp_and_reject_skips_publish(
    deployment: Deployment, wa019_conn: dict[str, object], webhook_secret: str
) -> None:
    dep = deployment
    dep.api.wait_parsed(APPROVAL_DAG, timeout=PARSE_TIMEOUT, alive=dep.ensure_running)
    dep.api.unpause(APPROVAL_DAG)
    dep.sim.set_webhook(dep.webhook_url(webhook_secret))
    dep.sim.open_window(APPROVER)

    # 1. Approve by "1", quoting the question; first a number that was not asked tries.
    run_id, question = _start(dep)
    assert question["kind"] == "message"
    assert question["body"].startswith("*Publish today's sales report?*\n\n1204 rows are ready.")
    assert f"/dags/{APPROVAL_DAG}/runs/{run_id}/tasks/approve_publish/required_actions" in question["body"]

    _wait_waiting(dep, run_id)
    stranger = _answer(dep, STRANGER, "1", quote=question["unique"])
    assert stranger["answer"] == '{"status":"refused"}'
    time.sleep(3)  # were the stranger's answer taken, the task would leave its wait now
    states = dep.api.task_states(APPROVAL_DAG, run_id)
    assert states["approve_publish"] in ("awaiting_input", "deferred"), states
    assert _hitl(dep, run_id)["response_received"] is False

    approved = _answer(dep, APPROVER, "1", quote=question["unique"])
    assert approved["answer"] == '{"status":"answered"}'
    run = dep.api.wait_for_run(APPROVAL_DAG, run_id, timeout=RUN_TIMEOUT, alive=dep.ensure_running)
    assert run["state"] == "success", dumps(run)
    states = dep.api.task_states(APPROVAL_DAG, run_id)
    assert states == {"build_report": "success", "approve_publish": "success", "publish": "success"}, states
    detail = _hitl(dep, run_id)
    assert detail["chosen_options"] == ["Approve"]
    assert detail["responded_by_user"] == {"id": "wa019:********7766", "name": "WhatsApp ********7766"}
    reply = _reply_to(dep, approved["unique"])
    assert reply["to"] == APPROVER
    assert reply["body"] == f"Recorded: Approve ({APPROVAL_DAG} / approve_publish)"
    assert [m["to"] for m in dep.sim.sent() if m.get("replyTo") == stranger["unique"]] == [STRANGER]

    # 2. A second run, rejected by "2" without quoting: publish is skipped.
    run_id, question = _start(dep)
    _wait_waiting(dep, run_id)
    rejected = _answer(dep, APPROVER, "2")
    assert rejected["answer"] == '{"status":"answered"}'
    run = dep.api.wait_for_run(APPROVAL_DAG, run_id, timeout=RUN_TIMEOUT, alive=dep.ensure_running)
    assert run["state"] == "success", dumps(run)
    states = dep.api.task_states(APPROVAL_DAG, run_id)
    assert states == {"build_report": "success", "approve_publish": "success", "publish": "skipped"}, states
    assert _hitl(dep, run_id)["chosen_options"] == ["Reject"]
    assert (
        _reply_to(dep, rejected["unique"])["body"] == f"Recorded: Reject ({APPROVAL_DAG} / approve_publish)"
    )
