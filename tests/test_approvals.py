"""Human-in-the-loop questions asked and answered on WhatsApp, in real task runs.

The question is sent by ``WhatsAppHITLNotifier`` from a real ``ApprovalOperator`` /
``HITLOperator`` run (``dag.test()``, on the migrated test DB) to the simulator; the simulator's
client answers through the webhook app the plugin gives Airflow, served by uvicorn on 127.0.0.1
on the same DB; the task resumes as after an answer in the UI (Airflow 3.3: out of
``awaiting_input``; 3.1: its trigger, run inline by ``dag.test()``, sees the answer on its next
5 s poll). The answerer runs in a thread while ``dag.test()`` waits in the test's own.
(The same round trip under a real scheduler and api-server is tests/e2e/test_e2e_hitl_approval.py.)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG, Param, task
from airflow_support import FAST, run_dag
from webhook_support import plugin_app, serve

from airflow_provider_wa019.approvals import (
    ApprovalRequest,
    Asked,
    answer_hint,
    question_text,
    read_choice,
    request_key,
)
from airflow_provider_wa019.notifications.hitl import WhatsAppHITLNotifier

hitl = pytest.importorskip("airflow.providers.standard.operators.hitl")

pytestmark = pytest.mark.usefixtures("airflow_db")

ACCOUNT = "972771234567"
APPROVER = "972501112233"
SECOND = "972501112244"
STRANGER = "972509998877"
SECRET = "whsec-approvals-LEAKCHECK"
START = pendulum.datetime(2026, 1, 1, tz="UTC")
UI = "http://airflow.example:8080"
TEMPLATE = {"name": "approval_request", "body": "Approval needed: {{1}}. {{2}} {{3}}"}


# --------------------------------------------------------------------------------------------
# The question and the reading of answers (no I/O)


def test_the_question_numbers_the_options_and_says_how_to_answer():
    text = question_text("Publish the report?", "3 new rows", ["Approve", "Reject"], False, f"{UI}/x")
    assert text == (
        "*Publish the report?*\n\n3 new rows\n\nReply 1 to Approve, 2 to Reject.\n\n"
        f"Or answer in Airflow: {UI}/x"
    )
    assert (
        answer_hint(["A", "B", "C"], True)
        == "Reply with one or more numbers, e.g. 1,2: 1 to A, 2 to B, 3 to C."
    )
    assert question_text("S", None, ["OK"], False, None) == "*S*\n\nReply 1 to OK."


@pytest.mark.parametrize(
    ("text", "multiple", "options", "problem", "attempted"),
    [
        ("1", False, ("Approve",), None, True),
        (" 2 ", False, ("Reject",), None, True),
        ("approve", False, ("Approve",), None, True),
        ("  *REJECT*. ", False, ("Reject",), None, True),
        ("3", False, (), "3 is not an option", True),
        ("0", False, (), "0 is not an option", True),
        ("1, 2", False, (), "choose one option", True),
        ("1 1", False, ("Approve",), None, True),
        ("1,2", True, ("Approve", "Reject"), None, True),
        ("2 and 1", True, ("Approve", "Reject"), None, True),
        ("reject, approve", True, ("Approve", "Reject"), None, True),
        ("yes please", False, (), None, False),
        ("", False, (), None, False),
        (None, False, (), None, False),
        ("approve it", False, (), None, False),
    ],
)
def test_an_answer_is_an_options_number_or_its_text(text, multiple, options, problem, attempted):
    choice = read_choice(text, ["Approve", "Reject"], multiple)
    assert (choice.options, choice.problem, choice.attempted) == (options, problem, attempted)
    assert choice.valid == (attempted and problem is None and bool(options))


def test_option_texts_with_spaces_are_read_whole():
    assert read_choice("send  LATER", ["Send now", "Send later"], False).options == ("Send later",)
    assert read_choice("send now, send later", ["Send now", "Send later"], True).options == (
        "Send now",
        "Send later",
    )


def test_a_request_record_round_trips_and_refuses_foreign_values():
    request = ApprovalRequest(
        ti_id=str(uuid.uuid4()), dag_id="d", run_id="r", task_id="t", map_index=2, try_number=1,
        conn_id="c", asked=(Asked(APPROVER, "m-1", "2026-01-01T00:00:00+00:00"),),
    )  # fmt: skip
    assert ApprovalRequest.from_json(request.to_json()) == request
    assert request.label == "d / t[2]"
    assert request.asked_number(APPROVER)
    assert not request.asked_number(STRANGER)
    assert request.answered("in-1").answered_by == "in-1"
    for bad in ('{"v": 2}', "[]", '{"v": 1, "ti_id": "x"}'):
        with pytest.raises(ValueError, match="not a request record"):
            ApprovalRequest.from_json(bad)
    assert request_key(request.ti_id) == f"wa019_hitl.{request.ti_id}"


# --------------------------------------------------------------------------------------------
# Real runs: the question out, the answer back through the webhook


@pytest.fixture(scope="module")
def webhook_base() -> Iterator[str]:
    with serve(plugin_app()) as url:
        yield url


@pytest.fixture
def channel(make_sim, wa019_env, webhook_base):
    """A simulator whose webhook is the served app, and a fresh receiving connection to it."""
    conn_id = f"wa019_hitl_{uuid.uuid4().hex[:8]}"
    sim = make_sim(
        connection=False,
        senders=(ACCOUNT,),
        templates=[TEMPLATE],
        webhook_url=f"{webhook_base}/wa019/webhook/{conn_id}",
        webhook_secret=SECRET,
    )
    wa019_env(sim, conn_id=conn_id, sender=ACCOUNT, webhook_secret=SECRET, **FAST)
    return sim, conn_id


class Answerer(threading.Thread):
    """Waits for the question to reach ``number`` at the simulator (and to be recorded for the
    webhook), then runs ``script(question)`` (the clients' messages), while ``dag.test()`` waits
    in the test's thread. If that fails, it ends the wait (the task fails) so the test ends."""

    def __init__(
        self, sim: Any, number: str, script: Callable[[dict[str, Any]], None], dag_id: str, kind: str = ""
    ) -> None:
        super().__init__(daemon=True)
        self.sim, self.number, self.script, self.dag_id, self.kind = sim, number, script, dag_id, kind
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 120
            while True:
                asked = [
                    m
                    for m in self.sim.sent
                    if m["to"] == self.number and (m["kind"] == self.kind or not self.kind)
                ]
                # Parked too: on Airflow 3.3 an answer recorded while the task still runs (between
                # the notifier and the park) is lost, and dag.test() would wait for ever.
                if asked and recorded(asked[0]["unique"]) and parked(self.dag_id):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"no question reached {self.number} and was recorded: {self.sim.sent}"
                    )
                time.sleep(0.2)
            self.script(asked[0])
        except BaseException as err:  # reported by the test
            self.error = err
            end_wait(self.dag_id)

    def check(self) -> None:
        self.join(30)
        if self.error is not None:
            raise self.error


def recorded(unique: str) -> bool:
    """The notifier's record of a question holds message ``unique`` (the webhook can see it)."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Variable).where(Variable.key.like("wa019_hitl.%"))).all()
        return any(unique in (row.val or "") for row in rows)


def parked(dag_id: str) -> bool:
    """A task of ``dag_id`` waits in ``awaiting_input`` (Airflow 3.3+). Before 3.3 the task
    defers, and its trigger finds an answer recorded before it started: always True there."""
    import airflow.sdk.exceptions
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if not hasattr(airflow.sdk.exceptions, "TaskAwaitingInput"):
        return True
    with create_session() as session:
        states = session.scalars(select(TaskInstance.state).where(TaskInstance.dag_id == dag_id)).all()
        return "awaiting_input" in states


def end_wait(dag_id: str) -> None:
    """Fail the waiting tasks of ``dag_id`` (so that ``dag.test()`` returns after a test failure)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(TaskInstance)
            .where(TaskInstance.dag_id == dag_id, TaskInstance.state.in_(["deferred", "awaiting_input"]))
            .values(state="failed")
            .execution_options(synchronize_session=False)
        )


def says(sim: Any, number: str, text: str, **kw: Any) -> dict[str, Any]:
    """``number`` writes ``text``; returns the webhook's answer to the (last) delivery."""
    import json

    said = sim.client_says(number, text, **kw)
    delivery = said["deliveries"][-1]
    assert delivery["status"] == 200, delivery
    return {"unique": said["unique"], **json.loads(delivery["answer"])}


def replies_to(sim: Any, number: str, wait: float = 10) -> list[str]:
    """The bodies of the messages sent to ``number`` that quote one of its messages (replies),
    after the webhook's replies (sent after each response) had time to arrive."""
    deadline = time.monotonic() + wait
    found: list[str] = []
    while time.monotonic() < deadline:
        found = [m["body"] for m in sim.sent if m["to"] == number and m.get("replyTo")]
        if found:
            time.sleep(0.3)
            return [m["body"] for m in sim.sent if m["to"] == number and m.get("replyTo")]
        time.sleep(0.1)
    return found


def hitl_detail(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.execute(
            select(
                HITLDetail.chosen_options,
                HITLDetail.responded_by,
                HITLDetail.responded_at,
                TaskInstance.state,
            )
            .join(TaskInstance, TaskInstance.id == HITLDetail.ti_id)
            .where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).one()
    return {"chosen": row[0], "by": row[1], "at": row[2], "state": getattr(row[3], "value", row[3])}


def open_hitl(dag_id: str) -> dict[str, Any]:
    """The HITL detail of ``dag_id``'s newest run (while it waits)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run_id = session.scalar(
            select(DagRun.run_id).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        )
    return hitl_detail(dag_id, run_id, "approve")


#: Airflow 3.1.0's dag.test() cannot run the HITL trigger inline (its in-process supervisor does
#: not answer the trigger's request for the HITL detail: AttributeError in HITLTrigger.run),
#: whatever notifier is used. There the round trip is tested end to end, with a real triggerer
#: (tests/e2e/test_e2e_hitl_approval.py, run on the lowest supported Airflow too by .ci/run).
needs_dag_test_hitl = pytest.mark.skipif(
    not hasattr(__import__("airflow.sdk.exceptions", fromlist=["x"]), "TaskAwaitingInput"),
    reason="this Airflow's dag.test() cannot run a HITL task (3.1: its inline trigger fails); "
    "covered by tests/e2e/test_e2e_hitl_approval.py on this version",
)


def approval_dag(
    dag_id: str, conn_id: str, to: Any = APPROVER, body: str = "1,204 rows", **notifier: Any
) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        approve = hitl.ApprovalOperator(
            task_id="approve",
            subject="Publish the {{ dag_run.conf.get('day', 'daily') }} report?",
            body=body,
            notifiers=[WhatsAppHITLNotifier(to=to, wa019_conn_id=conn_id, base_url=UI, **notifier)],
        )

        @task
        def publish() -> str:
            return "published"

        approve >> publish()
    return dag


@needs_dag_test_hitl
def test_approve_by_quoting_the_question_and_every_refusal_on_the_way(channel):
    sim, conn_id = channel
    sim.open_window(APPROVER)
    sim.open_window(SECOND)
    dag_id = f"wa019_hitl_approve_{uuid.uuid4().hex[:6]}"
    answers: dict[str, Any] = {}

    def script(question: dict[str, Any]) -> None:
        q = question["unique"]
        # Not asked: nothing changes, and the reply gives nothing away.
        answers["stranger"] = says(sim, STRANGER, "1", quote=q)
        answers["stranger_unquoted"] = says(sim, STRANGER, "1")
        # Asked, but no option: refused with how to answer.
        answers["seven"] = says(sim, APPROVER, "7", quote=q)
        # Asked, free text without a quote: an ordinary message (an asset event).
        answers["chat"] = says(sim, APPROVER, "on my way, give me 5 minutes")
        answers["still_open"] = open_hitl(dag_id)
        answers["one"] = says(sim, APPROVER, "1", quote=q)
        answers["late"] = says(
            sim, SECOND, "2", quote=next(m for m in sim.sent if m["to"] == SECOND)["unique"]
        )

    answerer = Answerer(sim, APPROVER, script, dag_id)
    answerer.start()
    result = run_dag(approval_dag(dag_id, conn_id, to=[APPROVER, SECOND]))
    answerer.check()

    assert result.state == "success", result
    assert result.tis["approve"][0] == "success", result
    assert result.tis["publish"][0] == "success", result
    question = next(m for m in sim.sent if m["to"] == APPROVER and not m.get("replyTo"))
    assert question["kind"] == "message"
    assert question["body"].startswith(
        "*Publish the daily report?*\n\n1,204 rows\n\nReply 1 to Approve, 2 to Reject."
    )
    assert (
        f"Or answer in Airflow: {UI}/dags/{dag_id}/runs/{result.run_id}/tasks/approve/required_actions"
        in question["body"]
    )

    assert answers["stranger"]["status"] == "refused"
    assert answers["stranger_unquoted"]["status"] == "recorded"  # an ordinary client message
    assert answers["seven"]["status"] == "refused"
    assert answers["chat"]["status"] == "recorded"
    assert answers["still_open"]["at"] is None
    assert answers["still_open"]["chosen"] is None
    assert answers["one"]["status"] == "answered"
    assert answers["late"]["status"] == "refused"

    detail = hitl_detail(dag_id, result.run_id, "approve")
    assert detail["chosen"] == ["Approve"]
    assert detail["by"] == {"id": "wa019:********2233", "name": "WhatsApp ********2233"}

    assert replies_to(sim, STRANGER) == ["Not recorded: this number was not asked that question."]
    approver_replies = replies_to(sim, APPROVER)
    assert "Not recorded: 7 is not an option. Reply 1 to Approve, 2 to Reject." in approver_replies
    assert f"Recorded: Approve ({dag_id} / approve)" in approver_replies
    assert replies_to(sim, SECOND) == [f"Not recorded: it was already answered ({dag_id} / approve)."]


@needs_dag_test_hitl
def test_a_re_delivered_answer_is_recorded_once(channel):
    sim, conn_id = channel
    sim.open_window(APPROVER)
    dag_id = f"wa019_hitl_dup_{uuid.uuid4().hex[:6]}"
    answers: list[dict[str, Any]] = []

    def script(question: dict[str, Any]) -> None:
        said = sim.client_says(APPROVER, "approve", quote=question["unique"], times=2)
        answers.extend(said["deliveries"])

    answerer = Answerer(sim, APPROVER, script, dag_id)
    answerer.start()
    result = run_dag(approval_dag(dag_id, conn_id))
    answerer.check()
    assert result.tis["publish"][0] == "success", result
    assert [d["answer"] for d in answers] == ['{"status":"answered"}', '{"status":"duplicate"}']
    assert replies_to(sim, APPROVER) == [f"Recorded: Approve ({dag_id} / approve)"]


@needs_dag_test_hitl
def test_reject_unquoted_skips_downstream(channel):
    sim, conn_id = channel
    sim.open_window(APPROVER)
    dag_id = f"wa019_hitl_reject_{uuid.uuid4().hex[:6]}"
    answerer = Answerer(sim, APPROVER, lambda q: says(sim, APPROVER, "2"), dag_id)
    answerer.start()
    result = run_dag(approval_dag(dag_id, conn_id))
    answerer.check()
    assert result.tis["approve"][0] == "success", result
    assert result.tis["publish"][0] == "skipped", result
    assert hitl_detail(dag_id, result.run_id, "approve")["chosen"] == ["Reject"]
    assert replies_to(sim, APPROVER) == [f"Recorded: Reject ({dag_id} / approve)"]


@needs_dag_test_hitl
def test_several_options_and_the_template_fallback_outside_the_window(channel):
    sim, conn_id = channel  # no open window: the approver gets the template
    dag_id = f"wa019_hitl_multi_{uuid.uuid4().hex[:6]}"
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        hitl.HITLOperator(
            task_id="approve",
            subject="Which channels?",
            options=["Email", "SMS", "WhatsApp"],
            multiple=True,
            # A form field: a WhatsApp answer gives it its default (the operator refuses an
            # answer whose fields do not match).
            params={"note": Param("as usual", type="string")},
            notifiers=[
                WhatsAppHITLNotifier(
                    to=["not a number", APPROVER],
                    wa019_conn_id=conn_id,
                    base_url=UI,
                    template="approval_request",
                )
            ],
        )

    def script(question: dict[str, Any]) -> None:
        assert question["kind"] == "template"
        subject, hint, link = question["variables"]
        assert (subject, hint) == (
            "Which channels?",
            "Reply with one or more numbers, e.g. 1,2: 1 to Email, 2 to SMS, 3 to WhatsApp.",
        )
        assert link.startswith(f"{UI}/dags/{dag_id}/runs/")
        says(sim, APPROVER, "3, 1", quote=question["unique"])

    answerer = Answerer(sim, APPROVER, script, dag_id, kind="template")
    answerer.start()
    result = run_dag(dag)
    answerer.check()
    assert result.tis["approve"][0] == "success", result
    assert result.xcom("approve")["chosen_options"] == ["Email", "WhatsApp"]
    assert result.xcom("approve")["params_input"] == {"note": "as usual"}
    assert replies_to(sim, APPROVER) == [f"Recorded: Email, WhatsApp ({dag_id} / approve)"]


def sweep_timeouts() -> None:
    """What the scheduler's loop does on Airflow 3.3 for a question past ``response_timeout``
    (``dag.test()`` runs no scheduler; on 3.1/3.2 the task's trigger, run inline, does it)."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

    runner = SchedulerJobRunner(job=Job())
    if hasattr(runner, "check_awaiting_input_timeouts"):
        runner.check_awaiting_input_timeouts()


@needs_dag_test_hitl
def test_an_answer_after_the_timeout_changes_nothing(channel):
    sim, conn_id = channel
    sim.open_window(APPROVER)
    dag_id = f"wa019_hitl_timeout_{uuid.uuid4().hex[:6]}"
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        approve = hitl.ApprovalOperator(
            task_id="approve",
            subject="Publish?",
            defaults="Reject",
            response_timeout=timedelta(seconds=2),
            notifiers=[WhatsAppHITLNotifier(to=APPROVER, wa019_conn_id=conn_id)],
        )

        @task
        def publish() -> str:
            return "published"

        approve >> publish()
    late: dict[str, Any] = {}

    def script(question: dict[str, Any]) -> None:
        deadline = time.monotonic() + 60
        while open_hitl(dag_id)["at"] is None:  # the timeout's defaults not recorded yet
            if time.monotonic() > deadline:
                raise AssertionError("the question did not time out")
            time.sleep(2.5)
            sweep_timeouts()
        late.update(says(sim, APPROVER, "1", quote=question["unique"]))

    answerer = Answerer(sim, APPROVER, script, dag_id)
    answerer.start()
    result = run_dag(dag)
    answerer.check()
    assert result.tis["publish"][0] == "skipped", result  # the default, Reject
    detail = hitl_detail(dag_id, result.run_id, "approve")
    assert detail["chosen"] == ["Reject"]
    assert detail["by"] is None
    assert late["status"] == "refused"
    assert replies_to(sim, APPROVER) == [
        f"Not recorded: it is no longer waiting for an answer ({dag_id} / approve)."
    ]


def test_a_dag_file_importing_the_notifier_loads_no_http_or_number_library():
    """DAG files import the notifier at every parse: no requests, aiohttp, phonenumbers, nor the
    webhook's server side."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from airflow.providers.common.compat.sdk import BaseNotifier\n"  # what Airflow loads anyway
        "heavy = ['requests', 'aiohttp', 'phonenumbers', 'fastapi', 'airflow_provider_wa019.webhook']\n"
        "before = {m for m in heavy if m in sys.modules}\n"
        "import airflow_provider_wa019.notifications.hitl\n"
        "print([m for m in heavy if m in sys.modules and m not in before])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


@pytest.fixture
def stored_channel(make_sim, webhook_base):
    """As ``channel``, with the connection stored in Airflow's DB (as in a deployment), not in
    an ``AIRFLOW_CONN_*`` variable: the task then reads it through its supervisor."""
    import json

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    conn_id = f"wa019_hitl_db_{uuid.uuid4().hex[:8]}"
    sim = make_sim(
        connection=False,
        senders=(ACCOUNT,),
        webhook_url=f"{webhook_base}/wa019/webhook/{conn_id}",
        webhook_secret=SECRET,
    )
    with create_session() as session:
        session.add(
            Connection(
                conn_id=conn_id,
                conn_type="wa019",
                host=sim.base_url,
                password=sim.token,
                extra=json.dumps({"sender": ACCOUNT, "webhook_secret": SECRET, **FAST}),
            )
        )
    yield sim, conn_id
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == conn_id).delete()


def test_the_question_goes_out_with_the_connection_read_through_the_task_supervisor(stored_channel):
    """Airflow 3.1.0's supervisor answers the HITL task's own request twice; the notifier's
    connection lookup, the next request, must not read the stale answer (it failed with
    "Connection.__init__() got an unexpected keyword argument 'ti_id'")."""
    sim, conn_id = stored_channel
    sim.open_window(APPROVER)
    dag_id = f"wa019_hitl_stored_{uuid.uuid4().hex[:6]}"
    answerer = Answerer(sim, APPROVER, lambda q: says(sim, APPROVER, "1", quote=q["unique"]), dag_id)
    answerer.start()
    result = run_dag(approval_dag(dag_id, conn_id, body="{{ 1200 + 4 }} rows in {{ ti.task_id }}"))
    answerer.check()  # the question reached the approver and was recorded for the webhook
    questions = [m for m in sim.sent if m["to"] == APPROVER and not m.get("replyTo")]
    assert len(questions) == 1
    # The task's rendered body (Airflow 3.1's context["task"] is the copy from before rendering).
    assert "\n\n1204 rows in approve\n\nReply 1 to Approve, 2 to Reject." in questions[0]["body"]
    # The webhook's reply went out too, from the api-server side (the connection read there).
    assert len(replies_to(sim, APPROVER)) == 1
    if hasattr(__import__("airflow.sdk.exceptions", fromlist=["x"]), "TaskAwaitingInput"):
        assert result.tis["publish"][0] == "success", result
        assert replies_to(sim, APPROVER) == [f"Recorded: Approve ({dag_id} / approve)"]
    # (Airflow 3.1.0's dag.test() then fails the task in its inline HITL trigger: see above.)
