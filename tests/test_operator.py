"""WhatsAppSendOperator in real task runs (``dag.test()``) against the simulator.

Under ``dag.test()`` retries run to the end: a retryable failure with ``retries=1`` ends
``failed`` with try number 2 (it was ``up_for_retry`` in between), a non-retryable one ends
``failed`` with try number 1. What each API answer and fault makes of a task run is the fault
matrix, tests/test_faults.py; the task log's words on them, tests/test_token_leak.py.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_support import run_dag

from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

CLIENT = "972501234567"
STRANGER = "972520000001"
START = pendulum.datetime(2026, 1, 1, tz="UTC")

SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"


@pytest.fixture
def sim(make_sim):
    return make_sim(open_windows=[CLIENT])


def send_dag(dag_id: str, *, retries: int = 1, params: dict | None = None, **op_kwargs) -> DAG:
    op_kwargs.setdefault("to", CLIENT)
    op_kwargs.setdefault("body", "Your order shipped")
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, params=params or {}) as dag:
        WhatsAppSendOperator(
            task_id="send", retries=retries, retry_delay=timedelta(milliseconds=1), **op_kwargs
        )
    return dag


def test_success_returns_the_message_id_and_pushes_the_response(sim, airflow_db):
    result = run_dag(send_dag("op_success"))

    assert result.state == SUCCESS
    assert result.tis["send"] == (SUCCESS, 1)
    [sent] = sim.sent
    assert result.xcom("send") == sent["unique"]
    response = result.xcom("send", key="response")
    assert response["unique"] == sent["unique"]
    assert response["to"] == CLIENT
    assert response["reason"] == 1
    assert response["conversation_time_left_minutes"] == 24 * 60
    pendulum.parse(response["timestamp"])


@pytest.mark.parametrize(
    "op_kwargs",
    [
        {"to": "not a number"},
        {"to": "050-123-4567"},
        {"body": "   "},
        {"body": "x" * 5000},
        {"reply_to": ""},
        {"sender": "12"},
    ],
)
def test_invalid_input_fails_without_retry_or_request(sim, airflow_db, op_kwargs):
    result = run_dag(send_dag("op_invalid", retries=3, **op_kwargs))
    assert result.tis["send"] == (FAILED, 1)
    assert sim.requests == []


def test_missing_token_fails_without_request(sim, wa019_env, airflow_db):
    wa019_env(sim, password=None)
    result = run_dag(send_dag("op_no_token", retries=2))
    assert result.tis["send"] == (FAILED, 1)
    assert sim.requests == []


def test_the_sender_argument_is_the_account_sent_from(sim, airflow_db):
    # Not the connection's sender: an account the API does not know refuses it (reason 2), once.
    result = run_dag(send_dag("op_sender", sender="972779999999"))
    assert result.tis["send"] == (FAILED, 1)
    [request] = sim.requests
    assert request.json["from"] == "972779999999"
    assert request.response_json["reason"] == 2


def test_to_and_body_are_templated_from_params_and_upstream_xcom(sim, airflow_db):
    with DAG("op_templated", schedule=None, start_date=START, params={"customer": "+972 50-123-4567"}) as dag:

        @task
        def order() -> dict:
            return {"id": "A-77", "total": "120 ILS"}

        send = WhatsAppSendOperator(
            task_id="send",
            to="{{ params.customer }}",
            body="Order {{ ti.xcom_pull(task_ids='order')['id'] }} for {{ ti.xcom_pull(task_ids='order')['total'] }}",
        )
        order() >> send

    result = run_dag(dag)

    assert result.state == SUCCESS
    assert sim.requests[-1].json["to"] == CLIENT
    assert sim.requests[-1].json["body"] == "Order A-77 for 120 ILS"


def test_conf_overrides_params(sim, airflow_db):
    dag = send_dag("op_conf", params={"who": CLIENT}, to="{{ params.who }}", body="hi {{ params.who }}")
    sim.open_window("972541112222")
    run_dag(dag, conf={"who": "972541112222"})
    assert sim.requests[-1].json == {"from": sim.sender, "to": "972541112222", "body": "hi 972541112222"}


def test_body_from_a_template_file(sim, airflow_db, tmp_path):
    (tmp_path / "shipped.txt").write_text("Hi {{ params.name }}, order {{ params.order }} is on its way.")
    with DAG(
        "op_template_file",
        schedule=None,
        start_date=START,
        template_searchpath=str(tmp_path),
        params={"name": "Dana", "order": "B-2"},
    ) as dag:
        WhatsAppSendOperator(task_id="send", to=CLIENT, body="shipped.txt")
    assert run_dag(dag).state == SUCCESS
    assert sim.requests[-1].json["body"] == "Hi Dana, order B-2 is on its way."


def test_dynamic_mapping_over_recipients(sim, airflow_db):
    recipients = [CLIENT, "972521234567", STRANGER]
    sim.open_window("972521234567")
    with DAG("op_mapped", schedule=None, start_date=START) as dag:
        WhatsAppSendOperator.partial(task_id="send", body="Heads up").expand(to=recipients)

    result = run_dag(dag)

    assert result.state_of("send", 0) == SUCCESS
    assert result.state_of("send", 1) == SUCCESS
    assert result.state_of("send", 2) == SKIPPED  # first contact: reason 8
    by_to = {m["to"]: m["unique"] for m in sim.sent}
    assert result.xcom("send", map_index=0) == by_to[CLIENT]
    assert result.xcom("send", map_index=1) == by_to["972521234567"]
    assert len(sim.sent) == 2


def test_connection_from_the_metadata_db(sim, airflow_db):
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == "wa019_db").delete()
        session.add(
            Connection(
                conn_id="wa019_db",
                conn_type="wa019",
                host=sim.base_url,
                password=sim.token,
                extra=json.dumps({"sender": sim.sender}),
            )
        )
    result = run_dag(send_dag("op_db_conn", wa019_conn_id="wa019_db"))
    assert result.tis["send"] == (SUCCESS, 1)
    assert result.xcom("send") == sim.sent[-1]["unique"]


def test_connection_in_uri_form(sim, airflow_db, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WA019_URI", sim.connection_uri())
    result = run_dag(send_dag("op_uri_conn", wa019_conn_id="wa019_uri"))
    assert result.tis["send"] == (SUCCESS, 1)


def test_do_xcom_push_false_pushes_nothing(sim, airflow_db):
    result = run_dag(send_dag("op_no_xcom", do_xcom_push=False))
    assert result.tis["send"] == (SUCCESS, 1)
    assert len(sim.sent) == 1
    for key in ("return_value", "response", "sent_as"):
        with pytest.raises(KeyError):
            result.xcom("send", key=key)


def test_the_connection_id_is_a_template_field(sim, make_sim, airflow_db):
    # A second account, chosen per run: the send goes through it, not wa019_default.
    other = make_sim(senders=("972779999999",), connection="wa019_other", open_windows=[CLIENT])
    dag = send_dag(
        "op_templated_conn", params={"account": "wa019_other"}, wa019_conn_id="{{ params.account }}"
    )
    result = run_dag(dag)
    assert result.tis["send"] == (SUCCESS, 1)
    assert [m["from"] for m in other.sent] == ["972779999999"]
    assert sim.sent == []
