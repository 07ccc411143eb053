"""The bulk ledger survives what Airflow does to a finished task instance.

The ledger (whom a bulk task instance already reached) lives in Airflow Variables, not in
``task_state_store``: Airflow deletes task state on success under ``[state_store]
clear_on_success`` (and on mark-success), and apache/airflow#72100 discards it when a task
instance is cleared. These tests do exactly that to real task runs against the simulator, then
clear the task through Airflow's own REST API and run its next try, and count what the simulator
delivered (``sim.sent``): nobody gets a message twice, unless a new dag run or
``resend_confirmed=True`` asks for it. They run on every supported Airflow: on 3.1/3.2 there is
no task state to delete, and the ledger (hence retries) works the same.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_support import run_dag
from ledger_support import (
    clear,
    discard_task_state,
    ledger_variables,
    mark_success,
    run_cleared_task,
    set_variable,
    task_state_rows,
    task_state_supported,
    ti_row,
)

from airflow_provider_wa019.api import SEND_PATH
from airflow_provider_wa019.bulk import (
    MemoryLedgerStore,
    Outcome,
    ProgressLedger,
    VariableLedgerStore,
    ledger_id,
)
from airflow_provider_wa019.bulk.variable_store import INDEX_KEY, PRUNE_BATCH, LedgerStoreError
from airflow_provider_wa019.operators import bulk as bulk_operators
from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator
from airflow_provider_wa019.testing import WhatsAppSimulator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
SUCCESS, FAILED = "success", "failed"
DAY = 24 * 3600
CLEAR_ON_SUCCESS = "AIRFLOW__STATE_STORE__CLEAR_ON_SUCCESS"


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    # A generous read timeout: no test here delays an answer, and on a loaded 2-core machine a
    # 0.5 s one turned an ordinary send into "delivery unknown", sent again by design.
    return make_sim(timeout=[0.3, 5])


def numbers(count: int, prefix: str = "97252") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


def open_windows(sim: WhatsAppSimulator, nums: list[str]) -> list[str]:
    for number in nums:
        sim.open_window(number)
    return nums


def delivered(sim: WhatsAppSimulator) -> Counter[str]:
    """Messages the simulator accepted, per recipient: what a customer would have received."""
    return Counter(m["to"] for m in sim.sent)


def bulk_dag(dag_id: str, *, retries: int = 0, state_probe: bool = False, **op_kwargs) -> DAG:
    op_kwargs.setdefault("body", "Hello {{ to }}")
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        WhatsAppBulkSendOperator(
            task_id="bulk", retries=retries, retry_delay=timedelta(milliseconds=1), **op_kwargs
        )
        if state_probe and task_state_supported():

            @task
            def probe(**context) -> None:
                # Task state that clear_on_success must delete when this task succeeds.
                context["task_state_store"].set("probe", {"written": True})
                assert context["task_state_store"].get("probe") == {"written": True}

            probe()
    return dag


def head_of(dag_id: str, run_id: str, task_id: str = "bulk", map_index: int = -1, **kw) -> str:
    return f"wa019_bulk.{ledger_id(dag_id, run_id, task_id, map_index, **kw)}"


# --------------------------------------------------------------------------------------------
# Clears, clear_on_success, mark-success: nobody twice
# --------------------------------------------------------------------------------------------


def test_a_clear_that_discards_task_state_sends_only_to_those_not_reached(sim, airflow_db):
    flaky, *others = nums = open_windows(sim, numbers(5))
    # Reason 6 for both tries (the hook asks 3 times per try): the task fails, 4 of 5 reached.
    sim.fail_next(6, reason=6, to=flaky)
    dag = bulk_dag("ledger_discard", recipients=nums, retries=1)
    first = run_dag(dag)
    assert first.tis["bulk"] == (FAILED, 2)
    assert delivered(sim) == Counter(others)

    # "Run the failed ones again": clear it, as Airflow's next release does (task state gone).
    clear(dag.dag_id, first.run_id, ["bulk"])
    discard_task_state(dag.dag_id, first.run_id, "bulk")
    assert run_cleared_task(dag, first.run_id, "bulk") == SUCCESS

    assert delivered(sim) == Counter(nums)  # everyone exactly once
    assert Counter(r.json["to"] for r in sim.requests_to(SEND_PATH))[flaky] == 7  # 6 refused + 1
    summary = first.xcom("bulk")  # the re-run's: all sent, four of them by the first run
    assert (summary["total"], summary["sent"], summary["failed"]) == (5, 5, {})


def test_clear_on_success_deletes_task_state_but_not_the_ledger(sim, airflow_db, monkeypatch):
    monkeypatch.setenv(CLEAR_ON_SUCCESS, "True")  # Airflow reads its config at each use
    nums = open_windows(sim, numbers(4))
    dag = bulk_dag("ledger_clear_on_success", recipients=nums, state_probe=True)
    first = run_dag(dag)
    assert first.state == SUCCESS, first.tis
    if task_state_supported():  # Airflow 3.3+: the option really deleted the probe's state
        assert task_state_rows(dag.dag_id, first.run_id, "probe") == 0
    assert task_state_rows(dag.dag_id, first.run_id, "bulk") == 0  # the ledger was never there

    clear(dag.dag_id, first.run_id, ["bulk"])
    discard_task_state(dag.dag_id, first.run_id, "bulk")
    assert run_cleared_task(dag, first.run_id, "bulk") == SUCCESS

    assert delivered(sim) == Counter(nums)
    assert len(sim.requests_to(SEND_PATH)) == 4  # the re-run asked the API nothing


def test_mark_success_then_clear_sends_only_to_those_not_reached(sim, airflow_db, monkeypatch):
    monkeypatch.setenv(CLEAR_ON_SUCCESS, "True")  # mark-success then deletes task state too
    flaky, *_ = nums = open_windows(sim, numbers(4))
    sim.fail_next(3, reason=6, to=flaky)
    dag = bulk_dag("ledger_mark_success", recipients=nums)
    first = run_dag(dag)
    assert first.tis["bulk"] == (FAILED, 1)

    mark_success(dag.dag_id, first.run_id, "bulk")
    assert ti_row(dag.dag_id, first.run_id, "bulk")[0] == SUCCESS
    clear(dag.dag_id, first.run_id, ["bulk"])
    assert run_cleared_task(dag, first.run_id, "bulk") == SUCCESS

    assert delivered(sim) == Counter(nums)
    assert first.xcom("bulk")["sent"] == 4


def test_each_map_index_keeps_its_own_ledger(sim, airflow_db):
    a, b, c, d = nums = open_windows(sim, numbers(4))
    with DAG("ledger_mapped", schedule=None, start_date=START) as dag:
        WhatsAppBulkSendOperator.partial(task_id="bulk", body="Hi {{ to }}").expand(
            recipients=[[a, b], [c, d]]
        )
    first = run_dag(dag)
    assert first.state == SUCCESS, first.tis

    clear(dag.dag_id, first.run_id, [["bulk", 1]])
    discard_task_state(dag.dag_id, first.run_id, "bulk", map_index=1)
    assert run_cleared_task(dag, first.run_id, "bulk", map_index=1) == SUCCESS

    assert delivered(sim) == Counter(nums)
    variables = ledger_variables()
    for map_index, reached in ((0, {a, b}), (1, {c, d})):
        head = head_of(dag.dag_id, first.run_id, map_index=map_index)
        assert variables[head][0]["map_index"] == map_index
        assert set(variables[f"{head}.0"][0]["sent"]) == reached


# --------------------------------------------------------------------------------------------
# Sending again on purpose
# --------------------------------------------------------------------------------------------


def test_resend_confirmed_sends_again_after_a_clear_but_never_within_retries(sim, airflow_db):
    flaky, *_ = nums = open_windows(sim, numbers(3))
    sim.fail_next(3, reason=6, to=flaky)  # the first try only
    dag = bulk_dag("ledger_resend", recipients=nums, retries=1, resend_confirmed=True)
    first = run_dag(dag)
    assert first.tis["bulk"] == (SUCCESS, 2)
    assert delivered(sim) == Counter(nums)  # the retry sent only to flaky

    clear(dag.dag_id, first.run_id, ["bulk"])
    assert run_cleared_task(dag, first.run_id, "bulk") == SUCCESS

    assert delivered(sim) == Counter({n: 2 for n in nums})  # the deliberate re-send, once each
    # One ledger per clear: from try 1 (tries 1-2), and from try 3 (the first after the clear).
    variables = ledger_variables()
    assert head_of(dag.dag_id, first.run_id, generation=1) in variables
    assert variables[head_of(dag.dag_id, first.run_id, generation=3)][0]["generation"] == 3


def test_a_new_dag_run_sends_again(sim, airflow_db):
    nums = open_windows(sim, numbers(2))
    dag = bulk_dag("ledger_new_run", recipients=nums)
    assert run_dag(dag).state == SUCCESS
    assert run_dag(dag).state == SUCCESS
    assert delivered(sim) == Counter({n: 2 for n in nums})


# --------------------------------------------------------------------------------------------
# Where the ledger is, and what a try does when it cannot read it
# --------------------------------------------------------------------------------------------


def test_the_ledger_is_in_variables_keyed_by_the_task_instance(sim, airflow_db):
    nums = open_windows(sim, numbers(3))
    dag = bulk_dag("ledger_layout", recipients=nums)
    before = time.time()
    result = run_dag(dag)
    assert result.state == SUCCESS

    variables = ledger_variables()
    head_key = head_of(dag.dag_id, result.run_id)
    head, description = variables[head_key]
    assert {k: head[k] for k in ("dag_id", "run_id", "task_id", "map_index", "generation", "chunks")} == {
        "dag_id": "ledger_layout",
        "run_id": result.run_id,
        "task_id": "bulk",
        "map_index": -1,
        "generation": None,
        "chunks": 1,
    }
    assert before + 30 * DAY - 5 <= head["expires"] <= time.time() + 30 * DAY
    assert "'ledger_layout'" in description
    assert "kept until" in description
    chunk, chunk_description = variables[f"{head_key}.0"]
    assert chunk["sent"] == {m["to"]: m["unique"] for m in sim.sent}
    assert "recipients already reached" in chunk_description
    index = variables[INDEX_KEY][0]["ledgers"]
    assert index[head_key.removeprefix("wa019_bulk.")] == head["expires"]
    assert task_state_rows(dag.dag_id, result.run_id, "bulk") == 0


def test_a_ledger_that_cannot_be_read_stops_the_task_before_any_send(sim, airflow_db):
    nums = open_windows(sim, numbers(2))
    dag = bulk_dag("ledger_unreadable", recipients=nums)
    first = run_dag(dag)
    assert first.state == SUCCESS
    set_variable(f"{head_of(dag.dag_id, first.run_id)}.0", "{not json", raw=True)  # edited by hand
    sent_before = len(sim.requests)

    clear(dag.dag_id, first.run_id, ["bulk"])
    assert run_cleared_task(dag, first.run_id, "bulk") == FAILED

    assert len(sim.requests) == sent_before  # refusing to guess whom it held: nothing sent


def test_the_public_variable_api_fallback_reads_writes_and_deletes(airflow_db):
    # Used only by a task SDK without the supervisor messages; checked here in a real task.
    with DAG("ledger_fallback", schedule=None, start_date=START) as dag:

        @task
        def round_trip() -> None:
            from airflow_provider_wa019.bulk.variable_store import _PublicVariables, task_variables

            assert type(task_variables()).__name__ == "_SupervisorVariables"  # what tasks use here
            variables, key = _PublicVariables(), "wa019_bulk.fallback-check"
            assert variables.get(key) is None
            variables.set(key, '{"v":1}', "a check")
            assert variables.get(key) == '{"v":1}'
            variables.delete(key)
            assert variables.get(key) is None

        round_trip()
    assert run_dag(dag).state == SUCCESS


def test_retention_must_be_a_day_or_more():
    with pytest.raises(ValueError, match=r"^ledger_retention "):
        WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x", ledger_retention=timedelta(hours=1))
    with pytest.raises(ValueError, match=r"^ledger_retention "):
        WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x", ledger_retention=30)
    with pytest.raises(ValueError, match=r"^resend_confirmed "):
        WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x", resend_confirmed="yes")
    op = WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x", ledger_retention=timedelta(days=90))
    assert op.ledger_retention == timedelta(days=90)
    from airflow_provider_wa019.bulk import DEFAULT_LEDGER_RETENTION

    assert bulk_operators._BULK_LEDGER_RETENTION == DEFAULT_LEDGER_RETENTION


# --------------------------------------------------------------------------------------------
# Retention: expired ledgers go, ledgers in use stay
# --------------------------------------------------------------------------------------------


def _age(head_key: str, *, head: bool = True, index: bool = True, days: float = 31) -> None:
    """Make a ledger look as if its last try started ``days`` days before its retention ended."""
    past = int(time.time() - days * DAY + 30 * DAY)
    variables = ledger_variables()
    if head:
        value = variables[head_key][0]
        set_variable(head_key, {**value, "expires": past})
    if index:
        ledgers = variables[INDEX_KEY][0]["ledgers"]
        ledgers[head_key.removeprefix("wa019_bulk.")] = past
        set_variable(INDEX_KEY, {"v": 1, "ledgers": ledgers})


def test_expired_ledgers_are_deleted_by_a_later_bulk_and_ledgers_in_use_are_kept(sim, airflow_db):
    old_number, kept_number, new_number = open_windows(sim, numbers(3))
    old_dag = bulk_dag("ledger_expired", recipients=[old_number])
    old = run_dag(old_dag)
    kept = run_dag(bulk_dag("ledger_in_use", recipients=[kept_number]))
    old_head, kept_head = head_of("ledger_expired", old.run_id), head_of("ledger_in_use", kept.run_id)
    _age(old_head)  # 31 days since its last try: expired
    _age(kept_head, head=False)  # a stale index entry, while its own head is fresh

    new = run_dag(bulk_dag("ledger_cleaner", recipients=[new_number]))
    assert new.state == SUCCESS

    variables = ledger_variables()
    assert not [key for key in variables if key.startswith(old_head)]  # head and chunk deleted
    assert {kept_head, f"{kept_head}.0"} <= set(variables)  # its head had the last word
    index = variables[INDEX_KEY][0]["ledgers"]
    assert old_head.removeprefix("wa019_bulk.") not in index
    assert index[kept_head.removeprefix("wa019_bulk.")] == variables[kept_head][0]["expires"]  # mended
    assert head_of("ledger_cleaner", new.run_id).removeprefix("wa019_bulk.") in index

    # The documented limit: a task cleared after its ledger expired sends to everyone again.
    clear(old_dag.dag_id, old.run_id, ["bulk"])
    assert run_cleared_task(old_dag, old.run_id, "bulk") == SUCCESS
    assert delivered(sim)[old_number] == 2


# --------------------------------------------------------------------------------------------
# The store's own rules, on a plain key/value stand-in for Airflow's Variables
# --------------------------------------------------------------------------------------------


class DictVariables:
    """Airflow's Variables as a dict, with the Execution API's answers (None: not found)."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.fail_reads = False

    def get(self, key: str) -> str | None:
        if self.fail_reads:
            raise LedgerStoreError("API server error")
        return self.data.get(key)

    def set(self, key: str, value: str, description: str | None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


def store(variables: DictVariables, run_id: str, *, now: float = 1_000_000_000.0) -> VariableLedgerStore:
    return VariableLedgerStore(
        variables, dag_id="d", run_id=run_id, task_id="t", retention=timedelta(days=30), clock=lambda: now
    )


def write_ledger(variables: DictVariables, run_id: str, chunks: int, *, now: float) -> VariableLedgerStore:
    ledger_store = store(variables, run_id, now=now)
    ledger_store.open()
    ledger = ProgressLedger(ledger_store, batch_size=1)
    ledger.load()  # as every try does before sending
    for n in range(chunks):
        ledger.claim([f"97250{n:07d}"])
    ledger_store.close(ledger.chunks)
    return ledger_store


def test_a_stale_copy_of_the_index_never_deletes_a_ledger_in_use():
    variables = DictVariables()
    day0 = 1_000_000_000.0
    old = write_ledger(variables, "r1", 2, now=day0)
    # 29 days later the task instance is cleared and runs again: its head and entry are renewed...
    write_ledger(variables, "r1", 0, now=day0 + 29 * DAY)
    # ...but another bulk task, which read the index before that, writes its copy back.
    stale = json.dumps({"v": 1, "ledgers": {old.id: old.expires}})
    variables.data[INDEX_KEY] = stale

    store(variables, "r2", now=day0 + 31 * DAY).prune()  # past the first expiry, not the second

    assert f"wa019_bulk.{old.id}.1" in variables.data  # kept: its own head said so
    ledgers = json.loads(variables.data[INDEX_KEY])["ledgers"]
    assert ledgers[old.id] == int(day0 + 59 * DAY)


def test_cleanup_deletes_chunks_a_hard_killed_try_never_counted_and_is_bounded():
    variables = DictVariables()
    day0 = 1_000_000_000.0
    killed = store(variables, "killed", now=day0 - DAY)  # the oldest: deleted first
    killed.open()  # head and index entry written; the try dies before close() notes its chunks
    ledger = ProgressLedger(killed, batch_size=1)
    for n in range(3):
        ledger.claim([f"97250{n:07d}"])
    assert json.loads(variables.data[killed.head_key])["chunks"] is None
    for i in range(PRUNE_BATCH + 2):
        write_ledger(variables, f"many{i}", 1, now=day0)

    deleted = store(variables, "cleaner", now=day0 + 31 * DAY).prune()

    assert deleted == PRUNE_BATCH  # the oldest ones first; the rest go at the next try's end
    assert not [key for key in variables.data if key.startswith(killed.head_key)]
    left = json.loads(variables.data[INDEX_KEY])["ledgers"]
    assert len(left) == 23 - PRUNE_BATCH  # the old ones not deleted yet (the cleaner never opened)


def test_a_read_error_is_never_taken_for_an_empty_ledger():
    variables = DictVariables()
    write_ledger(variables, "r1", 2, now=time.time())
    variables.fail_reads = True
    with pytest.raises(LedgerStoreError):
        ProgressLedger(store(variables, "r1")).load()


def test_the_open_chunk_is_rewritten_until_full_then_a_new_one_starts():
    memory = MemoryLedgerStore()
    ledger = ProgressLedger(memory, batch_size=3)
    a, b, c, d = numbers(4)
    ledger.claim([a, b])  # one write: chunk 0 opens with two claims
    ledger.record(a, Outcome("sent", unique="u-a"))
    ledger.flush()  # chunk 0 rewritten: a sent, b still claimed
    assert sorted(memory.data) == ["wa019_bulk/0"]
    assert memory.get("wa019_bulk/0") == {"v": 1, "sent": {a: "u-a"}, "claimed": [b]}
    ledger.claim([c])  # chunk 0 now holds three numbers: sealed
    ledger.record(b, Outcome("unknown"))
    ledger.claim([d])  # a new chunk: b's outcome and d's claim
    assert memory.get("wa019_bulk/0") == {"v": 1, "sent": {a: "u-a"}, "claimed": [b, c]}
    assert memory.get("wa019_bulk/1") == {"v": 1, "unknown": [b], "claimed": [d]}
    assert (ledger.chunks, ledger.writes) == (2, 4)

    next_try = ProgressLedger(memory)
    assert next_try.load() == {
        a: ("sent", "u-a"),
        b: ("unknown", None),
        c: ("claimed", None),
        d: ("claimed", None),
    }
    assert next_try.chunks == 2  # writes its own after them
