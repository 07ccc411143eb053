"""Answer clients who write to your WhatsApp account: a DAG that runs on their messages.

Every message the webhook receives (``POST /wa019/webhook/wa019_default`` in Airflow's
api-server; see the README, "Receiving messages") is an event of the asset
``wa019://wa019_default/inbound``. This DAG is scheduled on it: Airflow runs it for each new
message (several messages that arrive together share one run). ``show`` logs what arrived;
``answer`` replies to each client, quoting their message, while their 24 h window is open (it
is: they just wrote), and sends the approved template ``follow_up`` to a client whose window has
already closed (a delivery that was delayed by more than a day).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_wa019.inbound import inbound_messages, whatsapp_inbound
from airflow_provider_wa019.operators.reply import WhatsAppReplyOperator

with DAG(
    dag_id="wa019_example_inbound",
    schedule=[whatsapp_inbound("wa019_default")],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    doc_md=__doc__,
) as dag:

    @task
    def show(**context) -> list[dict]:
        """Log each message that triggered this run and pass its fields on."""
        messages = inbound_messages(context, "wa019_default")
        for message in messages:
            print(
                f"{message.timestamp.isoformat()} {message.type} from ...{message.sender[-4:]}"
                f" ({message.sender_name or 'no name'}): {message.body!r}"
                f"{f' quoting {message.quote_unique}' if message.quote_unique else ''}; window open"
                f" until {message.window_closes_at.isoformat()}"
            )
        return [{"unique": m.unique, "type": m.type, "body": m.body} for m in messages]

    answer = WhatsAppReplyOperator(
        task_id="answer",
        body="Thanks for your message{{ ', ' ~ message.sender_name if message.sender_name else '' }}! "
        "We received: {{ message.body }}",
        fallback_template="follow_up",
        fallback_variables=["{{ message.body | truncate(60) }}"],
    )

    show() >> answer
