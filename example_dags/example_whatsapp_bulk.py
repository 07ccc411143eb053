"""Tell every customer whose order shipped: one bulk task for the whole list.

One task sends to every recipient (at most 8 requests in flight, at most 20 started per second),
renders the body per customer, and returns a summary. If the task is retried, or cleared and run
again, customers already confirmed are not messaged twice (the task keeps a progress ledger in
Airflow Variables, which no clear or mark-success erases). Dynamic task mapping (example_whatsapp_mapped.py) suits tens of
recipients; this suits thousands.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator

with DAG(
    dag_id="wa019_example_bulk",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"shop": "Kiosk Ltd"},
    tags=["example", "whatsapp"],
    doc_md=__doc__,
) as dag:

    @task
    def shipped_orders() -> list[dict]:
        # In a real pipeline: a database query. Each dict holds the number and the values the
        # message uses; a plain list of numbers works too.
        return [
            {"to": "+972 50-123-4567", "name": "Dana", "order": "A-1001"},
            {"to": "+972 52-765-4321", "name": "Noa", "order": "A-1002"},
        ]

    notify = WhatsAppBulkSendOperator(
        task_id="notify_shipped",
        recipients=shipped_orders(),
        # Rendered once per recipient: the recipient's values plus the task context.
        body="Hi {{ name }}, your order *{{ order }}* from {{ params.shop }} has shipped.",
        max_concurrency=8,
        rate_per_second=20,
        max_failure_ratio=0.05,  # up to 5% bad numbers or refusals still count as success
        retries=2,
    )

    @task
    def report(summary: dict) -> None:
        print(f"sent {summary['sent']} of {summary['total']}: {summary}")

    report(notify.output)
