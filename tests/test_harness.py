"""Proves the test helpers in airflow_support.py and conftest.py do what they promise."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone

import pytest

# BaseHook through common.compat: on Airflow 3.3 it is airflow.sdk.BaseHook itself, and 3.0.x has
# no airflow.sdk.BaseHook yet.
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException, BaseHook
from airflow.sdk import dag, task
from airflow_support import WA019_CONN_ID, airflow_dags_test, run_dag

TINY = timedelta(milliseconds=10)


def _success_dag():
    @dag(dag_id="harness_success", schedule=None, catchup=False)
    def harness_success():
        @task
        def produce():
            return {"unique": "abc-123", "pair": (1, 2)}

        @task
        def double(x: int) -> int:
            return x * 2

        produce()
        double.expand(x=[1, 2, 3])

    return harness_success()


def test_run_dag_success_xcom_and_mapped_tasks():
    the_dag = _success_dag()

    result = run_dag(the_dag, conf={"k": "v"})

    assert result.state == "success"
    assert result.tis["produce"] == ("success", 1)
    assert {k: v for k, v in result.tis.items() if isinstance(k, tuple)} == {
        ("double", 0): ("success", 1),
        ("double", 1): ("success", 1),
        ("double", 2): ("success", 1),
    }
    assert result.xcom("produce") == {"unique": "abc-123", "pair": (1, 2)}
    assert [result.xcom("double", map_index=i) for i in range(3)] == [2, 4, 6]
    with pytest.raises(KeyError, match="no XCom"):
        result.xcom("produce", key="nope")

    again = run_dag(the_dag)  # same dag id again: a new run, not the old one
    assert again.run_id != result.run_id
    assert again.state == "success"


def test_run_dag_same_explicit_logical_date_runs_again():
    calls = []

    @dag(dag_id="harness_rerun", schedule=None, catchup=False)
    def harness_rerun():
        @task
        def count():
            calls.append(1)  # tasks run in this process under dag.test()
            return len(calls)

        count()

    the_dag = harness_rerun()
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)

    first = run_dag(the_dag, logical_date=when)
    second = run_dag(the_dag, logical_date=when)

    assert (first.state, second.state) == ("success", "success")
    assert second.logical_date == when
    assert second.xcom("count") == 2  # really ran again (the first run was replaced)
    assert len(calls) == 2


def test_run_dag_skip_fail_fast_and_retry():
    @dag(dag_id="harness_failures", schedule=None, catchup=False)
    def harness_failures():
        @task
        def skipper():
            raise AirflowSkipException("nothing to do")

        @task(retries=1, retry_delay=TINY)
        def fail_fast():
            raise AirflowFailException("do not retry")

        @task(retries=1, retry_delay=TINY)
        def flaky():
            raise RuntimeError("transient")

        skipper()
        fail_fast()
        flaky()

    result = run_dag(harness_failures())

    assert result.state == "failed"
    assert result.tis == {
        "skipper": ("skipped", 1),
        "fail_fast": ("failed", 1),
        "flaky": ("failed", 2),
    }


def test_connection_from_env_is_seen_and_never_stale(wa019_env, monkeypatch):
    @dag(dag_id="harness_conn", schedule=None, catchup=False)
    def harness_conn():
        @task
        def read_conn():
            conn = BaseHook.get_connection(WA019_CONN_ID)
            return {
                "type": conn.conn_type,
                "host": conn.host,
                "password": conn.password,
                "extra": conn.extra_dejson,
            }

        read_conn()

    the_dag = harness_conn()

    wa019_env(host="http://127.0.0.1:1111", password="tok-1")
    first = run_dag(the_dag)
    assert first.xcom("read_conn") == {
        "type": "wa019",
        "host": "http://127.0.0.1:1111",
        "password": "tok-1",
        "extra": {"sender": "972771234567"},
    }

    # Changed after Airflow was imported and after a task already read it: seen at once.
    wa019_env(host="http://127.0.0.1:2222", password="tok-2", sender=None, timeout=5)
    second = run_dag(the_dag)
    assert second.xcom("read_conn")["host"] == "http://127.0.0.1:2222"
    assert second.xcom("read_conn")["extra"] == {"timeout": 5}

    monkeypatch.delenv(f"AIRFLOW_CONN_{WA019_CONN_ID.upper()}")
    gone = run_dag(the_dag)
    assert gone.state == "failed"
    assert gone.tis["read_conn"] == ("failed", 1)


def test_airflow_dags_test_subprocess_captures_task_logs(tmp_path, wa019_env):
    wa019_env(host="http://127.0.0.1:3333")
    (tmp_path / "harness_cli.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            import logging

            from airflow.providers.common.compat.sdk import BaseHook
            from airflow.sdk import dag, task

            log = logging.getLogger(__name__)


            @dag(dag_id="harness_cli", schedule=None, catchup=False)
            def harness_cli():
                @task
                def say():
                    host = BaseHook.get_connection("wa019_default").host
                    log.info("WhatsApp message id: %s", "sim-42")
                    print("printed host", host)

                say()


            harness_cli()
            """
        )
    )

    result = airflow_dags_test("harness_cli", dags_folder=tmp_path)

    assert result.returncode == 0, result
    assert "WhatsApp message id: sim-42" in result.output, result
    assert "printed host http://127.0.0.1:3333" in result.output, result
