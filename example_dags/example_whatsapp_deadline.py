"""Page the on-call engineer on WhatsApp when the daily sales report is late (a deadline alert).

The report must be published within ``REPORT_DUE`` (30 minutes) of its run being queued. When a
run is still unfinished then, Airflow's scheduler marks the deadline missed and the
**triggerer** awaits ``WhatsAppNotifier`` (an ``AsyncCallback``) with the deadline and the DAG
run as its context: the on-call engineer gets one message naming the DAG, the run and the
deadline. The run itself carries on; the alert never changes its state. A run that succeeds in
time sends nothing.

Needs Airflow 3.1 or later and a running ``airflow triggerer`` (deadline alerts' async callbacks
run there, not on a worker). The alert is free-form text, which reaches only numbers that wrote
to your account in the last 24 hours; add ``template=`` (and ``variables=``) to the kwargs for an
approved template to go to an on-call engineer whose window is closed.

Try it against the bundled simulator with a deadline of seconds rather than half an hour
(``WA019_EXAMPLE_REPORT_DUE_SECONDS`` is read when the file is parsed, so the dag-processor
needs it)::

    python -m airflow_provider_wa019.testing --port 8019 --open-window 972501234567
    # in another shell: export the AIRFLOW_CONN_WA019_DEFAULT=... line it printed, then
    WA019_EXAMPLE_REPORT_DUE_SECONDS=10 airflow standalone   # includes a triggerer
    airflow dags unpause wa019_example_deadline
    airflow dags trigger wa019_example_deadline --conf '{"build_seconds": 30}'
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task
from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference

from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier

ON_CALL = "+972 50-123-4567"

#: How long after its run is queued the report must be published. (The environment variable
#: only exists so that the example can be tried, and is tested, in seconds.)
REPORT_DUE = timedelta(seconds=float(os.environ.get("WA019_EXAMPLE_REPORT_DUE_SECONDS", 30 * 60)))

with DAG(
    dag_id="wa019_example_deadline",
    schedule=None,  # e.g. "0 6 * * *" in production
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "whatsapp"],
    params={"build_seconds": Param(60, type="integer", minimum=0)},
    deadline=DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=REPORT_DUE,
        # Built and awaited on the triggerer with these kwargs plus a context holding only
        # ``deadline`` (id, deadline_time) and ``dag_run`` (the REST API's view of the run: its
        # id is ``dag_run.dag_run_id``); there is no ``ti``, ``params`` or ``dag`` to render.
        callback=AsyncCallback(
            WhatsAppNotifier,
            kwargs={
                "to": ON_CALL,
                "body": (
                    "*Sales report late*: DAG {{ dag_run.dag_id }}, run {{ dag_run.dag_run_id }} "
                    "missed its deadline ({{ deadline.deadline_time }}); the run is "
                    "{{ dag_run.state }}."
                ),
            },
        ),
    ),
    doc_md=__doc__,
) as dag:

    @task
    def build_report(**context) -> int:
        """Stands for the slow part: aggregating the day's orders."""
        time.sleep(context["params"]["build_seconds"])
        return 1250

    @task
    def publish(orders: int) -> None:
        print(f"sales report published: {orders} orders")

    publish(build_report())
