"""A campaign to a large audience: the list split across mapped bulk tasks, one rate for the run.

`audience` produces the list (in a real pipeline: a query to your CRM or warehouse; here it
returns the run's `recipients` param, so you can try it on the simulator at any size). One line,
`whatsapp_campaign(...)`, adds `send_offer_split`, which drops numbers listed twice and cuts the
list into chunks of `chunk_size`, and `send_offer`, a bulk task mapped over the chunks: at most 4
of them send at once, each at a quarter of `total_rate` messages per second, so the whole run
never starts more than `total_rate` messages in any second, on any number of workers. A number
is in one chunk only, and each chunk keeps a progress ledger, so retries (a lost worker
included) never message anyone twice. `report` adds the chunks' summaries up.

Marketing messages to clients who did not write in the last 24 hours must be approved templates:
this sends the `spring_offer` template (create it at 019sms first), `{{1}}` being the name.

Trigger with conf, e.g. `{"recipients": ["+972501234567", {"to": "972527654321", "name":
"Noa"}], "chunk_size": 1000, "total_rate": 80}`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_wa019.campaign import whatsapp_campaign

with DAG(
    dag_id="wa019_example_campaign",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # One run at a time: two runs would share the sender's rate anyway (the mapped task's limit
    # holds across runs), so the second would only wait.
    max_active_runs=1,
    params={
        "recipients": Param([], type="array", description="numbers, or dicts with 'to' and 'name'"),
        "chunk_size": Param(1000, type="integer", minimum=1, description="recipients per mapped task"),
        "total_rate": Param(80, type="number", minimum=4, description="messages per second, whole run"),
    },
    tags=["example", "whatsapp"],
    doc_md=__doc__,
) as dag:

    @task
    def audience(params: dict | None = None) -> list:
        # Replace with your own query: a list of numbers, or of dicts with "to" and the values
        # the template uses. Duplicates are fine: the split sends to each number once.
        return list((params or {}).get("recipients") or [])

    send = whatsapp_campaign(
        task_id="send_offer",
        recipients=audience(),
        chunk_size="{{ params.chunk_size }}",
        total_rate_per_second="{{ params.total_rate }}",
        max_parallel=4,
        template="spring_offer",
        variables=["{{ name | default('there') }}"],
        # A retry (a refused send, a lost worker) sends only to recipients no try confirmed; a
        # recipient whose delivery is unknown is reported, never sent twice (resend_unknown=False,
        # the campaign's default).
        retries=3,
    )

    @task
    def report(summaries: list) -> dict:
        total = dict.fromkeys(("chunks", "total", "sent", "skipped", "failed", "invalid", "unknown"), 0)
        for summary in summaries:
            total["chunks"] += 1
            for key in ("total", "sent", "invalid", "unknown"):
                total[key] += summary[key]
            for key in ("skipped", "failed"):  # counted by reason in each summary
                total[key] += sum(summary[key].values())
        print(f"campaign: {total}")
        return total

    report(send.output)
