"""WhatsAppBulkSendOperator and its engine (``airflow_provider_wa019.bulk``).

Operator tests run real DAGs (``dag.test()``) against the simulator; what was sent is read from
the simulator's request log, never from the code under test. Under ``dag.test()`` retries run to
the end: a retryable failure with ``retries=1`` ends ``failed`` with try number 2, a failure
without retry ends ``failed`` with try number 1.

The progress ledger lives in Airflow Variables, which ``dag.test()`` keeps in the test metadata
DB across tries and clears, like a real deployment does, on every supported Airflow (the suite
also runs on the lowest supported version). tests/test_ledger.py clears tasks the way users and
Airflow do (REST API, ``clear_on_success``, mark-success, task state discarded). What the bulk
task's log shows (progress lines, masked recipients) is checked in tests/test_token_leak.py's
one ``airflow dags test`` run.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk import DAG, task
from airflow_support import run_dag
from ledger_support import run_cleared_task

from airflow_provider_wa019.api import SEND_PATH, TEMPLATE_PATH
from airflow_provider_wa019.bulk import (
    BulkReport,
    BulkSender,
    MemoryLedgerStore,
    Outcome,
    ProgressLedger,
    format_progress,
    parse_recipients,
    scrub,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator
from airflow_provider_wa019.testing import DEFAULT_SENDER, WhatsAppSimulator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"
RETRY_FAST = {"retry_delay": timedelta(milliseconds=1)}
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    # A read timeout long enough for the answers some tests delay by 2 s.
    return make_sim(timeout=[0.3, 3])


def numbers(count: int, prefix: str = "97250") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


def open_windows(sim: WhatsAppSimulator, nums: list[str]) -> list[str]:
    for number in nums:
        sim.open_window(number)
    return nums


def sends_per_number(sim: WhatsAppSimulator, path: str = SEND_PATH) -> Counter[str]:
    return Counter(r.json["to"] for r in sim.requests_to(path))


def bulk_dag(dag_id: str, *, retries: int = 1, **op_kwargs) -> DAG:
    op_kwargs.setdefault("body", "Hello {{ to }}")
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        WhatsAppBulkSendOperator(task_id="bulk", retries=retries, **RETRY_FAST, **op_kwargs)
    return dag


# --------------------------------------------------------------------------------------------
# Outcomes and task states
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason6_answers", "state", "try_number", "sent", "failed"),
    [
        # Reason 6 on every try: each try finishes the others, then asks for a retry; the last fails.
        (6, FAILED, 2, 2, {"6": 1}),
        # Reason 6 only in the first try: the retry delivers it and the task succeeds.
        (3, SUCCESS, 2, 3, {}),
    ],
    ids=["reason 6 persists", "reason 6 clears"],
)
def test_mixed_recipients_give_the_summary_and_task_state(
    sim, airflow_db, reason6_answers, state, try_number, sent, failed
):
    flaky, ok1, ok2, closed = open_windows(sim, numbers(4))
    sim.open_window(closed, at=sim.now().subtract(hours=25))  # window expired: reason 7
    # The hook tries a message 3 times on reason 6: 3 answers per try.
    sim.fail_next(reason6_answers, reason=6, to=flaky)
    recipients = [
        {"to": flaky, "name": "Flaky"},
        {"to": "+" + ok1, "name": "Dana"},
        {"to": ok2, "name": "Noa"},
        "12345",  # not a possible number: invalid, never sent
        {"name": "no number"},  # invalid
        {"to": closed, "name": "Late"},
    ]
    dag = bulk_dag("bulk_mixed", recipients=recipients, body="Hi {{ name }}", max_failure_ratio=0.5)

    result = run_dag(dag)

    assert result.tis["bulk"] == (state, try_number)
    assert result.xcom("bulk") == {
        "total": 6,
        "sent": sent,
        "skipped": {"7": 1},
        "failed": failed,
        "invalid": 2,
        "unknown": 0,
    }
    results = result.xcom("bulk", key="results")
    assert list(results) == [flaky, ok1, ok2, "12345", "recipients[4]", closed]  # full numbers
    delivered = {m["to"]: m["unique"] for m in sim.sent}
    assert results[ok1] == {"status": "sent", "unique": delivered[ok1], "reason": 1, "error": None}
    assert results[closed]["status"] == "skipped"
    assert results[closed]["reason"] == 7
    assert results["12345"]["status"] == "invalid"
    assert results["recipients[4]"]["status"] == "invalid"
    assert results[flaky]["status"] == ("failed" if failed else "sent")
    # Confirmed recipients were sent once, although the task ran twice.
    counts = sends_per_number(sim)
    assert counts[ok1] == counts[ok2] == 1
    assert counts[flaky] == (6 if failed else 4)  # 3 hook tries in try 1 (+ 3 or 1 in try 2)
    assert counts[closed] == 2  # refused, so nothing was delivered: the retry asks again
    assert "12345" not in counts
    assert {m["body"] for m in sim.sent} >= {"Hi Dana", "Hi Noa"}


@pytest.mark.parametrize("region", ["DE", "IN", "US"])
def test_a_connection_region_never_rereads_a_normalized_recipient(make_sim, airflow_db, region):
    """The list is read once, with the connection's default_region; what the send gets is the
    international number that reading gave. Reading those digits again in the region would turn
    +972 50-123-4567 into +49 972501234567 (DE) or +91 972501234567 (IN): another country."""
    national = {"DE": "030 1234567", "IN": "09123456789", "US": "(202) 555-0123"}[region]
    expected = {"DE": "49301234567", "IN": "919123456789", "US": "12025550123"}[region]
    # The sender with +: in a region, bare digits would be read as a national number too.
    sim = make_sim(
        default_region=region, sender="+" + DEFAULT_SENDER, open_windows=["972501234567", expected]
    )
    dag = bulk_dag(f"bulk_region_{region}", recipients=["+972 50-123-4567", national], retries=0)

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert sends_per_number(sim) == {"972501234567": 1, expected: 1}
    assert set(result.xcom("bulk", key="results")) == {"972501234567", expected}


def test_failure_ratio_decides_between_success_and_failure(sim, airflow_db):
    nums = open_windows(sim, numbers(4))
    sim.fail_next(reason=4, to=nums[0])  # refused: bad recipient, not retryable

    strict = run_dag(bulk_dag("bulk_ratio_strict", recipients=nums))
    assert strict.tis["bulk"] == (FAILED, 1)  # over max_failure_ratio 0: failed, no retry
    assert strict.xcom("bulk")["failed"] == {"4": 1}

    sim.reset()
    open_windows(sim, nums)
    sim.fail_next(reason=4, to=nums[0])
    tolerant = run_dag(bulk_dag("bulk_ratio_tolerant", recipients=nums, max_failure_ratio=0.25))
    assert tolerant.tis["bulk"] == (SUCCESS, 1)
    assert tolerant.xcom("bulk")["sent"] == 3


def test_task_is_skipped_when_every_recipient_was_skipped(sim, airflow_db):
    expired, stranger = numbers(2)
    sim.open_window(expired, at=sim.now().subtract(hours=30))  # reason 7; stranger never wrote: 8

    result = run_dag(bulk_dag("bulk_all_skipped", recipients=[expired, stranger]))

    assert result.tis["bulk"] == (SKIPPED, 1)
    assert result.xcom("bulk")["skipped"] == {"7": 1, "8": 1}
    assert sim.sent == []


def test_refused_token_stops_the_bulk_at_once(sim, airflow_db):
    nums = open_windows(sim, numbers(30))
    sim.fail_next(99, reason=3)

    result = run_dag(bulk_dag("bulk_bad_token", recipients=nums, max_concurrency=2))

    assert result.tis["bulk"] == (FAILED, 1)  # a refused token is not retried
    summary = result.xcom("bulk")
    # Only the requests already started went out; the rest were never attempted.
    assert len(sim.requests) <= 1 + 2 * 2
    assert summary["failed"] == {"3": len(sim.requests), "not_sent": 30 - len(sim.requests)}


def test_empty_list_succeeds_without_requests(sim, airflow_db):
    result = run_dag(bulk_dag("bulk_empty", recipients=[]))
    assert result.tis["bulk"] == (SUCCESS, 1)
    assert result.xcom("bulk")["total"] == 0
    assert sim.requests == []


def test_recipients_that_are_not_a_list_fail_without_retry(sim, airflow_db):
    result = run_dag(bulk_dag("bulk_not_a_list", recipients={"to": "972501234567"}))
    assert result.tis["bulk"] == (FAILED, 1)
    assert sim.requests == []


@pytest.mark.parametrize("body", ["Hi {{ name", "missing.j2"], ids=["syntax error", "no such file"])
def test_unusable_body_template_fails_without_retry_or_request(sim, airflow_db, body):
    result = run_dag(bulk_dag("bulk_bad_body", recipients=open_windows(sim, numbers(2)), body=body))
    assert result.tis["bulk"] == (FAILED, 1)
    assert sim.requests == []


def test_body_is_rendered_per_recipient_with_the_task_context(sim, airflow_db, tmp_path):
    dana, noa, nameless = open_windows(sim, numbers(3))
    (tmp_path / "shipped.j2").write_text(
        "Hi {{ name }}, order {{ order }} shipped on {{ ds }} ({{ params.shop }})"
    )
    with DAG(
        "bulk_render",
        schedule=None,
        start_date=START,
        template_searchpath=str(tmp_path),
        params={"shop": "Kiosk"},
    ) as dag:

        @task
        def shipped() -> list[dict]:
            return [
                {"to": dana, "name": "Dana", "order": "A-1"},
                {"to": noa, "name": "Noa", "order": "{{ not rendered again }}"},
                {"to": nameless, "order": "C-3"},  # no 'name': StrictUndefined makes it invalid
            ]

        WhatsAppBulkSendOperator(
            task_id="bulk", recipients=shipped(), body="shipped.j2", max_failure_ratio=0.5
        )

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 1)
    ds = result.logical_date.strftime("%Y-%m-%d")
    bodies = {m["to"]: m["body"] for m in sim.sent}
    assert bodies == {
        dana: f"Hi Dana, order A-1 shipped on {ds} (Kiosk)",
        noa: f"Hi Noa, order {{{{ not rendered again }}}} shipped on {ds} (Kiosk)",
    }
    results = result.xcom("bulk", key="results")
    assert results[nameless]["status"] == "invalid"
    assert "name" in results[nameless]["error"]


def test_template_bulk_sends_templates_with_per_recipient_variables(sim, airflow_db):
    sim.add_template("shipped", "Hi {{1}}, order {{2}} shipped")
    windowless, written = numbers(2)  # templates need no open window
    sim.open_window(written)
    recipients = [{"to": windowless, "name": "Dana", "order": 7}, {"to": written, "name": "Noa", "order": 8}]
    dag = bulk_dag(
        "bulk_template",
        recipients=recipients,
        body=None,
        template="shipped",
        variables=["{{ name }}", "#{{ order }}"],
    )

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert result.xcom("bulk")["sent"] == 2
    sent = {m["to"]: m for m in sim.sent}
    assert sent[windowless]["kind"] == "template"
    assert sent[windowless]["variables"] == ["Dana", "#7"]
    assert sent[written]["body"] == "Hi Noa, order #8 shipped"
    assert sends_per_number(sim, TEMPLATE_PATH) == {windowless: 1, written: 1}


def test_example_bulk_dag_runs_against_the_simulator(sim, airflow_db):
    spec = importlib.util.spec_from_file_location(
        "wa019_example_bulk", EXAMPLE_DAGS / "example_whatsapp_bulk.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    open_windows(sim, ["972501234567", "972527654321"])

    result = run_dag(module.dag)

    assert result.state == SUCCESS, result.tis
    assert sorted(m["body"] for m in sim.sent) == [
        "Hi Dana, your order *A-1001* from Kiosk Ltd has shipped.",
        "Hi Noa, your order *A-1002* from Kiosk Ltd has shipped.",
    ]
    assert result.xcom("notify_shipped")["sent"] == 2


# --------------------------------------------------------------------------------------------
# No duplicates across tries
# --------------------------------------------------------------------------------------------


def test_try_killed_part_way_is_followed_by_a_retry_that_sends_the_rest_once(sim, airflow_db):
    nums = open_windows(sim, numbers(10))
    # One at a time, in order; the 5th message hangs for 2 s and Airflow kills the try after 1 s
    # (execution_timeout raises AirflowTaskTimeout inside execute, as a stopped worker would see
    # SIGTERM). The hung message's answer still comes within the read timeout, and the ledger
    # records it on the way out.
    sim.fail_next(delay=2.0, to=nums[4])
    dag = bulk_dag(
        "bulk_killed",
        recipients=nums,
        max_concurrency=1,
        execution_timeout=timedelta(seconds=1),
    )

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 2)
    requests = [r.json["to"] for r in sim.requests_to(SEND_PATH)]
    # Every recipient exactly once: try 1 reached the first five, try 2 only the other five.
    assert sorted(requests) == sorted(nums)
    assert set(requests[:5]) == set(nums[:5])
    assert result.xcom("bulk")["sent"] == 10
    delivered = {m["to"]: m["unique"] for m in sim.sent}
    assert {n: r["unique"] for n, r in result.xcom("bulk", key="results").items()} == delivered


@pytest.mark.parametrize("resend_unknown", [True, False])
def test_unknown_delivery_is_resent_only_with_resend_unknown(sim, airflow_db, resend_unknown):
    unsure, *others = nums = open_windows(sim, numbers(4))
    sim.fail_next(status=500, to=unsure)  # delivery unknown: the hook does not retry it

    result = run_dag(bulk_dag("bulk_unknown", recipients=nums, resend_unknown=resend_unknown))

    # Try 1 finished the others, then asked for a retry, exactly as a single send would.
    assert result.tis["bulk"] == (SUCCESS, 2)
    counts = sends_per_number(sim)
    assert all(counts[n] == 1 for n in others)
    summary = result.xcom("bulk")
    status = result.xcom("bulk", key="results")[unsure]["status"]
    if resend_unknown:  # at least once
        assert counts[unsure] == 2
        assert (summary["sent"], summary["unknown"], status) == (4, 0, "sent")
    else:  # at most once: reported, never sent again
        assert counts[unsure] == 1
        assert (summary["sent"], summary["unknown"], status) == (3, 1, "unknown")


def test_a_cleared_and_rerun_task_does_not_send_again(sim, airflow_db):
    nums = open_windows(sim, numbers(5))
    dag = bulk_dag("bulk_cleared", recipients=nums, retries=0)
    first = run_dag(dag)
    assert first.tis["bulk"] == (SUCCESS, 1)

    state = clear_and_rerun(dag, first.run_id, "bulk")

    assert state == SUCCESS
    assert sends_per_number(sim) == dict.fromkeys(nums, 1)
    assert first.xcom("bulk")["sent"] == 5  # the re-run's summary: all sent (by the first run)


def clear_and_rerun(dag: DAG, run_id: str, task_id: str) -> str:
    """Clear a finished task instance as a user would, then run its next try in-process.

    ``dag.test()`` cannot do this: it replaces the whole dag run. Here the run stays; the task
    instance is cleared with Airflow's own ``clear_task_instances`` and its next try run by
    ``ledger_support.run_cleared_task``.
    """
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    query = select(TaskInstance).where(
        TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
    )
    with create_session() as session:
        clear_task_instances(session.scalars(query).all(), session, dag_run_state=DagRunState.RUNNING)
    return run_cleared_task(dag, run_id, task_id)


def test_airflow_retries_apply_on_every_version_and_never_resend_to_the_confirmed(sim, airflow_db):
    # Also on Airflow 3.1/3.2, which have no task_state_store: the ledger is in Variables there too.
    flaky, ok = open_windows(sim, numbers(2))
    sim.fail_next(99, reason=6, to=flaky)

    result = run_dag(bulk_dag("bulk_all_retries", recipients=[flaky, ok], retries=2))

    assert result.tis["bulk"] == (FAILED, 3)  # retried twice, reason 6 every time
    assert result.xcom("bulk")["failed"] == {"6": 1}
    assert sends_per_number(sim) == {flaky: 9, ok: 1}  # the hook's own 3 tries in each of 3 tries


# --------------------------------------------------------------------------------------------
# Concurrency and rate, measured on the simulator's side
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_at_most_max_concurrency_requests_are_in_flight(sim, airflow_db, max_concurrency):
    nums = open_windows(sim, numbers(4 * max_concurrency))
    sim.latency = 0.05  # long enough for the requests of one batch to overlap

    result = run_dag(
        bulk_dag(f"bulk_conc_{max_concurrency}", recipients=nums, max_concurrency=max_concurrency)
    )

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert sim.peak_concurrency == max_concurrency  # reached, never exceeded
    assert sends_per_number(sim) == dict.fromkeys(nums, 1)


def test_rate_limit_holds_in_every_sliding_second(sim, airflow_db):
    rate, count = 10, 25
    nums = open_windows(sim, numbers(count))

    result = run_dag(bulk_dag("bulk_rate", recipients=nums, max_concurrency=8, rate_per_second=rate))

    assert result.tis["bulk"] == (SUCCESS, 1)
    arrivals = sorted(r.received_at.timestamp() for r in sim.requests_to(SEND_PATH))
    assert len(arrivals) == count
    # Sends start at most `rate` per sliding second on the client; the simulator stamps arrivals
    # later, by a delay that varies more on a loaded machine (new connections, thread start-up).
    # Windows of 0.7 s leave 300 ms for that jitter, and still catch a per-calendar-second
    # limiter (two bursts back to back, a few ms apart) or none at all (all 25 at once).
    busiest = max(sum(1 for t in arrivals[i:] if t - start < 0.7) for i, start in enumerate(arrivals))
    assert busiest <= rate
    # And the limit is a limit, not a stall: 25 sends at 10/s take 2 s (two full windows).
    assert 1.8 <= arrivals[-1] - arrivals[0] < 4


# --------------------------------------------------------------------------------------------
# The engine on its own: ledger, progress lines, masking, stop
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hook(sim) -> WhatsAppAsyncHook:
    """The async hook the engine sends with, as the operator sets it up."""
    hook = WhatsAppAsyncHook()
    hook.message_log_level = logging.DEBUG
    _ = hook.settings  # read on this thread, as the operator does: the engine's loop reuses it
    return hook


@pytest.fixture
def sync_hook(sim) -> WhatsAppHook:
    with WhatsAppHook() as hook:
        yield hook


def engine(hook: WhatsAppAsyncHook, store: MemoryLedgerStore | None = None, **kwargs) -> BulkSender:
    kwargs.setdefault("log", logging.getLogger("wa019.test_bulk"))
    return BulkSender(
        hook.send_message,
        prepare=lambda recipient: "Hello",
        ledger=ProgressLedger(store),
        aclose=hook.close,
        **kwargs,
    )


def test_progress_lines_are_logged_with_rates_and_masked_recipients(sim, hook, caplog):
    nums = open_windows(sim, numbers(20))
    recipients, _ = parse_recipients([*nums, "0501234567", {"to": "972599999999"}])
    sim.latency = 0.02
    caplog.set_level(logging.INFO, logger="wa019.test_bulk")

    report = engine(hook, max_concurrency=2, progress_seconds=0.05).run(recipients)

    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if line.startswith("sent ")]
    assert len(progress) >= 2
    for line in progress:
        assert re.fullmatch(r"sent \d+/22, failed \d+, \d+ msg/s, ~(\d+|\?) s left", line), line
    assert progress[-1].startswith("sent 20/22, failed 0, ")
    assert progress[-1].endswith(", ~0 s left")
    # The invalid local number and the never-opened window are logged, masked.
    text = "\n".join(lines)
    assert "*" * 6 + "4567" in text
    assert "********9999" in text
    for number in [*nums, "0501234567", "972599999999"]:
        assert number not in text
    assert report.summary()["skipped"] == {"8": 1}


def test_ledger_chunks_are_appended_and_read_back_by_the_next_try(sim, hook):
    nums = open_windows(sim, numbers(12))
    recipients, _ = parse_recipients(nums)
    store = MemoryLedgerStore()

    first = engine(hook, store).run(recipients[:7])
    second = engine(hook, store).run(recipients)  # a later try, with the whole list

    assert first.sent_now == 7
    assert second.sent_now == 5
    assert sends_per_number(sim) == dict.fromkeys(nums, 1)
    assert sorted(store.data) == ["wa019_bulk/0", "wa019_bulk/1"]  # one batch per try here
    assert {n: o.unique for n, o in second.results.items()} == {m["to"]: m["unique"] for m in sim.sent}


def test_claims_make_a_hard_killed_try_at_most_once(sim, hook):
    nums = open_windows(sim, numbers(5))
    recipients, _ = parse_recipients(nums)
    store = MemoryLedgerStore()
    # A try with resend_unknown=False claimed the first three and died (SIGKILL) before writing
    # any outcome: they may have been delivered.
    ProgressLedger(store).claim(nums[:3])

    at_most_once = engine(hook, store, resend_unknown=False).run(recipients)

    assert [o.status for o in at_most_once.results.values()] == ["unknown"] * 3 + ["sent"] * 2
    assert sends_per_number(sim) == dict.fromkeys(nums[3:], 1)
    # With resend_unknown=True the same leftovers are sent (at least once).
    at_least_once = engine(hook, store, resend_unknown=True).run(recipients)
    assert at_least_once.sent_now == 3
    assert sends_per_number(sim) == dict.fromkeys(nums, 1)


class RecordingStore(MemoryLedgerStore):
    """Keeps what the store held after each write, and when each write began: what a try killed
    at any instant would have left behind (a hard kill lets no write finish)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[pendulum.DateTime, dict[str, str]]] = []

    def set(self, key, value) -> None:
        began = pendulum.now("UTC")
        super().set(key, value)
        self.history.append((began, dict(self.data)))

    def states(self) -> list[tuple[pendulum.DateTime, dict[str, tuple[str, str | None]]]]:
        """(when the next write began, the ledger as a next try would read it until then)."""
        ends = [began for began, _ in self.history[1:]] + [pendulum.now("UTC")]
        states = []
        for end, (_, data) in zip(ends, self.history, strict=True):
            snapshot = MemoryLedgerStore()
            snapshot.data = data
            states.append((end, ProgressLedger(snapshot).load()))
        return states


def test_refused_claims_are_released_for_the_next_try(sim, hook):
    closed, ok = numbers(2)
    sim.open_window(ok)
    recipients, _ = parse_recipients([closed, ok])
    store = RecordingStore()

    engine(hook, store, resend_unknown=False).run(recipients)  # closed: reason 8, released
    first_try = len(store.history)
    sim.open_window(closed)  # the client wrote back
    retry = engine(hook, store, resend_unknown=False).run(recipients)

    assert [o.status for o in retry.results.values()] == ["sent", "sent"]
    assert sends_per_number(sim) == {closed: 2, ok: 1}
    states = [state for _, state in store.states()]
    assert states[first_try - 1] == {closed: ("released", None), ok: ("sent", sim.sent[0]["unique"])}
    # The retry claimed `closed` before sending it again: at most once holds for that send too.
    assert states[first_try][closed] == ("claimed", None)
    assert states[-1][closed] == ("sent", sim.sent[-1]["unique"])


@pytest.mark.parametrize(
    ("max_concurrency", "rate"), [(4, None), (8, None), (3, 150.0)], ids=["c4", "c8", "c3-rated"]
)
def test_at_most_once_a_hard_kill_leaves_at_most_max_concurrency_unknown(sim, hook, max_concurrency, rate):
    """With resend_unknown=False, whatever instant a try is killed at (SIGKILL: no further write),
    the ledger it leaves has every recipient whose request had reached the API recorded as sent
    or claimed (so the next try never sends to them again), and at most ``max_concurrency``
    recipients claimed without an outcome (whom the next try reports ``unknown``)."""
    nums = open_windows(sim, numbers(120))
    recipients, _ = parse_recipients(nums)
    sim.latency = 0.01
    store = RecordingStore()

    report = engine(
        hook, store, resend_unknown=False, max_concurrency=max_concurrency, rate_per_second=rate
    ).run(recipients)

    assert report.sent_now == len(nums)
    arrivals = sorted((r.received_at, r.json["to"]) for r in sim.requests_to(SEND_PATH))
    states = store.states()
    assert len(states) < len(nums) / 2 + 5, "claims must be written in batches, not one by one"
    open_claims = []
    for killed_at, state in states:
        reached = {number for at, number in arrivals if at < killed_at}
        uncovered = {n for n in reached if state.get(n, ("released",))[0] not in ("sent", "claimed")}
        assert not uncovered, f"a kill before {killed_at} would send {sorted(uncovered)} again"
        open_claims.append(sum(1 for st, _ in state.values() if st == "claimed"))
    assert max(open_claims) <= max_concurrency, open_claims
    assert max(open_claims) >= min(2, max_concurrency), open_claims  # claims really went ahead
    assert states[-1][1] == {m["to"]: ("sent", m["unique"]) for m in sim.sent}


def test_stop_lets_requests_in_flight_finish_and_records_them(sim, hook):
    nums = open_windows(sim, numbers(40))
    recipients, _ = parse_recipients(nums)
    sim.latency = 0.05
    store = MemoryLedgerStore()
    bulk = engine(hook, store, max_concurrency=2)
    threading.Timer(0.2, bulk.stop).start()

    report = bulk.run(recipients)

    assert report.stopped
    sent = [n for n, o in report.results.items() if o.status == "sent"]
    not_sent = [n for n, o in report.results.items() if o.key == "not_sent"]
    assert 0 < len(sent) < 40
    assert len(sent) + len(not_sent) == 40
    assert set(sent) == set(sends_per_number(sim))  # every request that went out is recorded
    assert ProgressLedger(store).load().keys() == set(sent)


# --------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------


def test_progress_line_format():
    assert format_progress(1200, 5000, 3, 180.4, 21.1) == "sent 1200/5000, failed 3, 180 msg/s, ~22 s left"
    assert format_progress(0, 10, 0, 0.0, None) == "sent 0/10, failed 0, 0 msg/s, ~? s left"


def test_recipients_are_parsed_deduplicated_and_kept_in_order():
    recipients, duplicates = parse_recipients(
        '["+972 50-123-4567", {"to": "972501234567", "x": 1}, {"to": "0521234567"}, true, {"name": "n"}]'
    )
    assert [(r.key, r.number) for r in recipients] == [
        ("972501234567", "972501234567"),
        ("0521234567", None),  # a local number needs the connection's default_region
        ("recipients[3]", None),
        ("recipients[4]", None),
    ]
    assert duplicates == 1
    assert parse_recipients([{"to": "0521234567", "name": "n"}], region="IL")[0][0].values["name"] == "n"
    with pytest.raises(ValueError, match="not a list"):
        parse_recipients("972501234567")


def test_scrub_masks_numbers_in_log_text():
    assert scrub("invalid to '+972 50-123-4567': bad") == "invalid to '********4567': bad"
    assert (
        scrub("reason 4 at 12:30, HTTP 503 from 127.0.0.1:8019")
        == "reason 4 at 12:30, HTTP 503 from 127.0.0.1:8019"
    )
    assert scrub("to 0501234567") == "to ******4567"


def test_simulator_faults_can_target_one_recipient(sim, sync_hook):
    first, second = open_windows(sim, numbers(2))
    sim.fail_next(reason=4, to="+" + second)
    with pytest.raises(Exception, match="reason 4"):
        sync_hook.send_message(second, "x")
    sync_hook.send_message(first, "x")  # not consumed by the other recipient's request
    assert sim.pending_faults == 0


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({}, "exactly one of body"),
        ({"body": "x", "template": "t"}, "exactly one of body"),
        ({"body": "x", "variables": ["a"]}, "go with template"),
        ({"body": "x", "max_concurrency": 0}, "max_concurrency"),
        ({"body": "x", "max_concurrency": 33}, "max_concurrency"),
        ({"body": "x", "rate_per_second": 0}, "rate_per_second"),
        ({"body": "x", "max_failure_ratio": 1.5}, "max_failure_ratio"),
    ],
)
def test_bad_arguments_fail_at_dag_parse_time(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        WhatsAppBulkSendOperator(task_id="t", recipients=[], **kwargs)


def test_a_retryable_ending_lets_airflow_retry_and_a_hopeless_one_does_not():
    op = WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x")
    retryable = BulkReport(
        results={
            "972501234567": Outcome("sent", unique="u", reason=1, key="1"),
            "972501234568": Outcome("failed", reason=6, key="6", retryable=True),
        }
    )
    hopeless = BulkReport(results={"972501234568": Outcome("failed", reason=4, key="4")})
    ending = op._bulk_ending(retryable, retryable.summary())
    assert type(ending) is AirflowException  # Airflow's retries apply: the ledger has the first one
    assert "the next try sends only to recipients not yet confirmed" in str(ending)
    assert isinstance(op._bulk_ending(hopeless, hopeless.summary()), AirflowFailException)
