"""Approve from WhatsApp: a report is published only after a person says so on WhatsApp.

``approve_publish`` is Airflow's own ``ApprovalOperator`` (Airflow 3.1+). Its notifier sends
the approver the question with the options numbered and the link to the task in the UI::

    *Publish today's sales report?*

    1204 rows are ready.

    Reply 1 to Approve, 2 to Reject.

    Or answer in Airflow: https://airflow.example.com/dags/.../required_actions

The approver answers "1" (or "approve"), quoting the question or not; the provider's webhook
(see the README, "Approvals on WhatsApp") records the answer through Airflow's HITL answer
path, replies "Recorded: Approve (wa019_example_approval / approve_publish)", and ``publish``
runs. "2" rejects: ``publish`` is skipped. The UI's answer works all the same. Without an
answer within 4 hours the default, Reject, is taken.

An approver who has not written to the account in the last 24 h gets the approved template
``approval_request`` instead (its variables: the subject, how to answer, the link).
"""

from __future__ import annotations

import inspect
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk import DAG, Param, task

from airflow_provider_wa019.notifications.hitl import WhatsAppHITLNotifier

# How long the question waits before the default answer is taken: ``response_timeout`` in the
# standard provider of Airflow 3.2+, ``execution_timeout`` in the one of Airflow 3.1.
WAIT = timedelta(hours=4)
WAIT_ARG = "response_timeout" if "response_timeout" in inspect.signature(HITLOperator).parameters else None

with DAG(
    dag_id="wa019_example_approval",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    doc_md=__doc__,
    params={"approver": Param("+972 50-123-4567", type="string", description="Who approves, on WhatsApp")},
) as dag:

    @task
    def build_report() -> int:
        """Stands for the real work: the number of rows of the report."""
        return 1204

    approve = ApprovalOperator(
        task_id="approve_publish",
        subject="Publish today's sales report?",
        body="{{ ti.xcom_pull(task_ids='build_report') }} rows are ready.",
        defaults="Reject",
        **({WAIT_ARG: WAIT} if WAIT_ARG else {"execution_timeout": WAIT}),
        notifiers=[WhatsAppHITLNotifier(to="{{ params.approver }}", template="approval_request")],
    )

    @task
    def publish() -> str:
        print("Report published")
        return "published"

    build_report() >> approve >> publish()
