"""WhatsAppNotifier in real task and DAG runs (``dag.test()``) against the simulator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pendulum
import pytest
import structlog
from airflow import __version__ as airflow_version
from airflow.sdk import DAG, task
from airflow_support import FAST, callback_context, run_dag

from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier, send_whatsapp_notification
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

ON_CALL = "972501234567"  # wrote in the last 24 h
DEPUTY = "972521234567"  # wrote in the last 24 h
STRANGER = "972520000001"  # never wrote
START = pendulum.datetime(2026, 1, 1, tz="UTC")
SUCCESS, FAILED = "success", "failed"
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"

# Before Airflow 3.3, dag.test() runs failure callbacks without context["exception"]: the task
# runner sets it only in a deployment's task process (task_runner.main(), seen in 3.1.0). So on
# the lowest supported Airflow these in-process tests cannot see the error text; deployments can.
needs_exception_in_dag_test = pytest.mark.skipif(
    tuple(int(p) for p in airflow_version.split(".")[:2]) < (3, 3),
    reason=f"Airflow {airflow_version}: dag.test() passes no 'exception' to failure callbacks",
)


@pytest.fixture
def sim(make_sim):
    return make_sim(
        templates=[{"name": "ops_alert", "body": "Alert: {{1}} failed in {{2}}."}],
        open_windows=[ON_CALL, DEPUTY],
    )


def failing_dag(dag_id: str, notifier: WhatsAppNotifier) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:

        @task(on_failure_callback=notifier, retries=0)
        def load() -> None:
            raise ValueError("orders_raw is empty")

        load()

    return dag


def succeeding_dag(dag_id: str, notifier: WhatsAppNotifier) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:

        @task(on_success_callback=notifier)
        def publish() -> int:
            return 42

        publish()

    return dag


@needs_exception_in_dag_test
def test_notifies_on_a_real_task_failure(sim, airflow_db):
    notifier = send_whatsapp_notification(
        to=ON_CALL,
        body="{{ dag.dag_id }}.{{ ti.task_id }} failed (try {{ ti.try_number }}): {{ exception }}",
    )

    result = run_dag(failing_dag("notify_on_failure", notifier))

    assert result.tis["load"] == (FAILED, 1)
    [sent] = sim.sent
    assert sent["kind"] == "message"
    assert sent["to"] == ON_CALL
    assert sent["body"] == "notify_on_failure.load failed (try 1): orders_raw is empty"


def test_notifies_on_success_with_the_default_text(sim, airflow_db):
    result = run_dag(succeeding_dag("notify_on_success", WhatsAppNotifier(to=ON_CALL)))

    assert result.tis["publish"] == (SUCCESS, 1)
    [sent] = sim.sent
    body = sent["body"]
    assert "task publish of DAG notify_on_success is *success*" in body
    assert f"Run: {result.run_id} (try 1)" in body
    assert f"/dags/notify_on_success/runs/{result.run_id.replace(':', '%3A').replace('+', '%2B')}" in body
    assert "Error" not in body


@needs_exception_in_dag_test
def test_default_text_on_failure_names_the_error(sim, airflow_db):
    result = run_dag(failing_dag("notify_default_failure", WhatsAppNotifier(to=ON_CALL)))

    assert result.tis["load"] == (FAILED, 1)
    body = sim.sent[0]["body"]
    assert "task load of DAG notify_default_failure is *failed*" in body
    assert "Error: orders_raw is empty" in body


@pytest.mark.parametrize(
    "to",
    [[ON_CALL, DEPUTY], f"{ON_CALL}, {DEPUTY}", "{{ params.team }}"],
    ids=["list", "comma-separated", "rendered-list"],
)
def test_several_recipients_share_one_session(sim, airflow_db, to):
    with DAG("notify_team", schedule=None, start_date=START, params={"team": [ON_CALL, DEPUTY]}) as dag:

        @task(on_success_callback=send_whatsapp_notification(to=to, body="{{ ti.task_id }} done"))
        def publish() -> None:
            pass

        publish()

    run_dag(dag)

    assert [(m["to"], m["body"]) for m in sim.sent] == [(ON_CALL, "publish done"), (DEPUTY, "publish done")]
    assert len({r.client_port for r in sim.requests}) == 1  # one kept-alive connection


def test_template_for_recipients_outside_the_window(sim, airflow_db):
    notifier = send_whatsapp_notification(
        to=[ON_CALL, STRANGER],
        body="{{ dag.dag_id }}.{{ ti.task_id }} failed",
        template="ops_alert",
        variables=["{{ dag.dag_id }}.{{ ti.task_id }}", "{{ run_id }}"],
    )

    result = run_dag(failing_dag("notify_with_template", notifier))

    message, template = sim.sent
    assert (message["to"], message["kind"], message["body"]) == (
        ON_CALL,
        "message",
        "notify_with_template.load failed",
    )
    assert (template["to"], template["kind"]) == (STRANGER, "template")
    assert template["body"] == f"Alert: notify_with_template.load failed in {result.run_id}."
    # The stranger's free-form attempt was refused (8) once, then the template went out.
    assert [r.response_json["reason"] for r in sim.requests] == [1, 8, 1]


def test_template_only(sim, airflow_db):
    notifier = WhatsAppNotifier(
        to=STRANGER, template="ops_alert", variables=["{{ ti.task_id }}", "{{ dag.dag_id }}"]
    )
    run_dag(failing_dag("notify_template_only", notifier))
    [sent] = sim.sent
    assert sent["body"] == "Alert: load failed in notify_template_only."
    assert [r.path for r in sim.requests] == ["/api/whatsapp/sendTemplate"]


def test_one_notifier_shared_by_tasks_renders_each_tasks_own_text(sim, airflow_db):
    notifier = send_whatsapp_notification(to=ON_CALL, body="{{ ti.task_id }} finished")
    with DAG(
        "notify_shared", schedule=None, start_date=START, default_args={"on_success_callback": notifier}
    ) as dag:

        @task
        def first() -> None:
            pass

        @task
        def second() -> None:
            pass

        first() >> second()

    run_dag(dag)

    assert [m["body"] for m in sim.sent] == ["first finished", "second finished"]


def test_dag_level_callbacks(sim, airflow_db):
    # dag.test() on Airflow 3.3.2 hands DAG callbacks a SerializedDAG without a Jinja
    # environment; the notifier renders with Airflow's default one instead of failing.
    with DAG(
        "notify_dag_level",
        schedule=None,
        start_date=START,
        on_failure_callback=send_whatsapp_notification(
            to=ON_CALL, body="{{ dag.dag_id }} {{ run_id }} failed"
        ),
        on_success_callback=send_whatsapp_notification(to=DEPUTY),
    ) as dag:

        @task
        def load(**context) -> None:
            if context["params"]["fail"]:
                raise ValueError("boom")

        load()
    dag.params = {"fail": False}

    failed = run_dag(dag, conf={"fail": True})
    ok = run_dag(dag, conf={"fail": False})

    assert (failed.state, ok.state) == (FAILED, SUCCESS)
    alert, success = sim.sent
    assert (alert["to"], alert["body"]) == (ON_CALL, f"notify_dag_level {failed.run_id} failed")
    assert success["to"] == DEPUTY
    # Airflow gives DAG callbacks a ``ti`` too (the run's last task instance).
    assert "DAG notify_dag_level" in success["body"]
    assert f"Run: {ok.run_id}" in success["body"]


# (how the notification fails, the task's callback kind)
BROKEN = {
    "wrong token": {"password": "revoked"},
    "no token": {"password": None},
    "HTTP 500": {"fault": {"status": 500}},
    "reason 6 throughout": {"fault": {"reason": 6, "n": 99}},
    "API unreachable": {"host": "http://127.0.0.1:9"},
    "bad Jinja": {"body": "{{ no_such_name.attr }}"},
    "invalid body": {"body": "   "},
}


@pytest.mark.parametrize("outcome", [SUCCESS, FAILED])
@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_failing_notification_never_changes_the_task_state(sim, airflow_db, wa019_env, case, outcome):
    broken = dict(BROKEN[case])
    wa019_env(sim, **{k: broken.pop(k) for k in ("password", "host") if k in broken}, **FAST)
    fault = broken.pop("fault", None)
    if fault:
        fault = dict(fault)
        sim.fail_next(fault.pop("n", 1), **fault)
    notifier = WhatsAppNotifier(to=ON_CALL, body=broken.get("body", "{{ ti.task_id }}"))
    make = succeeding_dag if outcome == SUCCESS else failing_dag
    task_id = "publish" if outcome == SUCCESS else "load"

    result = run_dag(make(f"notify_broken_{outcome}_{abs(hash(case))}", notifier))

    assert result.tis[task_id] == (outcome, 1)
    assert result.state == outcome
    assert sim.sent == []


def test_downstream_tasks_run_after_a_failed_notification(sim, airflow_db, wa019_env):
    wa019_env(sim, password="revoked", **FAST)
    with DAG("notify_then_continue", schedule=None, start_date=START) as dag:
        first = WhatsAppSendOperator(
            task_id="noop_send",
            to=ON_CALL,
            body="x",
            wa019_conn_id="wa019_ok",
            on_success_callback=WhatsAppNotifier(to=ON_CALL, body="sent"),
        )

        @task
        def after() -> str:
            return "ran"

        first >> after()
    wa019_env(sim, conn_id="wa019_ok", **FAST)

    result = run_dag(dag)

    assert result.tis["noop_send"] == (SUCCESS, 1)
    assert result.xcom("after") == "ran"
    assert [m["body"] for m in sim.sent] == ["x"]  # the operator's message, not the notification


# --- the notifier called directly: logging, deadline-style invocation ------------------------


def test_called_like_a_deadline_alert_callback(sim):
    # Airflow's own code path for SyncCallback(WhatsAppNotifier, kwargs=...): it builds the
    # notifier with the kwargs plus ``context`` and calls it with the context.
    supervisor = pytest.importorskip(
        "airflow.sdk.execution_time.callback_supervisor", reason="no callback supervisor in this Airflow"
    )
    execute_callback = supervisor.execute_callback

    ok, error = execute_callback(
        "airflow_provider_wa019.notifications.whatsapp.WhatsAppNotifier",
        {
            "to": ON_CALL,
            "body": "deadline missed for {{ dag_run.dag_id }}",
            "context": {"dag_run": {"dag_id": "etl"}},
        },
        None,
        None,
        structlog.get_logger("test"),
    )

    assert (ok, error) == (True, None)
    assert sim.sent[0]["body"] == "deadline missed for etl"


def test_default_text_renders_without_a_task_instance(sim):
    WhatsAppNotifier(to=ON_CALL)({"dag": DAG("nightly", schedule=None, start_date=START), "run_id": "r1"})
    assert sim.sent[0]["body"] == "*Airflow*: DAG nightly\nRun: r1"
    # What a deadline alert gets (Airflow 3.3: a DAG run as a dict, and the deadline).
    deadline_context = {
        "dag_run": {"dag_id": "etl", "run_id": "scheduled__1"},
        "deadline": {"id": "d1", "deadline_time": "2026-01-01T01:00:00+00:00"},
    }
    WhatsAppNotifier(to=ON_CALL)(deadline_context)
    assert sim.sent[1]["body"] == (
        "*Airflow*: DAG etl\nRun: scheduled__1\nDeadline missed: 2026-01-01T01:00:00+00:00"
    )


def test_long_text_is_cut_to_whatsapps_limit(sim):
    WhatsAppNotifier(to=ON_CALL, body="{{ 'x' * 5000 }}")(callback_context())
    body = sim.sent[0]["body"]
    assert len(body) == 4096
    assert body.endswith("…")


def test_bad_to_is_refused_when_the_dag_is_written():
    with pytest.raises(TypeError, match="to must be"):
        WhatsAppNotifier(to=[])
    with pytest.raises(TypeError, match="to must be"):
        WhatsAppNotifier(to=972501234567)


# --- example DAG ------------------------------------------------------------------------------


@needs_exception_in_dag_test
def test_example_notifier_dag_runs_against_the_simulator(sim, airflow_db):
    spec = importlib.util.spec_from_file_location(
        "wa019_example_notifier", EXAMPLE_DAGS / "example_whatsapp_notifier.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    failed = run_dag(module.dag)  # param fail=True: load fails, publish never runs
    task_alert, dag_alert = sim.sent
    assert failed.tis["load"] == (FAILED, 1)
    assert task_alert["body"].startswith("*wa019_example_notifier.load failed* (try 1)")
    assert "Error: source table orders_raw is empty" in task_alert["body"]
    assert dag_alert["body"] == f"DAG wa019_example_notifier, run {failed.run_id}: failed."

    ok = run_dag(module.dag, conf={"fail": False})
    assert ok.state == SUCCESS
    assert len(sim.sent) == 3
    assert "task publish of DAG wa019_example_notifier is *success*" in sim.sent[-1]["body"]


def test_registered_as_a_notifier_in_provider_info():
    from airflow.providers_manager import ProvidersManager

    from airflow_provider_wa019.get_provider_info import get_provider_info

    dotted = "airflow_provider_wa019.notifications.whatsapp.WhatsAppNotifier"
    hitl = "airflow_provider_wa019.notifications.hitl.WhatsAppHITLNotifier"
    assert get_provider_info()["notifications"] == [dotted, hitl]
    assert dotted in ProvidersManager().notification
    assert hitl in ProvidersManager().notification
    assert send_whatsapp_notification is WhatsAppNotifier
