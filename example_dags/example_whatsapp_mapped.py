"""Page every on-call engineer: one mapped send per recipient, ids collected downstream.

Dynamic task mapping gives one task instance (and one retry budget) per recipient, which suits
tens of recipients.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

ON_CALL = ["+972 50-123-4567", "+972 52-765-4321", "+972 54-111-2222"]

with DAG(
    dag_id="wa019_example_mapped",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    doc_md=__doc__,
) as dag:
    page = WhatsAppSendOperator.partial(
        task_id="page_on_call",
        body="Nightly load of {{ ds }} failed; see the Airflow UI.",
    ).expand(to=ON_CALL)

    @task
    def collect(message_ids: list[str]) -> list[str]:
        ids = list(message_ids)
        print(f"Paged {len(ids)} engineers: {ids}")
        return ids

    collect(page.output)
