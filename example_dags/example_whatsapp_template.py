"""Reach a customer whether or not they wrote to you in the last 24 hours.

* ``confirm_order`` tries a free-form message first. If 019sms refuses it because the client's
  24-hour window is closed (reason 7) or the client never wrote (reason 8), the approved
  template ``order_shipped`` goes out instead, in the same task try. XCom ``sent_as`` says
  which one went out; ``return_value`` is that message's id.
* ``send_invoice`` always sends a template (``invoice_ready``, with a PDF document header);
  its variables come from an upstream task's XCom list.
* ``report`` prints what went out.

Against the bundled simulator, with both templates approved and no window open, so the
fallback is used::

    python -m airflow_provider_wa019.testing --port 8019 \\
        --template 'order_shipped=Hi {{1}}, your order {{2}} has shipped.' \\
        --template 'invoice_ready=Hi {{1}}, invoice {{2}} of {{3}} is attached.'
    # in another shell: export the AIRFLOW_CONN_WA019_DEFAULT=... line it printed, then
    airflow dags test wa019_example_template
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task
from airflow.sdk.definitions.param import Param

from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator, WhatsAppSendTemplateOperator

with DAG(
    dag_id="wa019_example_template",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    params={
        "customer": Param("+972 50-123-4567", type="string"),
        "name": Param("Dana", type="string"),
        "order_id": Param("A-1001", type="string"),
    },
    doc_md=__doc__,
) as dag:
    confirm_order = WhatsAppSendOperator(
        task_id="confirm_order",
        to="{{ params.customer }}",
        body="Hi {{ params.name }}! Your order *{{ params.order_id }}* has shipped.",
        # Window closed or never opened: send this approved template instead of skipping.
        fallback_template="order_shipped",
        fallback_variables=["{{ params.name }}", "{{ params.order_id }}"],
    )

    @task
    def invoice_values(**context) -> list[str]:
        params = context["params"]
        return [params["name"], f"INV-{params['order_id']}", "120.00 ILS"]

    send_invoice = WhatsAppSendTemplateOperator(
        task_id="send_invoice",
        to="{{ params.customer }}",
        template="invoice_ready",
        variables=invoice_values(),  # an XComArg: the list arrives as a list
        header_type=5,  # document
        header_link="https://example.com/invoices/{{ params.order_id }}.pdf",
    )

    @task
    def report(**context) -> None:
        ti = context["ti"]
        sent_as = ti.xcom_pull(task_ids="confirm_order", key="sent_as")
        print(f"Order confirmation sent as a {sent_as}: {ti.xcom_pull(task_ids='confirm_order')}")
        print(f"Invoice template sent: {ti.xcom_pull(task_ids='send_invoice')}")

    [confirm_order, send_invoice] >> report()
