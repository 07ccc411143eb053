"""The fault matrix: every answer and fault, through the real hook and through a real task run.

One table is the contract (README, "What each answer does to the task"): its rows are in
tests/fault_rows.py, a support module, because tests/test_async_hook.py holds the async hook to
the same rows. For each row it says what the hook raises (always one of the provider's typed
errors, never a ``requests``/``urllib3``/``json`` exception) and how many requests reached the
server, then what a task with ``retries=1`` ends as (state, try number) and how many requests both
tries made in all. Some rows say more about the hook's error or the exchange (its text, HTTP
status, each answer, what was delivered, how long the send took): the optional columns of
``fault_rows.Fault``.

Faults come from the simulator (``fail_next``, or a connection or window that makes it refuse),
from the loopback addresses in ``airflow_provider_wa019.testing`` (refused, connect timeout),
and from the raw-socket servers in tests/fault_support.py that break the HTTP exchange itself.
Connections use ``FAST`` (tests/airflow_support.py): backoff 10 ms, waits capped at 0.1 s
(Retry-After too), connect timeout 0.3 s, read timeout 0.5 s.

The focused tests that remain elsewhere cover what is not one fault: the 24-hour boundary, a
sender argument, the listing's retries, the quoted excerpt (tests/test_hook.py); task outcomes
of invalid input, a missing token and the operator's sender argument (tests/test_operator.py).
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pendulum
import pytest
from airflow.sdk import DAG
from airflow_support import run_dag
from fault_rows import CLIENT, MATRIX, SUCCESS, connect, fault_server, settled_count

from airflow_provider_wa019.exceptions import WhatsAppError
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")


# --------------------------------------------------------------------------------------------
# The matrix


@pytest.mark.parametrize("name", MATRIX, ids=list(MATRIX))
def test_fault_through_the_hook(name, wa019_env, make_sim):
    fault = MATRIX[name]
    with fault_server(fault, make_sim) as server:
        connect(wa019_env, fault, server)
        started = time.monotonic()
        with WhatsAppHook() as hook:
            if fault.hook is None:
                result = hook.send_message(CLIENT, "Your order shipped")
                assert result.unique
                if server.sim is not None and server.sim.sent:
                    assert result.unique == server.sim.sent[-1]["unique"]
            else:
                # Nothing but the provider's typed errors escapes, and exactly the documented one.
                with pytest.raises(WhatsAppError) as err:
                    hook.send_message(CLIENT, "Your order shipped")
                assert type(err.value) is fault.hook, repr(err.value)
                if fault.reason is not None:
                    assert err.value.reason == fault.reason
                if fault.http_status is not None:
                    assert err.value.http_status == fault.http_status
                if fault.text is not None:
                    assert re.search(fault.text, str(err.value)), str(err.value)
                # retryable is what the operator turns into "Airflow's retries apply".
                assert err.value.retryable == (fault.task[1] == 2)
        elapsed = time.monotonic() - started
        assert settled_count(server.count, fault.hook_requests) == fault.hook_requests
        if fault.answers is not None:
            assert server.answers() == list(fault.answers)
        if fault.delivered is not None:
            assert len(server.sim.sent) == fault.delivered
        low, high = fault.seconds
        assert low < elapsed < high


@pytest.mark.parametrize("name", MATRIX, ids=list(MATRIX))
def test_fault_through_a_task_run(name, wa019_env, make_sim, airflow_db):
    fault = MATRIX[name]
    with fault_server(fault, make_sim) as server:
        connect(wa019_env, fault, server)
        with DAG(f"fault_{abs(hash(name))}", schedule=None, start_date=START, catchup=False) as dag:
            WhatsAppSendOperator(
                task_id="send",
                to=CLIENT,
                body="Your order shipped",
                retries=1,
                retry_delay=timedelta(milliseconds=1),
                **fault.op,
            )
        result = run_dag(dag)
        assert result.tis["send"] == fault.task
        assert settled_count(server.count, fault.task_requests) == fault.task_requests
    if fault.task[0] == SUCCESS:
        assert result.xcom("send")
    else:
        with pytest.raises(KeyError):
            result.xcom("send")
