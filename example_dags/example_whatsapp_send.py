"""Send an order confirmation on WhatsApp and use the returned message id downstream.

Also shows the 24-hour rule: free-form messages reach only clients who wrote to you in the last
24 hours. ``send_to_new_contact`` targets a number that never wrote, so 019sms answers reason 8
and the task is *skipped* (not failed); ``summarize`` still runs thanks to its trigger rule.

Run it against the bundled simulator with ``bash scripts/demo.sh``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from airflow.sdk.definitions.param import Param

from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

with DAG(
    dag_id="wa019_example_send",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    params={
        "customer": Param("+972 50-123-4567", type="string"),
        "new_contact": Param("+972 50-987-6543", type="string"),
        "order_id": Param("A-1001", type="string"),
    },
    doc_md=__doc__,
) as dag:
    send_confirmation = WhatsAppSendOperator(
        task_id="send_order_confirmation",
        to="{{ params.customer }}",
        body="Hi! Your order *{{ params.order_id }}* has shipped. Reply here with any question.",
    )

    @task
    def record_message_id(message_id: str) -> str:
        # The operator's return value is the message id; a reply quoting it would use reply_to.
        print(f"WhatsApp message id: {message_id}")
        return message_id

    send_to_new_contact = WhatsAppSendOperator(
        task_id="send_to_new_contact",
        to="{{ params.new_contact }}",
        body="Welcome aboard!",
        # Reasons 7 and 8 (window closed / first contact) skip the task; this is the default.
        skip_on_reasons=(7, 8),
    )

    @task(trigger_rule="none_failed")
    def summarize(message_id: str) -> None:
        print(f"Confirmation sent as {message_id}; the new contact needs a template message.")

    message_id = record_message_id(send_confirmation.output)
    [message_id, send_to_new_contact] >> summarize(message_id)
