"""The API token never leaks: one DAG run through every failure path, then a search for it.

Each task of the DAG takes one path (success, every refusal, every transport fault, an answer that
is not JSON, invalid input, and answers that *echo the token back*, as misconfigured gateways and
debugging pages do), each through its own connection and server, all with the same distinctive
token. The run is ``airflow dags test`` in a subprocess, so the task logs are the real console
output. Afterwards the token must be absent from:

* the task logs (the subprocess's whole output, and any log files under AIRFLOW_HOME),
* the exception texts (they are in those logs; the test checks each path's error is there),
* XCom values and rendered template fields, read from the metadata DB,
* the metadata DB file as a whole (whatever table a leak would land in).

Airflow's own secret masking is not relied on: under ``airflow dags test`` it is not applied.
"""

from __future__ import annotations

import json
import os
import secrets
import traceback
from contextlib import ExitStack
from pathlib import Path

from airflow_support import airflow_dags_test
from test_faults import BrokenServer

from airflow_provider_wa019.exceptions import WhatsAppError
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.testing import WhatsAppSimulator, refused_address, unresponsive_address

TOKEN = f"tok-LEAKCHECK-{secrets.token_hex(6)}"
REVOKED = f"tok-REVOKEDLEAK-{secrets.token_hex(6)}"
CLIENT = "972501234567"
FAST = {"backoff_factor": 0.01, "max_retry_wait": 0.1, "timeout": [0.3, 0.5]}
DAG_ID = "wa019_token_leak"

# task id -> (simulator fault, or a special server) and a text its log must show, proving the
# path really ran and its exception text is part of what was searched.
PATHS: dict[str, tuple[dict | str, str]] = {
    "sent": ({}, "accepted, id"),
    "wrong_token": ("revoked", "reason 3 (wrong API token)"),
    "http_401": ({"status": 401, "body": '{"message": "Unauthorized"}'}, "HTTP 401"),
    "reason_6": ({"reason": 6, "n": 99}, "reason 6 (WhatsApp error, try again)"),
    "rate_limited": ({"status": 429, "retry_after": 1, "n": 99}, "HTTP 429"),
    "server_error": ({"status": 500}, "delivery unknown: 019sms answered HTTP 500"),
    "read_timeout": ({"delay": 1.0}, "no answer from"),
    "html_page": ({"body": "<html><h1>Bad gateway</h1></html>"}, "body is not JSON"),
    "refused": ("refused", "Connection refused"),
    "connect_timeout": ("unresponsive", "could not connect"),
    "cut_body": ("cut_body", "broke off mid-body"),
    "invalid_number": ({}, "invalid to 'call me maybe'"),
    # Answers that quote the request's Authorization header back.
    "echo_in_html": (
        {"status": 400, "body": f"<html><pre>Authorization: Bearer {TOKEN}</pre> rejected</html>"},
        "HTTP 400",
    ),
    "echo_in_reason": (
        {"body": json.dumps({"status": "FAIL", "reason": 2, "message": f"bad request, auth=Bearer {TOKEN}"})},
        "reason 2",
    ),
    "echo_in_success": (
        {"body": json.dumps({"status": "OK", "reason": 1, "unique": "m-1", "debug": f"Bearer {TOKEN}"})},
        "accepted, id m-1",
    ),
}

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    for task_id in {task_ids!r}:
        WhatsAppSendOperator(
            task_id=task_id,
            wa019_conn_id="leak_" + task_id,
            to="call me maybe" if task_id == "invalid_number" else "+972 50-123-4567",
            # Templated fields that read the connection (not its password) and the task context.
            body="{{{{ ti.task_id }}}} via {{{{ conn.leak_" + task_id + ".host }}}}",
            retries=0,
        )
"""


def start_servers(stack: ExitStack) -> dict[str, str]:
    """Start one server per path; return the ``AIRFLOW_CONN_LEAK_<TASK>`` variables for them."""
    env: dict[str, str] = {}
    for task_id, (fault, _) in PATHS.items():
        password = TOKEN
        if fault in ("refused", "unresponsive"):
            manager = refused_address() if fault == "refused" else unresponsive_address()
            base_url = stack.enter_context(manager)
        elif fault == "cut_body":
            base_url = stack.enter_context(BrokenServer("cut_body")).base_url
        else:
            sim = stack.enter_context(WhatsAppSimulator(token=TOKEN))
            sim.open_window(CLIENT)
            if fault == "revoked":
                password = REVOKED
            elif fault:
                fault = dict(fault)
                sim.fail_next(fault.pop("n", 1), **fault)
            base_url = sim.base_url
        conn = {"conn_type": "wa019", "host": base_url, "password": password,
                "extra": {"sender": "972771234567", **FAST}}  # fmt: skip
        env[f"AIRFLOW_CONN_LEAK_{task_id.upper()}"] = json.dumps(conn)
    return env


def test_no_exception_the_hook_raises_carries_the_token(monkeypatch):
    # In-process, the errors themselves: message, repr, attributes, and the whole chain of causes
    # (requests/urllib3 exceptions a traceback would print).
    with ExitStack() as stack:
        for name, value in start_servers(stack).items():
            monkeypatch.setenv(name, value)
        texts: dict[str, str] = {}
        for task_id in PATHS:
            to = "call me maybe" if task_id == "invalid_number" else CLIENT
            with WhatsAppHook(f"leak_{task_id}") as hook:
                try:
                    result = hook.send_message(to, "hello")
                except WhatsAppError as err:
                    texts[task_id] = "".join(traceback.format_exception(err)) + _attributes(err)
                else:
                    texts[task_id] = repr(result) + json.dumps(result.to_dict())
    assert texts["sent"].startswith("SendResult(")
    assert "Traceback" in texts["read_timeout"]
    assert "Bearer ***" in texts["echo_in_html"]  # the echoed token was blanked, the rest kept
    for task_id, text in texts.items():
        for secret in (TOKEN, REVOKED):
            assert secret not in text, f"{task_id}: the token is in the error or result:\n{text}"


def _attributes(err: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts += [repr(err), repr(vars(err))]
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_the_token_appears_nowhere_after_every_failure_path(tmp_path, airflow_db):
    (tmp_path / "leak_dag.py").write_text(DAG_FILE.format(dag_id=DAG_ID, task_ids=list(PATHS)))
    with ExitStack() as stack:
        env = start_servers(stack)
        result = airflow_dags_test(DAG_ID, dags_folder=tmp_path, env=env)

    log = result.output
    assert result.returncode != 0, result  # most paths fail the run
    for task_id, (_, evidence) in PATHS.items():
        assert evidence in log, f"{task_id}: expected {evidence!r} in the task log\n{result}"

    places = {"task logs (console)": log}
    home = Path(os.environ["AIRFLOW_HOME"])
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").exists() else []:
        if path.is_file():
            places[f"log file {path.relative_to(home)}"] = path.read_text(errors="replace")
    places.update(_xcoms_and_rendered_fields())
    places["metadata DB file"] = (home / "airflow.db").read_bytes().decode("latin-1")

    for name, text in places.items():
        for secret in (TOKEN, REVOKED):
            assert secret not in text, f"the token leaked into {name}"
    # The search did look at something: the run's XComs and rendered fields are there.
    assert any(k.startswith("xcom sent") for k in places)
    assert "sent via http://127.0.0.1:" in places["rendered fields sent"]


def _xcoms_and_rendered_fields() -> dict[str, str]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, str] = {}
    with create_session() as session:
        for row in session.scalars(select(XComModel).where(XComModel.dag_id == DAG_ID)):
            found[f"xcom {row.task_id} {row.key}"] = json.dumps(row.value, default=str)
        for row in session.scalars(
            select(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.dag_id == DAG_ID)
        ):
            found[f"rendered fields {row.task_id}"] = json.dumps(row.rendered_fields, default=str)
    return found
