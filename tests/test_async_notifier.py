"""WhatsAppNotifier awaited, as Airflow's triggerer runs a deadline alert, against the simulator.

Airflow 3.1 (``DeadlineCallbackTrigger``) and 3.2+ (``CallbackTrigger``) both import the
callback by its path and ``await WhatsAppNotifier(**kwargs, context=...)``, where ``context`` is
the simplified one a deadline gets: ``deadline`` (id, time) and ``dag_run`` (the REST API's
``DAGRunResponse`` as JSON). ``BaseNotifier.__await__`` renders the template fields with it and
awaits ``async_notify``. Here the trigger itself runs (its kwargs stored and read back as the
Trigger row does), so the notifier sees exactly what the triggerer hands it; the simulator
answers over real HTTP on 127.0.0.1. The example DAG's alert runs the same way, from the DAG as
the dag-processor serializes it; and a fresh interpreter shows that a first alert imports
nothing heavy on the event loop. (tests/e2e/test_e2e_deadline.py: a real triggerer.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest
from airflow_support import FAST

from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier
from airflow_provider_wa019.testing import WhatsAppSimulator

ON_CALL = "972501234567"  # wrote in the last 24 h
DEPUTY = "972521234567"  # wrote in the last 24 h
STRANGER = "972520000001"  # never wrote
NOTIFIER = "airflow_provider_wa019.notifications.whatsapp.WhatsAppNotifier"
DEADLINE = pendulum.datetime(2026, 1, 1, 1, 0, tz="UTC")
RUN_ID = "scheduled__2026-01-01T00:00:00+00:00"
SECRET = "tok-ASYNC-NOTIFIER/SECRET+99=="


@pytest.fixture
def sim(monkeypatch):
    templates = [{"name": "ops_alert", "body": "Alert: {{1}} failed in {{2}}."}]
    with WhatsAppSimulator(token=SECRET, templates=templates) as s:
        monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", s.connection_json(**FAST))
        s.open_window(ON_CALL)
        s.open_window(DEPUTY)
        yield s


def deadline_context(dag_id: str = "etl") -> dict[str, Any]:
    """What the scheduler's ``Deadline.handle_miss`` sends along (``get_simple_context``)."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse

    start = DEADLINE.subtract(hours=1)
    run = SimpleNamespace(
        run_id=RUN_ID,
        dag_id=dag_id,
        logical_date=start,
        queued_at=start,
        start_date=start,
        end_date=None,
        duration=None,
        data_interval_start=start,
        data_interval_end=start,
        run_after=start,
        last_scheduling_decision=None,
        run_type="scheduled",
        state="running",
        triggered_by=None,
        triggering_user_name=None,
        conf={},
        note=None,
        dag_versions=[],
        bundle_version=None,
        dag_model=SimpleNamespace(dag_display_name=dag_id),
        partition_key=None,
        partition_date=None,
    )
    return {
        "dag_run": DAGRunResponse.model_validate(run, from_attributes=True).model_dump(mode="json"),
        "deadline": {"id": str(uuid.uuid4()), "deadline_time": DEADLINE},
    }


def run_as_the_triggerer(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the callback trigger of this Airflow on ``kwargs`` (context included), as the
    triggerer would: the kwargs stored in a Trigger row and read back, the trigger rebuilt from
    them and run to its end. Returns the payloads of its events."""
    from airflow.models.trigger import Trigger

    try:  # Airflow 3.2+
        from airflow.triggers.callback import CallbackTrigger as CallbackTriggerClass
    except ImportError:  # Airflow 3.1
        from airflow.triggers.deadline import DeadlineCallbackTrigger as CallbackTriggerClass

    row = Trigger.from_object(CallbackTriggerClass(callback_path=NOTIFIER, callback_kwargs=kwargs))
    trigger = CallbackTriggerClass(**row.kwargs)

    async def events() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(events())


def final_state(events: list[dict[str, Any]]) -> str:
    return str(getattr(events[-1]["state"], "value", events[-1]["state"]))


def logs_of(capsys, caplog) -> str:
    return capsys.readouterr().out + caplog.text


# --- as the triggerer runs it -----------------------------------------------------------------


def test_a_deadline_alert_is_sent_from_the_triggerer(sim):
    events = run_as_the_triggerer(
        {
            "to": [ON_CALL, DEPUTY],
            "body": "Deadline missed: {{ dag_run.dag_id }} run {{ dag_run.dag_run_id }} ({{ deadline.deadline_time }})",
            "context": deadline_context(),
        }
    )
    assert final_state(events) == "success"
    assert [m["to"] for m in sim.sent] == [ON_CALL, DEPUTY]
    assert sim.sent[0]["body"] == f"Deadline missed: etl run {RUN_ID} (2026-01-01 01:00:00+00:00)"
    # One hook, so one kept-alive connection, for both recipients.
    assert len({r.client_port for r in sim.requests}) == 1


def test_the_default_text_of_a_deadline_alert(sim):
    events = run_as_the_triggerer({"to": ON_CALL, "context": deadline_context()})
    assert final_state(events) == "success"
    assert sim.sent[0]["body"] == (
        f"*Airflow*: DAG etl\nRun: {RUN_ID}\nDeadline missed: 2026-01-01 01:00:00+00:00"
    )


def test_a_template_for_recipients_outside_the_window(sim):
    events = run_as_the_triggerer(
        {
            "to": f"{ON_CALL}, {STRANGER}",
            "body": "{{ dag_run.dag_id }} is late",
            "template": "ops_alert",
            "variables": ["{{ dag_run.dag_id }}\nrun", "{{ dag_run.run_type }}"],
            "context": deadline_context(),
        }
    )
    assert final_state(events) == "success"
    by_number = {m["to"]: m for m in sim.sent}
    assert by_number[ON_CALL]["kind"] == "message"
    assert by_number[STRANGER]["kind"] == "template"
    assert by_number[STRANGER]["variables"] == ["etl run", "scheduled"]  # made to fit WhatsApp


@pytest.mark.parametrize(
    ("case", "logged"),
    [
        ("wrong token", "reason 3 (wrong API token)"),
        ("unreachable", "nothing was sent"),
        ("bad template", "WhatsApp notification not sent: "),
        ("no recipient", "'to' rendered to no recipient"),
    ],
)
def test_a_failing_alert_never_raises_into_the_triggerer(sim, monkeypatch, capsys, caplog, case, logged):
    caplog.set_level(logging.INFO)
    kwargs: dict[str, Any] = {"to": [ON_CALL, DEPUTY], "body": "late", "context": deadline_context()}
    if case == "wrong token":
        conn = json.loads(sim.connection_json(**FAST))
        monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", json.dumps({**conn, "password": "revoked"}))
    elif case == "unreachable":
        monkeypatch.setenv(
            "AIRFLOW_CONN_WA019_DEFAULT",
            sim.connection_json(**FAST).replace(sim.base_url, "http://127.0.0.1:1"),
        )
    elif case == "bad template":
        kwargs["body"] = "{{ dag_run.dag_id | no_such_filter }}"
    else:
        # (Not a template rendering to "": Airflow keeps a field's source when it renders empty.)
        kwargs["to"] = " , "
    events = run_as_the_triggerer(kwargs)
    logs = logs_of(capsys, caplog)
    assert final_state(events) == "success", events  # the callback itself did not fail
    assert logged in logs
    assert sim.sent == []
    assert SECRET not in logs
    if case == "wrong token":
        assert len(sim.requests) == 1  # the connection is at fault: the deputy is not tried
        assert "Not trying the other recipients" in logs
        assert "reached 0 of 2 recipient(s)" in logs


# --- awaited directly ---------------------------------------------------------------------------


def test_awaited_with_a_context_as_base_notifier_documents(sim):
    async def alert() -> None:
        await WhatsAppNotifier(to=ON_CALL, body="{{ dag_run.dag_id }} late", context=deadline_context())

    asyncio.run(alert())
    assert sim.sent[0]["body"] == "etl late"


def test_one_notifier_awaited_twice_renders_each_time_from_its_source(sim):
    notifier = WhatsAppNotifier(
        to=ON_CALL, body="{{ dag_run.dag_id }} late", context=deadline_context("first")
    )

    async def twice() -> None:
        await notifier
        notifier.context = deadline_context("second")
        await notifier

    asyncio.run(twice())
    assert [m["body"] for m in sim.sent] == ["first late", "second late"]
    assert notifier.body == "{{ dag_run.dag_id }} late"


def test_the_awaited_and_the_called_notifier_send_the_same_message(sim):
    kwargs = {"to": [ON_CALL, STRANGER], "body": "x" * 5000, "template": "ops_alert", "variables": ["a", "b"]}
    WhatsAppNotifier(**kwargs)(deadline_context())

    async def alert() -> None:
        await WhatsAppNotifier(**kwargs, context=deadline_context())

    asyncio.run(alert())
    first, second = sim.sent[:2], sim.sent[2:]
    keys = ("to", "kind", "body", "variables", "template")
    assert [{k: m.get(k) for k in keys} for m in first] == [{k: m.get(k) for k in keys} for m in second]
    assert len(first[0]["body"]) == 4096  # cut to WhatsApp's limit, on both paths


def test_cancellation_is_not_swallowed(monkeypatch):
    # The triggerer cancels callbacks it stops: that must end the await, not be logged away.
    with WhatsAppSimulator(latency=5.0) as slow:
        monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", slow.connection_json(timeout=[1, 10]))
        slow.open_window(ON_CALL)

        async def alert() -> None:
            task = asyncio.ensure_future(_await(WhatsAppNotifier(to=ON_CALL, body="late", context={})))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(alert())


async def _await(notifier: WhatsAppNotifier) -> None:
    await notifier


def test_airflow_accepts_it_as_an_async_deadline_callback():
    from datetime import timedelta

    from airflow.sdk import DAG
    from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference

    callback = AsyncCallback(WhatsAppNotifier, kwargs={"to": ON_CALL, "body": "{{ dag_run.dag_id }} is late"})
    assert callback.path == NOTIFIER
    alert = DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(minutes=30), callback=callback
    )
    with DAG("wa019_deadline_alert", schedule=None, start_date=DEADLINE, deadline=alert) as dag:
        pass
    assert dag.deadline


# --- the triggerer's event loop ---------------------------------------------------------------

#: Run in a fresh interpreter (here every module is long imported): the callback trigger of this
#: Airflow awaits the notifier on an event loop, as on a triggerer that has not sent a WhatsApp
#: alert yet, and the script prints the modules imported on the loop's own thread meanwhile.
_FIRST_ALERT_SCRIPT = """
import asyncio, json, sys, threading

try:  # Airflow 3.2+
    from airflow.triggers.callback import CallbackTrigger as Trigger
except ImportError:  # Airflow 3.1
    from airflow.triggers.deadline import DeadlineCallbackTrigger as Trigger

loop_thread, on_loop = [], []

class Spy:
    def find_spec(self, name, path=None, target=None):
        if loop_thread and threading.get_ident() == loop_thread[0]:
            on_loop.append(name)

async def main():
    loop_thread.append(threading.get_ident())
    trigger = Trigger(callback_path=sys.argv[1], callback_kwargs=json.loads(sys.argv[2]))
    return [str(getattr(e.payload["state"], "value", e.payload["state"])) async for e in trigger.run()]

sys.meta_path.insert(0, Spy())
states = asyncio.run(main())
print(json.dumps({"states": states, "on_loop": on_loop}))
"""


def test_the_first_alert_imports_aiohttp_and_phonenumbers_off_the_triggerers_event_loop(sim):
    """The triggerer runs every trigger on one event loop and warns when it is blocked for more
    than 0.2 s ("likely caused by a badly-written trigger"). Importing aiohttp, phonenumbers and
    the async hook takes 0.3-0.7 s, seen in a real triggerer's log: the notifier imports them on
    a worker thread."""
    import subprocess
    import sys

    kwargs = {"to": ON_CALL, "body": "{{ dag_run.dag_id }} late", "context": {"dag_run": {"dag_id": "etl"}}}
    proc = subprocess.run(
        [sys.executable, "-c", _FIRST_ALERT_SCRIPT, NOTIFIER, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["states"] == ["running", "success"], proc.stdout[-3000:]
    assert [m["body"] for m in sim.sent] == ["etl late"]
    heavy = ("aiohttp", "phonenumbers", "airflow_provider_wa019.hooks")
    blocking = [
        name
        for name in result["on_loop"]
        # A region's metadata (a few KB, ~1 ms) loads when its first number is parsed, in the send.
        if name.startswith(heavy) and not name.startswith("phonenumbers.data.region_")
    ]
    assert blocking == [], f"imported on the event loop's thread: {blocking}"


# --- the example DAG ----------------------------------------------------------------------------

EXAMPLE_DEADLINE = Path(__file__).resolve().parent.parent / "example_dags" / "example_whatsapp_deadline.py"


def _find(obj: Any, key: str) -> Any:
    """The first dict in ``obj`` (nested dicts and lists) that has ``key``."""
    if isinstance(obj, dict):
        if key in obj:
            return obj
        obj = list(obj.values())
    if isinstance(obj, list):
        for item in obj:
            if (found := _find(item, key)) is not None:
                return found
    return None


def stored_deadline_alert() -> dict[str, Any]:
    """The example's deadline alert as the dag-processor stores it: the file parsed into a DagBag
    (no import error), the DAG serialized, read back as JSON (the layout differs by release)."""
    try:  # Airflow 3.2+
        from airflow.dag_processing.dagbag import DagBag
        from airflow.serialization.serialized_objects import DagSerialization as Serializer
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag
        from airflow.serialization.serialized_objects import SerializedDAG as Serializer

    bag = DagBag(dag_folder=str(EXAMPLE_DEADLINE))
    assert bag.import_errors == {}
    serialized = json.loads(json.dumps(Serializer.to_dict(bag.dags["wa019_example_deadline"])))
    (alert,) = serialized["dag"]["deadline"]
    return alert


def _interval_seconds(alert: dict[str, Any]) -> float:
    interval = _find(alert, "interval")["interval"]
    return float(interval["__data__"] if isinstance(interval, dict) else interval)


def test_the_example_deadline_dag_pages_on_call_naming_the_late_run(sim, monkeypatch):
    monkeypatch.delenv("WA019_EXAMPLE_REPORT_DUE_SECONDS", raising=False)
    alert = stored_deadline_alert()
    assert _find(alert, "reference_type")["reference_type"] == "DagRunQueuedAtDeadline"
    assert _interval_seconds(alert) == 30 * 60
    callback = _find(alert, "path")
    assert callback["path"] == NOTIFIER

    # What the triggerer then runs: the stored kwargs plus the context the scheduler adds.
    events = run_as_the_triggerer(
        {**callback["kwargs"], "context": deadline_context("wa019_example_deadline")}
    )
    assert final_state(events) == "success"
    assert [m["to"] for m in sim.sent] == [ON_CALL]  # the example's "+972 50-123-4567"
    assert sim.sent[0]["body"] == (
        f"*Sales report late*: DAG wa019_example_deadline, run {RUN_ID} missed its deadline "
        "(2026-01-01 01:00:00+00:00); the run is running."
    )


def test_the_example_deadline_can_be_tried_in_seconds(monkeypatch):
    monkeypatch.setenv("WA019_EXAMPLE_REPORT_DUE_SECONDS", "3")
    assert _interval_seconds(stored_deadline_alert()) == 3
