"""``whatsapp_campaign``: a recipient list split across mapped bulk tasks, one rate for the run.

The split is checked on its own (dedup by normalized number, chunk sizes, the per-task share of
the total rate, argument errors at parse time), then in real runs (``dag.test()``) against the
simulator: each recipient gets one message, the summaries add up, and the simulator's arrival
times keep to the rate. ``dag.test()`` runs mapped task instances one after the other, so a run
here proves each instance's share and the one-second hand-over between instances (without it
the next instance's first burst lands in the same second as the previous one's last sends); many
instances at once on several workers are proven by tests/e2e/test_e2e_celery.py.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_support import run_dag

from airflow_provider_wa019.api import TEMPLATE_PATH
from airflow_provider_wa019.campaign import (
    CAMPAIGN_CONCURRENCY,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_PARALLEL,
    split_recipients,
    whatsapp_campaign,
)
from airflow_provider_wa019.testing import WhatsAppSimulator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
EXAMPLE = Path(__file__).resolve().parent.parent / "example_dags" / "example_whatsapp_campaign.py"
TEMPLATES = [{"name": "spring_offer", "body": "Hi {{1}}, 20% off this week.", "template_id": "301"}]
SUCCESS = "success"


def numbers(count: int, prefix: str = "97250") -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    # Templates need no open window; 20 ms per request, as a nearby API answers.
    return make_sim(templates=TEMPLATES, latency=0.02, timeout=[0.3, 3])


def arrivals(sim: WhatsAppSimulator) -> list[float]:
    return sorted(r.received_at.timestamp() for r in sim.requests_to(TEMPLATE_PATH))


def busiest_window(times: list[float], width: float) -> int:
    """The most arrivals in any window of ``width`` seconds (windows start at an arrival)."""
    return max((sum(1 for t in times[i:] if t - start < width) for i, start in enumerate(times)), default=0)


# --------------------------------------------------------------------------------------------
# The split on its own
# --------------------------------------------------------------------------------------------


def test_split_drops_repeated_numbers_in_any_spelling_and_keeps_each_in_one_chunk():
    nums = numbers(10)
    listed = [
        *nums[:6],
        {"to": "+972 50-000-0001", "name": "again"},  # nums[1], spelled for humans: dropped
        *nums[6:],
        "00972500000009",  # nums[9] with the 00 prefix: dropped
        {"name": "no number"},  # invalid: kept, so its chunk's summary reports it
    ]

    chunks = split_recipients(listed, chunk_size=4, region=None)

    entries = [entry for chunk in chunks for entry in chunk["recipients"]]
    assert [e.get("to") for e in entries] == [*nums, None]  # first entry of a number wins, in order
    assert [len(c["recipients"]) for c in chunks] == [3, 4, 4]  # 11 in 3 chunks, as even as possible
    assert all("rate_per_second" not in c for c in chunks)  # no total rate: no limit


@pytest.mark.parametrize(
    ("count", "size", "sizes"),
    [(10_000, 1250, [1250] * 8), (1001, 1000, [500, 501]), (5, 1000, [5]), (0, 10, [])],
)
def test_chunks_are_at_most_chunk_size_and_as_even_as_possible(count, size, sizes):
    chunks = split_recipients(numbers(count), chunk_size=size, region=None)
    assert sorted(len(c["recipients"]) for c in chunks) == sorted(sizes)


def test_local_numbers_are_read_with_the_region_as_the_bulk_operator_reads_them():
    chunks = split_recipients(["050-123-4567", "+972501234567", "0527654321"], chunk_size=10, region="IL")
    assert [e["to"] for e in chunks[0]["recipients"]] == ["050-123-4567", "0527654321"]


def test_each_chunk_gets_a_whole_share_of_the_total_rate():
    chunks = split_recipients(
        numbers(6), chunk_size="2", total_rate_per_second="250", max_parallel=8, region=None
    )  # rendered Jinja strings, as "{{ params.x }}" gives them
    assert [c["rate_per_second"] for c in chunks] == [31, 31, 31]  # floor(250 / 8): 248/s at most


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"chunk_size": 2.5}, "chunk_size must be an int >= 1"),
        ({"max_parallel": 0}, "max_parallel must be an int >= 1"),
        ({"total_rate_per_second": 3, "max_parallel": 4}, "is below max_parallel"),
        ({"total_rate_per_second": float("inf")}, "finite number > 0"),
        ({"rate_per_second": 10}, "sets rate_per_second itself"),
        ({"max_active_tis_per_dagrun": 2}, "sets max_active_tis_per_dagrun itself"),
    ],
)
def test_arguments_that_cannot_work_fail_when_the_dag_is_parsed(kwargs, message):
    with DAG("campaign_bad_args", schedule=None, start_date=START), pytest.raises(ValueError, match=message):
        whatsapp_campaign(task_id="send", recipients=["972501234567"], template="spring_offer", **kwargs)


def test_defaults_and_what_the_mapped_task_is_given():
    with DAG("campaign_defaults", schedule=None, start_date=START) as dag:
        send = whatsapp_campaign(
            task_id="send", recipients=["972501234567"], template="spring_offer", total_rate_per_second=40
        )
    assert [t.task_id for t in dag.tasks] == ["send_split", "send"]
    assert dag.get_task("send_split").op_kwargs["chunk_size"] == DEFAULT_CHUNK_SIZE == 1000
    assert send.max_active_tis_per_dagrun == send.max_active_tis_per_dag == DEFAULT_MAX_PARALLEL == 4
    assert send.partial_kwargs["resend_unknown"] is False  # at most once, unless the user says otherwise
    # A killed task leaves up to this many unknown, and writes its ledger every 8 messages.
    assert send.partial_kwargs["max_concurrency"] == CAMPAIGN_CONCURRENCY == 16


def test_importing_the_campaign_module_loads_neither_the_engine_nor_the_http_stack():
    probe = (
        "import sys, json, airflow.sdk\n"
        "import airflow_provider_wa019.campaign\n"
        "heavy = ('requests', 'urllib3', 'phonenumbers', 'aiohttp', 'airflow_provider_wa019.bulk',"
        " 'airflow_provider_wa019.validation', 'airflow_provider_wa019.hooks')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    # requests may come with airflow.sdk itself on some releases: only what the campaign adds counts.
    baseline = subprocess.run(
        [sys.executable, "-c", probe.replace("import airflow_provider_wa019.campaign\n", "")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert sorted(set(loaded) - set(json.loads(baseline.strip().splitlines()[-1]))) == []


# --------------------------------------------------------------------------------------------
# Real runs against the simulator
# --------------------------------------------------------------------------------------------


def campaign_dag(dag_id: str, listed: list, **campaign_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:

        @task
        def audience() -> list:
            return listed

        whatsapp_campaign(
            task_id="send",
            recipients=audience(),
            template="spring_offer",
            variables=["{{ name | default('there') }}"],
            retries=1,
            retry_delay=timedelta(milliseconds=1),
            **campaign_kwargs,
        )
    return dag


def test_a_mapped_campaign_sends_once_per_recipient_and_keeps_the_total_rate(sim, airflow_db):
    nums = numbers(45)
    # The same numbers again, spelled differently, at the end of the list: they would land in
    # another chunk than the first copy, whose ledger would not know them.
    listed = [*nums, *(f"+{n[:3]} {n[3:]}" for n in nums[:10])]
    total, parallel = 20, 2  # 10/s per mapped task

    result = run_dag(
        campaign_dag(
            "campaign_run",
            listed,
            chunk_size=15,
            total_rate_per_second=total,
            max_parallel=parallel,
            max_concurrency=4,
        )
    )

    assert result.state == SUCCESS, result.tis
    assert {k: v for k, v in result.tis.items() if isinstance(k, tuple)} == {
        ("send", i): (SUCCESS, 1) for i in range(3)
    }
    assert Counter(r.json["to"] for r in sim.requests_to(TEMPLATE_PATH)) == dict.fromkeys(nums, 1)
    summaries = [result.xcom("send", map_index=i) for i in range(3)]
    assert [s["total"] for s in summaries] == [15, 15, 15]
    assert sum(s["sent"] for s in summaries) == 45
    times = arrivals(sim)
    # Each instance sends 15 at 10/s: 10 at once, 5 a second later. dag.test() starts the next
    # instance right after, so only the one-second hand-over keeps its first 10 out of the
    # previous one's last second: every window then holds at most one instance's share, which
    # is stronger than the total (20) that two instances at once would be held to. 0.7 s
    # windows leave 300 ms for arrival jitter, as in test_bulk's rate test.
    assert busiest_window(times, 0.7) <= total // parallel
    assert times[-1] - times[0] >= 3 * 1.0 + 2 * 1.0  # a second inside each, a second between


def test_the_example_campaign_dag_runs_from_its_conf(sim, airflow_db):
    spec = importlib.util.spec_from_file_location("wa019_example_campaign", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    listed = [{"to": n, "name": f"client {i}"} for i, n in enumerate(numbers(12))] + numbers(12)[:3]

    result = run_dag(module.dag, conf={"recipients": listed, "chunk_size": 5, "total_rate": 40})

    assert result.state == SUCCESS, result.tis
    assert sorted(k for k in result.tis if isinstance(k, tuple)) == [("send_offer", i) for i in range(3)]
    sent = {m["to"]: m for m in sim.sent}
    assert sorted(sent) == numbers(12)
    assert sent[numbers(12)[4]]["variables"] == ["client 4"]
    assert result.xcom("report") == {
        "chunks": 3,
        "total": 12,
        "sent": 12,
        "skipped": 0,
        "failed": 0,
        "invalid": 0,
        "unknown": 0,
    }
    assert busiest_window(arrivals(sim), 0.7) <= 40 // 4
