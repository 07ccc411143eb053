"""Template messages: the hook's get_templates/send_template against the simulator, and the
template operator and the send operator's 24-hour-window fallback in real task runs."""

from __future__ import annotations

import importlib.util
from datetime import timedelta
from pathlib import Path

import pendulum
import pytest
from airflow.sdk import DAG, task
from airflow_support import FAST, run_dag

from airflow_provider_wa019.api import TEMPLATE_PATH, WhatsAppTemplate
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppDeliveryUnknownError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator, WhatsAppSendTemplateOperator

CLIENT = "972501234567"  # wrote to us just now: free-form allowed
STRANGER = "972520000001"  # never wrote: reason 8
LAPSED = "972530000002"  # wrote 25 h ago: reason 7
START = pendulum.datetime(2026, 1, 1, tz="UTC")
TEMPLATES = [
    {"name": "order_shipped", "body": "Hi {{1}}, your order {{2}} has shipped.", "template_id": "101"},
    {"name": "welcome", "body": "Welcome to Acme!", "template_id": "102", "language": "en"},
    {"name": "draft", "body": "Soon {{1}}", "template_id": "103", "status": "pending"},
]
SHIPPED = "Hi {{1}}, your order {{2}} has shipped."
EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"


@pytest.fixture
def sim(make_sim):
    simulator = make_sim(templates=TEMPLATES, open_windows=[CLIENT])
    simulator.open_window(LAPSED, at=simulator.now().subtract(hours=25))
    return simulator


@pytest.fixture
def hook(sim):
    with WhatsAppHook() as h:
        yield h


def shipped() -> WhatsAppTemplate:
    return WhatsAppTemplate(
        template_id="101", name="order_shipped", language="he", body=SHIPPED, status="approved"
    )


# --- get_templates --------------------------------------------------------------------------


def test_get_templates_returns_typed_immutable_templates(sim, hook):
    templates = hook.get_templates()

    assert [t.name for t in templates] == ["order_shipped", "welcome", "draft"]
    first = templates[0]
    assert isinstance(first, WhatsAppTemplate)
    assert (first.template_id, first.language, first.body, first.status) == ("101", "he", SHIPPED, "approved")
    assert first.variable_count == 2
    assert templates[1].variable_count == 0
    assert first.raw["category"] == "UTILITY"
    assert first.sendable
    assert not templates[2].sendable
    assert first.render(["Dana", "A-7"]) == "Hi Dana, your order A-7 has shipped."
    with pytest.raises(AttributeError):
        first.name = "other"
    with pytest.raises(TypeError):
        first.raw["name"] = "other"
    [request] = sim.requests
    assert (request.method, request.path) == ("GET", f"/whatsapp-api/get-phone-templates/{sim.sender}")
    assert sim.sent == []


def test_get_templates_by_id_and_by_phone(sim, hook):
    assert [t.name for t in hook.get_templates("102")] == ["welcome"]
    assert [t.name for t in hook.get_templates(102)] == ["welcome"]
    assert hook.get_templates("999") == []
    assert [t.name for t in hook.get_templates(phone="+972 77-123-4567")] == [t["name"] for t in TEMPLATES]
    assert [r.path for r in sim.requests] == [
        f"/whatsapp-api/get-phone-templates/{sim.sender}/102",
        f"/whatsapp-api/get-phone-templates/{sim.sender}/102",
        f"/whatsapp-api/get-phone-templates/{sim.sender}/999",
        f"/whatsapp-api/get-phone-templates/{sim.sender}",
    ]


def test_get_templates_refusals(sim, hook, wa019_env):
    with pytest.raises(WhatsAppAPIError) as err:
        hook.get_templates(phone="972779999999")
    assert err.value.reason == 2
    assert "phone not found" in str(err.value)

    wa019_env(sim, conn_id="wa019_bad", password="no")
    with pytest.raises(WhatsAppAPIError) as err:
        WhatsAppHook("wa019_bad").get_templates()
    assert err.value.reason == 3

    sim.fail_next(body="<html>maintenance</html>")
    with pytest.raises(WhatsAppResponseError):
        hook.get_templates()
    # A listing sends nothing: a lost answer is "try again", never "delivery unknown".
    sim.fail_next(status=500)
    with pytest.raises(WhatsAppTransientError, match="template listing"):
        hook.get_templates()


def test_templates_path_override(sim, wa019_env):
    wa019_env(sim, templates_path="/v2/templates/{phone}", **FAST)
    with pytest.raises(WhatsAppResponseError, match="HTTP 404"):
        WhatsAppHook().get_templates("5")
    assert sim.requests[-1].path == f"/v2/templates/{sim.sender}/5"


# --- send_template --------------------------------------------------------------------------


def test_send_template_matches_the_contract_and_works_with_the_window_closed(sim, hook):
    result = hook.send_template("+972 52-000-0001", "order_shipped", ["Dana", 7])

    [request] = sim.requests
    assert (request.method, request.path) == ("POST", TEMPLATE_PATH)
    assert request.json == {
        "from": sim.sender,
        "to": STRANGER,
        "name": "order_shipped",
        "headerType": 1,
        "bodyVariable1": "Dana",
        "bodyVariable2": "7",
    }
    [sent] = sim.sent
    assert sent["kind"] == "template"
    assert result.unique == sent["unique"]
    assert result.body == "Hi Dana, your order 7 has shipped."
    assert result.conversation_time_left == pendulum.duration(hours=24)
    assert result.template_time_left == pendulum.duration(0)


def test_a_template_opens_a_conversation_but_not_the_free_form_window(sim, hook):
    hook.send_template(STRANGER, shipped(), ["Dana", "A-1"])
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(STRANGER, "free-form after a template")
    assert err.value.reason == 7
    sim.open_window(STRANGER)  # the client replies
    assert hook.send_message(STRANGER, "thanks for your reply").unique == sim.sent[-1]["unique"]


def test_media_header(sim, hook):
    hook.send_template(CLIENT, "welcome", header_type=5, header_link="https://acme.test/terms.pdf")
    hook.send_template(CLIENT, "welcome", header_type="3", header_link="https://acme.test/logo.png")
    first, second = (r.json for r in sim.requests)
    assert (first["headerType"], first["headerLink"]) == (5, "https://acme.test/terms.pdf")
    assert (second["headerType"], second["headerLink"]) == (3, "https://acme.test/logo.png")
    hook.send_template(CLIENT, "welcome")
    assert sim.requests[-1].json["headerType"] == 1
    assert "headerLink" not in sim.requests[-1].json


TEN = [str(i) for i in range(1, 11)]


@pytest.mark.parametrize(
    ("template", "variables", "kwargs", "field", "fragment"),
    [
        ("order_shipped", [*TEN, "11"], {}, "variables", "at most 10"),
        ("order_shipped", ["Dana", ""], {}, "variables[1]", "empty value for {{2}}"),
        ("order_shipped", ["Dana", "   "], {}, "variables[1]", "empty value"),
        ("order_shipped", ["Dana", None], {}, "variables[1]", "got NoneType"),
        ("order_shipped", ["Dana", True], {}, "variables[1]", "got bool"),
        ("order_shipped", "Dana", {}, "variables", "expected a list"),
        ("welcome", [], {"header_type": 3}, "header_link", "https link"),
        (
            "welcome",
            [],
            {"header_type": 4, "header_link": "http://acme.test/v.mp4"},
            "header_link",
            "https://",
        ),
        ("welcome", [], {"header_type": 5, "header_link": "https://"}, "header_link", "https://"),
        ("welcome", [], {"header_type": 2}, "header_type", "1 (none)"),
        ("welcome", [], {"header_type": "video"}, "header_type", "1 (none)"),
        ("welcome", [], {"header_link": "https://acme.test/a.png"}, "header_link", "needs header_type"),
        ("", [], {}, "template", "template name"),
        (None, [], {}, "template", "template name"),
        (shipped(), ["Dana"], {}, "variables", "takes 2 value(s), got 1"),
        (shipped(), ["Dana", "A-1", "extra"], {}, "variables", "takes 2 value(s), got 3"),
        (shipped(), ["Dana", "x" * 1000], {}, "variables", "at most 1024"),
        (
            WhatsAppTemplate(
                template_id="9", name="draft", language="he", body="Soon {{1}}", status="PENDING"
            ),
            ["x"],
            {},
            "template",
            "only approved templates",
        ),
        ("order_shipped", ["Dana", "A-1"], {"sender": "12"}, "sender", "not a possible"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, str) else None,
)
def test_invalid_template_sends_are_refused_before_any_request(
    sim, hook, template, variables, kwargs, field, fragment
):
    with pytest.raises(WhatsAppValidationError) as err:
        hook.send_template(CLIENT, template, variables, **kwargs)
    assert err.value.field == field
    assert fragment in str(err.value)
    assert sim.requests == []


def test_limits_are_inclusive(sim, hook):
    # 1024 characters exactly, and 10 variables, are allowed.
    body_len = len("Hi , your order  has shipped.")
    hook.send_template(CLIENT, shipped(), ["D", "x" * (1024 - body_len - 1)])
    assert len(sim.sent[-1]["body"]) == 1024
    sim.add_template("ten", " ".join(f"{{{{{i}}}}}" for i in range(1, 11)))
    hook.send_template(CLIENT, "ten", TEN, check_template=True)
    assert sim.sent[-1]["body"] == " ".join(TEN)


def test_check_template_lists_once_per_hook_and_refuses_before_sending(sim, hook):
    with pytest.raises(WhatsAppValidationError, match="takes 2 value"):
        hook.send_template(CLIENT, "order_shipped", ["Dana"], check_template=True)
    with pytest.raises(WhatsAppValidationError, match="has no such template"):
        hook.send_template(CLIENT, "no_such_name", [], check_template=True)
    with pytest.raises(WhatsAppValidationError, match="'pending'"):
        hook.send_template(CLIENT, "draft", ["x"], check_template=True)
    hook.send_template(CLIENT, "order_shipped", ["Dana", "A-1"], check_template=True)
    hook.send_template(LAPSED, "order_shipped", ["Noa", "A-2"], check_template=True)
    assert [r.method for r in sim.requests] == ["GET", "POST", "POST"]
    assert len(sim.sent) == 2


def test_without_a_known_body_the_api_judges(sim, hook):
    # A bare name: no listing request; the simulator refuses the wrong count with reason 2.
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_template(CLIENT, "order_shipped", ["Dana"])
    assert err.value.reason == 2
    assert [r.method for r in sim.requests] == ["POST"]


def test_template_retries_and_errors_follow_send_message(sim, hook):
    sim.fail_next(reason=6, path=TEMPLATE_PATH)
    hook.send_template(CLIENT, "welcome")
    assert len(sim.requests_to(TEMPLATE_PATH)) == 2
    sim.fail_next(status=503, path=TEMPLATE_PATH)
    hook.send_template(CLIENT, "welcome")
    assert len(sim.requests_to(TEMPLATE_PATH)) == 4

    sim.fail_next(status=500, path=TEMPLATE_PATH)
    with pytest.raises(WhatsAppDeliveryUnknownError):
        hook.send_template(CLIENT, "welcome")
    assert len(sim.requests_to(TEMPLATE_PATH)) == 5  # never retried: it may have gone out
    sim.fail_next(reason=3, path=TEMPLATE_PATH)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_template(CLIENT, "welcome")
    assert err.value.reason == 3
    assert not err.value.retryable


def test_template_path_override(sim, wa019_env):
    wa019_env(sim, template_path="/v2/sendTemplate", **FAST)
    with pytest.raises(WhatsAppResponseError, match="HTTP 404"):
        WhatsAppHook().send_template(CLIENT, "welcome")
    assert sim.requests[-1].path == "/v2/sendTemplate"


# --- operators in real task runs --------------------------------------------------------------


SUCCESS, SKIPPED, FAILED = "success", "skipped", "failed"


def template_dag(dag_id: str, *, retries: int = 0, native: bool = False, **op_kwargs) -> DAG:
    op_kwargs.setdefault("to", CLIENT)
    op_kwargs.setdefault("template", "order_shipped")
    op_kwargs.setdefault("variables", ["{{ params.name }}", "{{ params.order }}"])
    with DAG(
        dag_id,
        schedule=None,
        start_date=START,
        params={"name": "Dana", "order": "A-7"},
        render_template_as_native_obj=native,
    ) as dag:
        WhatsAppSendTemplateOperator(
            task_id="send", retries=retries, retry_delay=timedelta(milliseconds=1), **op_kwargs
        )
    return dag


def test_template_operator_returns_the_id_and_pushes_the_response(sim, airflow_db):
    result = run_dag(template_dag("tpl_op_success", to=STRANGER))

    assert result.tis["send"] == (SUCCESS, 1)
    [sent] = sim.sent
    assert sent["kind"] == "template"
    assert sent["variables"] == ["Dana", "A-7"]
    assert result.xcom("send") == sent["unique"]
    response = result.xcom("send", key="response")
    assert response["unique"] == sent["unique"]
    assert response["body"] == "Hi Dana, your order A-7 has shipped."


@pytest.mark.parametrize("native", [False, True], ids=["string-rendering", "native-rendering"])
def test_template_operator_variables_from_an_upstream_xcom_list(sim, airflow_db, native):
    with DAG(
        f"tpl_op_xcom_{native}", schedule=None, start_date=START, render_template_as_native_obj=native
    ) as dag:

        @task
        def values() -> list:
            return ["Noa", 1234]

        send = WhatsAppSendTemplateOperator(
            task_id="send",
            to=CLIENT,
            template="order_shipped",
            variables="{{ ti.xcom_pull(task_ids='values') }}",
        )
        values() >> send

    result = run_dag(dag)

    assert result.tis["send"] == (SUCCESS, 1)
    assert sim.requests[-1].json["bodyVariable1"] == "Noa"
    assert sim.requests[-1].json["bodyVariable2"] == "1234"


def test_template_operator_variables_as_an_xcomarg(sim, airflow_db):
    with DAG("tpl_op_xcomarg", schedule=None, start_date=START) as dag:

        @task
        def values() -> list[str]:
            return ["Lior", "B-2"]

        WhatsAppSendTemplateOperator(task_id="send", to=CLIENT, template="order_shipped", variables=values())

    assert run_dag(dag).tis["send"] == (SUCCESS, 1)
    assert sim.sent[-1]["variables"] == ["Lior", "B-2"]


@pytest.mark.parametrize(
    "op_kwargs",
    [
        {"variables": ["{{ params.name }}", ""]},
        {"variables": [str(i) for i in range(11)]},
        {"template": "welcome", "variables": [], "header_type": 3, "header_link": "http://acme.test/a.png"},
        {"template": shipped(), "variables": ["only one"]},
        {"check_template": True, "variables": ["only one"]},
        {"to": "not a number"},
    ],
    ids=[
        "empty-variable",
        "eleven-variables",
        "http-media-link",
        "count-known-body",
        "count-checked",
        "bad-to",
    ],
)
def test_template_operator_invalid_input_fails_without_retry_or_send(sim, airflow_db, op_kwargs):
    result = run_dag(template_dag("tpl_op_invalid", retries=2, **op_kwargs))

    assert result.tis["send"] == (FAILED, 1)
    assert sim.requests_to(TEMPLATE_PATH) == []
    assert sim.sent == []


def test_template_operator_refusal_and_transient_error(sim, airflow_db):
    # Unknown template: reason 2, a bad request, failed without retry.
    result = run_dag(template_dag("tpl_op_unknown", retries=1, template="nope", variables=[]))
    assert result.tis["send"] == (FAILED, 1)
    # Reason 6 on every try: the hook's 3 tries, then Airflow's retry (3 more).
    sim.fail_next(reason=6, n=99, path=TEMPLATE_PATH)
    result = run_dag(template_dag("tpl_op_reason6", retries=1))
    assert result.tis["send"] == (FAILED, 2)
    assert len(sim.requests_to(TEMPLATE_PATH)) == 1 + 6


# --- the send operator's fallback -------------------------------------------------------------


def fallback_dag(dag_id: str, to: str, *, retries: int = 0, **op_kwargs) -> DAG:
    op_kwargs.setdefault("fallback_template", "order_shipped")
    op_kwargs.setdefault("fallback_variables", ["{{ params.name }}", "{{ params.order }}"])
    with DAG(dag_id, schedule=None, start_date=START, params={"name": "Dana", "order": "A-7"}) as dag:
        WhatsAppSendOperator(
            task_id="send",
            to=to,
            body="Hi {{ params.name }}, order {{ params.order }} shipped",
            retries=retries,
            retry_delay=timedelta(milliseconds=1),
            **op_kwargs,
        )
    return dag


@pytest.mark.parametrize(("to", "reason"), [(LAPSED, 7), (STRANGER, 8)], ids=["reason-7", "reason-8"])
def test_fallback_on_a_closed_window(sim, airflow_db, to, reason):
    result = run_dag(fallback_dag(f"fallback_{reason}", to, retries=1))

    assert result.tis["send"] == (SUCCESS, 1)
    free_form = sim.requests_to("/api/whatsapp/sendMessage")
    assert len(free_form) == 1
    assert free_form[0].response_json["reason"] == reason
    [template_request] = sim.requests_to(TEMPLATE_PATH)
    assert template_request.json["name"] == "order_shipped"
    assert template_request.json["to"] == to
    [sent] = sim.sent
    assert sent["kind"] == "template"
    assert sent["body"] == "Hi Dana, your order A-7 has shipped."
    assert result.xcom("send") == sent["unique"]
    assert result.xcom("send", key="sent_as") == "template"
    assert result.xcom("send", key="response")["unique"] == sent["unique"]


def test_no_fallback_needed_sends_the_message(sim, airflow_db):
    result = run_dag(fallback_dag("fallback_not_needed", CLIENT))

    assert result.tis["send"] == (SUCCESS, 1)
    [sent] = sim.sent
    assert sent["kind"] == "message"
    assert sim.requests_to(TEMPLATE_PATH) == []
    assert result.xcom("send") == sent["unique"]
    assert result.xcom("send", key="sent_as") == "message"


def test_without_a_fallback_the_closed_window_still_skips(sim, airflow_db):
    result = run_dag(fallback_dag("fallback_none", STRANGER, fallback_template=None))
    assert result.tis["send"] == (SKIPPED, 1)
    assert sim.requests_to(TEMPLATE_PATH) == []


# (fault on the free-form send, final state, try number, free-form requests)
NO_FALLBACK = {
    "reason 2": ({"reason": 2}, FAILED, 1, 1),
    "reason 3": ({"reason": 3}, FAILED, 1, 1),
    "reason 4": ({"reason": 4}, FAILED, 1, 1),
    "reason 5": ({"reason": 5}, FAILED, 1, 1),
    "reason 6 throughout": ({"reason": 6, "n": 99}, FAILED, 1, 3),
    "undocumented reason 9": ({"reason": 9}, FAILED, 1, 1),
    "HTTP 500": ({"status": 500}, FAILED, 1, 1),
}


@pytest.mark.parametrize("case", NO_FALLBACK, ids=list(NO_FALLBACK))
def test_no_fallback_on_other_reasons(sim, airflow_db, case):
    fault, state, try_number, requests = NO_FALLBACK[case]
    fault = dict(fault)
    sim.fail_next(fault.pop("n", 1), path="/api/whatsapp/sendMessage", **fault)

    result = run_dag(fallback_dag(f"fallback_other_{abs(hash(case))}", STRANGER))

    assert result.tis["send"] == (state, try_number)
    assert len(sim.requests_to("/api/whatsapp/sendMessage")) == requests
    assert sim.requests_to(TEMPLATE_PATH) == []
    assert sim.sent == []


def test_a_refused_fallback_ends_the_task_by_its_own_reason(sim, airflow_db):
    # No such template: reason 2, not retried even with retries left.
    result = run_dag(fallback_dag("fallback_refused", LAPSED, retries=2, fallback_template="nope"))
    assert result.tis["send"] == (FAILED, 1)
    assert len(sim.requests_to(TEMPLATE_PATH)) == 1
    # Reason 6 on every template try: retryable, so Airflow's retry runs the whole task again.
    sim.fail_next(reason=6, n=99, path=TEMPLATE_PATH)
    result = run_dag(fallback_dag("fallback_reason6", LAPSED, retries=1))
    assert result.tis["send"] == (FAILED, 2)
    assert sim.sent == []
    # Invalid fallback variables: failed, nothing sent.
    result = run_dag(fallback_dag("fallback_invalid", LAPSED, retries=2, fallback_variables=["Dana", ""]))
    assert result.tis["send"] == (FAILED, 1)
    assert sim.sent == []


def test_fallback_variables_are_templated_from_xcom(sim, airflow_db):
    with DAG("fallback_xcom", schedule=None, start_date=START) as dag:

        @task
        def customer() -> dict:
            return {"name": "Tal", "order": "C-3"}

        send = WhatsAppSendOperator(
            task_id="send",
            to=STRANGER,
            body="hi",
            fallback_template="{{ 'order_' ~ 'shipped' }}",
            fallback_variables=[
                "{{ ti.xcom_pull(task_ids='customer')['name'] }}",
                "{{ ti.xcom_pull(task_ids='customer')['order'] }}",
            ],
        )
        customer() >> send

    result = run_dag(dag)

    assert result.xcom("send", key="sent_as") == "template"
    assert sim.sent[-1]["body"] == "Hi Tal, your order C-3 has shipped."


# --- example DAG ------------------------------------------------------------------------------


def load_example(name: str) -> DAG:
    spec = importlib.util.spec_from_file_location(f"wa019_{name}", EXAMPLE_DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dag


def test_example_template_dag_runs_against_the_simulator(sim, airflow_db):
    sim.add_template("invoice_ready", "Hi {{1}}, invoice {{2}} of {{3}} is attached.")
    dag = load_example("example_whatsapp_template")

    result = run_dag(dag, conf={"customer": "+972 52-000-0001"})  # never wrote to us

    assert result.state == SUCCESS, result.tis
    assert result.xcom("confirm_order", key="sent_as") == "template"
    kinds = {m["template"]: m for m in sim.sent}
    assert kinds["order_shipped"]["body"] == "Hi Dana, your order A-1001 has shipped."
    assert kinds["invoice_ready"]["headerLink"] == "https://example.com/invoices/A-1001.pdf"
    assert kinds["invoice_ready"]["body"] == "Hi Dana, invoice INV-A-1001 of 120.00 ILS is attached."
