"""WhatsAppBulkSendOperator hardening: one recipient's render error, recipients given as a Jinja
string, and arguments of the wrong type.

As in test_bulk.py, operator tests run real DAGs (``dag.test()``) against the simulator, and what
was sent is read from the simulator's request log. Render errors that quote the token, and what
the task log says of render errors, are in tests/test_token_leak.py.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta

import pendulum
import pytest
from airflow.providers.common.compat.sdk import AirflowTaskTimeout  # airflow.sdk.exceptions from 3.2
from airflow.sdk import DAG, task
from airflow_support import run_dag

from airflow_provider_wa019.api import SEND_PATH
from airflow_provider_wa019.bulk import (
    BulkSender,
    MemoryLedgerStore,
    ProgressLedger,
    SlidingWindowRateLimiter,
    parse_recipients,
)
from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator
from airflow_provider_wa019.testing import WhatsAppSimulator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
RETRY_FAST = {"retry_delay": timedelta(milliseconds=1)}
SUCCESS, FAILED = "success", "failed"


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim()


@pytest.fixture
def hook(sim) -> WhatsAppAsyncHook:
    """The async hook the engine sends with, as the operator sets it up."""
    hook = WhatsAppAsyncHook()
    hook.message_log_level = logging.DEBUG
    _ = hook.settings  # read on this thread, as the operator does: the engine's loop reuses it
    return hook


def numbers(count: int) -> list[str]:
    return [f"97250{i:07d}" for i in range(count)]


def open_windows(sim: WhatsAppSimulator, nums: list[str]) -> list[str]:
    for number in nums:
        sim.open_window(number)
    return nums


def bulk_dag(dag_id: str, *, retries: int = 1, params: dict | None = None, **op_kwargs) -> DAG:
    op_kwargs.setdefault("body", "Hello {{ to }}")
    with DAG(dag_id, schedule=None, start_date=START, params=params or {}) as dag:
        WhatsAppBulkSendOperator(task_id="bulk", retries=retries, **RETRY_FAST, **op_kwargs)
    return dag


def sent_to(sim: WhatsAppSimulator) -> list[str]:
    return [r.json["to"] for r in sim.requests_to(SEND_PATH)]


# --------------------------------------------------------------------------------------------
# 1. Any exception from rendering one recipient makes that recipient invalid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"body": "Total {{ total / qty }}"},
        {"body": None, "template": "unit", "variables": ["{{ total / qty }}"]},
    ],
    ids=["body", "template variables"],
)
def test_a_render_error_makes_only_that_recipient_invalid(sim, airflow_db, message):
    sim.add_template("unit", "Total {{1}}")
    ok1, zero, ok2 = open_windows(sim, numbers(3))
    recipients = [
        {"to": ok1, "total": 10, "qty": 2},
        {"to": zero, "total": 10, "qty": 0},  # ZeroDivisionError while rendering: not a Jinja error
        {"to": ok2, "total": 9, "qty": 3},
    ]

    result = run_dag(bulk_dag("bulk_render_error", recipients=recipients, max_failure_ratio=0.5, **message))

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert result.xcom("bulk") == {
        "total": 3,
        "sent": 2,
        "skipped": {},
        "failed": {},
        "invalid": 1,
        "unknown": 0,
    }
    results = result.xcom("bulk", key="results")
    assert results[zero] == {
        "status": "invalid",
        "unique": None,
        "reason": None,
        "error": "ZeroDivisionError: division by zero",
    }
    assert {n: r["status"] for n, r in results.items()} == {ok1: "sent", zero: "invalid", ok2: "sent"}
    assert sorted(m["body"] for m in sim.sent) == ["Total 3.0", "Total 5.0"]
    assert zero not in {r.json["to"] for r in sim.requests}


def test_when_no_recipient_renders_the_task_fails_without_retry_and_still_pushes_results(sim, airflow_db):
    nums = open_windows(sim, numbers(3))
    recipients = [{"to": n, "total": 1, "qty": 0} for n in nums]

    result = run_dag(bulk_dag("bulk_render_all_bad", recipients=recipients, body="{{ total / qty }}"))

    assert result.tis["bulk"] == (FAILED, 1)  # over max_failure_ratio: nothing a retry would fix
    assert result.xcom("bulk")["invalid"] == 3
    results = result.xcom("bulk", key="results")
    assert [r["error"] for r in results.values()] == ["ZeroDivisionError: division by zero"] * 3
    assert sim.requests == []


@pytest.mark.parametrize(
    "stop", [KeyboardInterrupt, AirflowTaskTimeout], ids=["KeyboardInterrupt", "timeout"]
)
def test_a_base_exception_while_rendering_still_ends_the_try_and_releases_the_claim(sim, hook, stop):
    # Airflow's timeout (SIGALRM) or SIGINT may strike while the main thread renders a body:
    # the try ends, and with resend_unknown=False the recipient's claim is released (nothing was
    # sent to it), so the next try sends to it instead of reporting it "unknown" forever.
    first, interrupted, last = nums = open_windows(sim, numbers(3))
    recipients, _ = parse_recipients(nums)
    store = MemoryLedgerStore()

    def prepare(recipient):
        if recipient.number == interrupted:
            raise stop()
        return "Hello"

    one_at_a_time = {"max_concurrency": 1, "resend_unknown": False}
    with pytest.raises(stop):
        BulkSender(
            hook.send_message,
            prepare=prepare,
            ledger=ProgressLedger(store),
            aclose=hook.close,
            **one_at_a_time,
        ).run(recipients)
    assert sent_to(sim) == [first]

    retry = BulkSender(
        hook.send_message,
        prepare=lambda r: "Hello",
        ledger=ProgressLedger(store),
        aclose=hook.close,
        **one_at_a_time,
    ).run(recipients)

    assert [o.status for o in retry.results.values()] == ["sent"] * 3
    assert sorted(sent_to(sim)) == sorted(nums)  # each exactly once over the two tries
    assert sent_to(sim)[1:] == [interrupted, last]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("x" * 5000), "ValueError: " + "x" * (1000 - len("ValueError: ") - 3) + "..."),
        (KeyError(), "KeyError"),
        (_Unprintable(), "_Unprintable"),
    ],
    ids=["long", "no text", "unprintable"],
)
def test_render_error_texts_stay_short_and_never_end_the_bulk(error, expected):
    recipients, _ = parse_recipients(["972501234567"])

    def prepare(recipient):
        raise error

    report = BulkSender(lambda n, p: pytest.fail("nothing may be sent"), prepare=prepare).run(recipients)

    assert report.results["972501234567"].error == expected
    assert report.summary()["invalid"] == 1


# --------------------------------------------------------------------------------------------
# 2. recipients as a Jinja string: JSON or a Python literal
# --------------------------------------------------------------------------------------------


def test_recipients_from_params_rendered_as_a_python_list_are_sent(sim, airflow_db):
    plain, dana = open_windows(sim, numbers(2))
    params = {"lst": [plain, {"to": dana, "name": "Dana"}]}
    dag = bulk_dag(
        "bulk_params_list",
        recipients="{{ params.lst }}",
        params=params,
        body="Hi {{ name | default('you') }}",
    )

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert {m["to"]: m["body"] for m in sim.sent} == {plain: "Hi you", dana: "Hi Dana"}
    assert list(result.xcom("bulk", key="results")) == [plain, dana]


def test_recipients_from_an_xcom_pull_string_are_sent(sim, airflow_db):
    nums = open_windows(sim, numbers(3))
    with DAG("bulk_xcom_pull_string", schedule=None, start_date=START) as dag:

        @task
        def upstream() -> list:
            return [nums[0], {"to": nums[1], "vip": True, "note": None}, (nums[2])]

        upstream() >> WhatsAppBulkSendOperator(
            task_id="bulk",
            recipients="{{ ti.xcom_pull(task_ids='upstream') }}",
            body="{{ 'VIP' if vip | default(false) else 'Hi' }}",
        )

    result = run_dag(dag)

    assert result.tis["bulk"] == (SUCCESS, 1)
    assert sorted(sent_to(sim)) == sorted(nums)
    assert {m["to"]: m["body"] for m in sim.sent}[nums[1]] == "VIP"


def test_python_literal_recipients_are_parsed_like_json():
    text = "['+972 50-123-4567', {'to': '972521234567', 'name': 'Dana', 'vip': True, 'x': None}]"
    recipients, duplicates = parse_recipients(text)
    assert [r.number for r in recipients] == ["972501234567", "972521234567"]
    assert recipients[1].values == {"to": "972521234567", "name": "Dana", "vip": True, "x": None}
    assert duplicates == 0
    assert [r.number for r in parse_recipients("('972501234567',)")[0]] == ["972501234567"]
    assert parse_recipients(' ["972501234567"] ')[0][0].number == "972501234567"  # JSON still works


@pytest.mark.parametrize(
    "text",
    [
        "972501234567",  # one number, not a list
        "{'to': '972501234567'}",  # a dict literal
        "['972501234567'",  # cut short
        "[972501234567 + 1]",  # an expression, not a literal: never evaluated
        "[__import__('os').getcwd()]",
        "[{[1]: 2}]",  # a literal that cannot be built (TypeError)
        "[" * 100_000,  # nested too deep for both parsers
        "",
    ],
    ids=["number", "dict", "cut", "expression", "call", "unhashable", "deep", "empty"],
)
def test_strings_that_are_no_list_are_refused_clearly(text):
    with pytest.raises(ValueError, match="recipients is a string, not a list"):
        parse_recipients(text)


# --------------------------------------------------------------------------------------------
# 3. Arguments of the wrong type fail at DAG parse time with a ValueError naming them
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"max_concurrency": "4"}, "max_concurrency"),
        ({"max_concurrency": 4.0}, "max_concurrency"),
        ({"max_concurrency": None}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"skip_on_reasons": 7}, "skip_on_reasons"),
        ({"skip_on_reasons": "78"}, "skip_on_reasons"),
        ({"skip_on_reasons": ["7"]}, "skip_on_reasons"),
        ({"skip_on_reasons": [True]}, "skip_on_reasons"),
        ({"skip_on_reasons": None}, "skip_on_reasons"),
        ({"rate_per_second": float("inf")}, "rate_per_second"),
        ({"rate_per_second": float("nan")}, "rate_per_second"),
        ({"rate_per_second": "5"}, "rate_per_second"),
        ({"rate_per_second": True}, "rate_per_second"),
        ({"rate_per_second": -1}, "rate_per_second"),
        ({"max_failure_ratio": "x"}, "max_failure_ratio"),
        ({"max_failure_ratio": None}, "max_failure_ratio"),
        ({"max_failure_ratio": float("nan")}, "max_failure_ratio"),
        ({"max_failure_ratio": True}, "max_failure_ratio"),
        ({"progress_interval": None}, "progress_interval"),
        ({"progress_interval": "5"}, "progress_interval"),
        ({"progress_interval": float("nan")}, "progress_interval"),
        ({"progress_interval": float("inf")}, "progress_interval"),
        ({"progress_interval": True}, "progress_interval"),
    ],
    ids=lambda value: repr(value) if not isinstance(value, str) else value,
)
def test_wrongly_typed_arguments_fail_at_dag_parse_time(kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument} "):
        WhatsAppBulkSendOperator(task_id="t", recipients=[], body="x", **kwargs)


def test_well_formed_arguments_are_kept():
    op = WhatsAppBulkSendOperator(
        task_id="t",
        recipients=[],
        body="x",
        max_concurrency=32,
        skip_on_reasons={7},
        rate_per_second=0.5,
        max_failure_ratio=1,
        progress_interval=1,
    )
    assert (op.max_concurrency, op.skip_on_reasons, op.rate_per_second) == (32, frozenset({7}), 0.5)
    assert (op.max_failure_ratio, op.progress_interval) == (1.0, 1.0)
    no_skips = WhatsAppBulkSendOperator(task_id="u", recipients=[], body="x", skip_on_reasons=())
    assert no_skips.skip_on_reasons == frozenset()


@pytest.mark.parametrize("rate", [math.inf, -math.inf, math.nan, 0, -1])
def test_engine_and_rate_limiter_refuse_rates_that_are_not_finite_and_positive(rate):
    with pytest.raises(ValueError, match="rate_per_second"):
        SlidingWindowRateLimiter(rate)
    with pytest.raises(ValueError, match="rate_per_second"):
        BulkSender(lambda n, p: None, rate_per_second=rate)
