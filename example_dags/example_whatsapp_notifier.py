"""Get a WhatsApp message when a pipeline fails (and when it recovers).

* Every task gets ``on_failure_callback`` from ``default_args``: a free-form alert to the
  on-call engineer, or the approved template ``ops_alert`` when their 24-hour window is
  closed (free-form messages only reach people who wrote in the last 24 hours).
* ``publish`` also reports success, with the notifier's default text.
* The DAG itself alerts on a failed run, with a short DAG-level message.

A failed notification is logged with the API's reason and never changes a task's state.

Against the bundled simulator (``load`` fails while the param ``fail`` is true)::

    python -m airflow_provider_wa019.testing --port 8019 --open-window 972501234567 \\
        --template 'ops_alert=Airflow alert: {{1}} failed in run {{2}}.'
    # in another shell: export the AIRFLOW_CONN_WA019_DEFAULT=... line it printed, then
    airflow dags test wa019_example_notifier
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task
from airflow.sdk.definitions.param import Param

from airflow_provider_wa019.notifications.whatsapp import send_whatsapp_notification

ON_CALL = "+972 50-123-4567"

alert_on_failure = send_whatsapp_notification(
    to="{{ params.on_call }}",
    body=(
        "*{{ dag.dag_id }}.{{ ti.task_id }} failed* (try {{ ti.try_number }})\n"
        "Run: {{ run_id }}\nError: {{ exception }}\nLog: {{ ti.log_url }}"
    ),
    # Outside the on-call engineer's 24 h window the free-form text is refused: send this instead.
    template="ops_alert",
    variables=["{{ dag.dag_id }}.{{ ti.task_id }}", "{{ run_id }}"],
)

with DAG(
    dag_id="wa019_example_notifier",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    params={
        "on_call": Param(ON_CALL, type="string"),
        "fail": Param(True, type="boolean"),
    },
    default_args={"retries": 0, "retry_delay": timedelta(seconds=5), "on_failure_callback": alert_on_failure},
    on_failure_callback=send_whatsapp_notification(
        to="{{ params.on_call }}", body="DAG {{ dag.dag_id }}, run {{ run_id }}: failed."
    ),
    doc_md=__doc__,
) as dag:

    @task
    def load(**context) -> int:
        if context["params"]["fail"]:
            raise ValueError("source table orders_raw is empty")
        return 42

    @task(on_success_callback=send_whatsapp_notification(to="{{ params.on_call }}"))
    def publish(rows: int) -> None:
        print(f"published {rows} rows")

    publish(load())
