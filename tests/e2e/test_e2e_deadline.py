"""A deadline alert in a real deployment: the run is late, the triggerer sends the WhatsApp alert.

``wa019_example_deadline`` has a ``DeadlineAlert`` from its run's queued time with an
``AsyncCallback(WhatsAppNotifier, ...)``; the deployment sets its interval to
``REPORT_DUE_SECONDS`` and the test asks the report to take ``BUILD_SECONDS``. What only a real
deployment shows: the scheduler marks the deadline missed while the run goes on, the
``airflow triggerer`` process imports the notifier by its path, builds it with the kwargs the
dag-processor serialized plus the context the scheduler stored, and awaits it; the async hook
reads the connection from the metadata DB (over the triggerer's access to it) and the message
reaches the simulator once, with the run named in it, and no log shows the token.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from e2e_deployment import ON_CALL, REPORT_DUE_SECONDS, Deployment, dumps, tail, wait_for

DEADLINE_DAG = "wa019_example_deadline"
#: Well beyond the deadline: the run is still going when the scheduler, looping every second or
#: faster, finds the deadline missed (a run that succeeds first has its deadline removed, and
#: nothing is sent). The alert usually comes later than the run's end anyway (below).
BUILD_SECONDS = 10
PARSE_TIMEOUT = 120.0
#: Bounds for the alert and the run. The alert: the deadline, a scheduler loop, a triggerer loop,
#: and the triggerer's first connection lookup, for which Airflow 3.3.2 builds its in-process
#: execution API (10 s on 2 idle cores, 30 s on busy ones, seen in the triggerer's log as
#: "Heartbeat recovered after 31.98 seconds"). The run: a task process costs a few seconds on 2
#: busy cores, plus BUILD_SECONDS.
ALERT_TIMEOUT = 180.0
RUN_TIMEOUT = 180.0

SENT_LINE = re.compile(r"WhatsApp notification sent to (\S+) as message, id (\S+)")


def _alerts_for(dep: Deployment, run_id: str, since: int) -> list[dict[str, Any]]:
    return [m for m in dep.sim.sent()[since:] if run_id in (m.get("body") or "")]


def _log_files(dep: Deployment) -> list[Path]:
    """Every log Airflow wrote: task logs, and each component's (simulator's excepted)."""
    files = [p for p in (dep.airflow_home / "logs").rglob("*") if p.is_file()]
    files += [p for p in dep.log_dir.glob("*.log") if p.name != "simulator.log"]
    return files


def test_a_missed_deadline_sends_one_whatsapp_alert_from_the_triggerer(
    deployment: Deployment, wa019_conn: dict[str, object], sim_token: str
) -> None:
    dep = deployment
    triggerer_log = dep.log_dir / "triggerer.log"
    dep.api.wait_parsed(DEADLINE_DAG, timeout=PARSE_TIMEOUT, alive=dep.ensure_running)
    dep.api.unpause(DEADLINE_DAG)
    sent_before = len(dep.sim.sent())
    run_id = f"e2e__deadline__{uuid.uuid4().hex[:8]}"

    dep.api.trigger(DEADLINE_DAG, run_id, conf={"build_seconds": BUILD_SECONDS})

    def details() -> str:
        return (
            f"run: {dumps(dep.api.dag_run(DEADLINE_DAG, run_id))}\n"
            f"task states: {dep.api.task_states(DEADLINE_DAG, run_id)}\n"
            f"simulator recorded: {dumps(dep.sim.sent()[sent_before:])}\n"
            f"triggerer log ({triggerer_log}):\n{tail(triggerer_log, 40)}\n"
            f"logs: {dep.log_hint()}"
        )

    wait_for(
        lambda: _alerts_for(dep, run_id, sent_before) or None,
        timeout=ALERT_TIMEOUT,
        interval=0.5,
        what=f"the deadline alert of {DEADLINE_DAG}/{run_id} at the simulator",
        alive=dep.ensure_running,
        on_timeout=details,
    )
    run = dep.api.wait_for_run(DEADLINE_DAG, run_id, timeout=RUN_TIMEOUT, alive=dep.ensure_running)
    assert run["state"] == "success", f"the alert must not change the run's state\n{details()}"

    # The alert: the on-call number (the example's "+972 50-123-4567"), the DAG, the run, and the
    # deadline the scheduler computed (queued_at + the interval), while the run was still going.
    (alert,) = _alerts_for(dep, run_id, sent_before)
    assert alert["to"] == ON_CALL[0], dumps(alert)
    assert alert["kind"] == "message", dumps(alert)
    match = re.fullmatch(
        rf"\*Sales report late\*: DAG {DEADLINE_DAG}, run {re.escape(run_id)} missed its deadline "
        r"\((?P<deadline>[^)]+)\); the run is running\.",
        alert["body"],
    )
    assert match, f"unexpected alert text: {alert['body']!r}"
    deadline = datetime.fromisoformat(match["deadline"])
    assert deadline == datetime.fromisoformat(run["queued_at"]) + timedelta(seconds=REPORT_DUE_SECONDS), (
        f"deadline {deadline} is not queued_at {run['queued_at']} + {REPORT_DUE_SECONDS} s"
    )

    # Sent by the triggerer: its log has the notifier's line with the simulator's message id, and
    # no other process (scheduler, task processes) sent it.
    def sent_line() -> list[str] | None:
        found = [m for m in SENT_LINE.finditer(triggerer_log.read_text(errors="replace"))]
        return [m[2] for m in found if m[2] == alert["unique"]] or None

    assert wait_for(
        sent_line,
        timeout=30,
        what=f"the triggerer's log line for message {alert['unique']}",
        on_timeout=details,
    ) == [alert["unique"]]
    elsewhere = [
        str(p)
        for p in _log_files(dep)
        if p != triggerer_log and alert["unique"] in p.read_text(errors="replace")
    ]
    assert not elsewhere, f"the alert's message id is in other logs too: {elsewhere}"

    # Once: nothing else went to the simulator for this run, and the token is in no log.
    assert _alerts_for(dep, run_id, sent_before) == [alert]
    leaks = [str(p) for p in _log_files(dep) if sim_token in p.read_text(errors="replace")]
    assert not leaks, f"the connection's token appears in these Airflow logs: {leaks}"
