"""Two-way WhatsApp in a real deployment: a client's message reaches the api-server's webhook,
the asset event triggers the example DAG through the scheduler, and the DAG's reply quotes it.

The simulator plays the platform: ``client_says`` opens the client's window and POSTs the
documented payload to the webhook URL, as the platform would, and records the answer.
"""

from __future__ import annotations

import time
from typing import Any

from e2e_deployment import CUSTOMER, Deployment, dumps, wait_for

INBOUND_DAG = "wa019_example_inbound"
RUN_TIMEOUT = 180.0
PARSE_TIMEOUT = 120.0


def _runs(dep: Deployment) -> list[dict[str, Any]]:
    return dep.api.dag_runs(INBOUND_DAG)


def test_a_client_message_runs_the_inbound_dag_once_and_the_reply_quotes_it(
    deployment: Deployment, wa019_conn: dict[str, object], webhook_secret: str
) -> None:
    dep = deployment
    dep.api.wait_parsed(INBOUND_DAG, timeout=PARSE_TIMEOUT, alive=dep.ensure_running)
    dep.api.unpause(INBOUND_DAG)
    # Exactly the URL a user configures at the platform (README, "Receiving messages").
    dep.sim.set_webhook(dep.webhook_url(webhook_secret))
    runs_before = len(_runs(dep))

    # A forged delivery (wrong secret) is refused and records nothing.
    forged = dep.sim.client_says(CUSTOMER, "forged", secret="not-the-secret")
    assert [d["status"] for d in forged["deliveries"]] == [401], dumps(forged)

    # The real message, delivered twice (the platform's retries do that): recorded once.
    said = dep.sim.client_says(CUSTOMER, "Where is order A-7?", sender_name="Dana", times=2)
    assert [d["status"] for d in said["deliveries"]] == [200, 200], dumps(said)
    unique = said["unique"]

    def reply() -> dict[str, Any] | None:
        return next((m for m in dep.sim.sent() if m.get("replyTo") == unique), None)

    sent = wait_for(
        reply,
        timeout=RUN_TIMEOUT,
        interval=1.0,
        what=f"{INBOUND_DAG} to reply to the client's message {unique}",
        alive=dep.ensure_running,
        on_timeout=lambda: f"runs: {dumps(_runs(dep)[runs_before:])}; logs: {dep.log_hint()}",
    )
    assert sent["to"] == CUSTOMER
    assert sent["kind"] == "message"
    assert "Where is order A-7?" in sent["body"]
    assert "Dana" in sent["body"]

    def finished() -> list[dict[str, Any]] | None:
        new = _runs(dep)[runs_before:]
        return new if new and all(r["state"] in ("success", "failed") for r in new) else None

    new_runs = wait_for(finished, timeout=RUN_TIMEOUT, interval=1.0, what="the inbound run to finish")
    # Give the scheduler time to create a run for a second event, were there one.
    time.sleep(5)
    new_runs = _runs(dep)[runs_before:]
    assert len(new_runs) == 1, dumps(new_runs)  # neither the forged nor the duplicate ran the DAG
    [run] = new_runs
    assert run["state"] == "success", dumps(run)
    assert run["run_type"] == "asset_triggered"
    replies = [m for m in dep.sim.sent() if m.get("replyTo") in (unique, forged["unique"])]
    assert [m["replyTo"] for m in replies] == [unique]
    states = dep.api.task_states(INBOUND_DAG, run["dag_run_id"])
    assert states == {"show": "success", "answer": "success"}, states
    shown = dep.api.xcom(INBOUND_DAG, run["dag_run_id"], "show")
    assert shown == [{"unique": unique, "type": "text", "body": "Where is order A-7?"}]


def test_the_webhook_secret_never_reaches_a_log(
    deployment: Deployment, wa019_conn: dict[str, object], webhook_secret: str
) -> None:
    dep = deployment
    dep.sim.set_webhook(dep.webhook_url(webhook_secret))
    dep.sim.client_says(CUSTOMER, "ping")
    files = [p for p in (dep.airflow_home / "logs").rglob("*") if p.is_file()]
    files += [p for p in dep.log_dir.glob("*.log") if p.name != "simulator.log"]
    leaks = [str(p) for p in files if webhook_secret in p.read_text(errors="replace")]
    assert not leaks, f"the webhook secret is in {leaks}"
