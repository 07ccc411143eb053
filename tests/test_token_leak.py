"""The API token never shows in anything a user can see: the one module that looks for it.

Each scenario runs the provider as a user would and gathers what it shows; ``assert_token_free``
then searches all of it for the token (and a revoked one) in every spelling: raw; JSON-escaped
(``\\/`` for a slash, as PHP's json_encode writes it, and ``\\uXXXX`` in either case);
percent-encoded (either case); base64, standard and URL-safe, of the token and of
``Bearer <token>``; and the raw token again once JSON and percent escapes are resolved (an answer
that mixes them). The tokens hold "/", "+" and "=", so these spellings all differ.

1. One ``airflow dags test`` run (a subprocess, so the task logs are the real console output) of a
   DAG whose tasks take every path, each through its own connection and server: success, every
   refusal, every transport fault, an answer that is not JSON, invalid input, answers that echo
   the token back (as misconfigured gateways and debugging pages do), a first contact, a bulk
   send with progress lines, and a bulk send whose bodies fail to render, two of them on the
   token. Searched: the console output, the log files under AIRFLOW_HOME, XCom values, rendered
   template fields, and the metadata DB file as a whole (whatever table a leak would land in).
   Each task's part of the log must also say what it is there for (the reason, the masked
   number, the progress), which proves the path ran and its exception text was searched.
2. The same paths through the hook in-process: each exception with its chain of causes,
   attributes and pickle, each result, each ``test_connection`` message, the reprs of the hook,
   its settings and its session, and every log line (stdlib logging and structlog).
3. Template listing and template sends, with faults.
4. An echoed token in each spelling, in a refusal, a 401, a success and an unexpected body.
5. Tokens that cannot be an HTTP header: refused, never quoted.
6. The notifier's failures, as it logs them.
7. The bulk engine's render errors that quote the token.

Airflow's own secret masking is not relied on: under ``airflow dags test`` it is not applied.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import re
import secrets
import traceback
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from airflow_support import FAST, airflow_dags_test, callback_context, latest_run
from fault_support import BrokenServer

from airflow_provider_wa019.api import SEND_PATH
from airflow_provider_wa019.bulk import BulkSender, parse_recipients
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppError,
    WhatsAppResponseError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier
from airflow_provider_wa019.testing import WhatsAppSimulator, refused_address, unresponsive_address

TOKEN = f"tok/LEAK+{secrets.token_hex(6)}=="
REVOKED = f"tok/REVOKED+{secrets.token_hex(6)}=="
CLIENT = "972501234567"  # wrote in the last 24 h
DEPUTY = "972521234567"  # wrote in the last 24 h
STRANGER = "972520000001"  # never wrote
DAG_ID = "wa019_token_leak"


# --------------------------------------------------------------------------------------------
# The search


def spellings(secret: str) -> list[str]:
    """``secret`` as an answer, a log or an encoder could write it."""
    percent = quote(secret, safe="")
    found = {
        secret,
        secret.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in secret),
        "".join(f"\\u{ord(c):04X}" for c in secret),
        percent,
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), percent),
    }
    for text in (secret, f"Bearer {secret}"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            found.add(encode(text.encode()).decode().rstrip("="))
    return sorted(found)


SPELLINGS = {secret: spellings(secret) for secret in (TOKEN, REVOKED)}


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return json.dumps(value, default=repr) + "\n" + repr(value)


def _unescaped(text: str) -> list[str]:
    """``text`` with JSON escapes resolved, then percent-escapes too."""
    json_free = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text).replace("\\/", "/")
    return [json_free, unquote(json_free)]


def assert_token_free(places: Mapping[str, object]) -> None:
    """No spelling of either token in any of ``places`` (name -> text, bytes or any object)."""
    assert places, "nothing was searched"
    for name, value in places.items():
        text = _text(value)
        for variant in (text, *_unescaped(text)):
            for secret, forms in SPELLINGS.items():
                for form in forms:
                    at = variant.find(form)
                    assert at < 0, (
                        f"{'the token' if secret == TOKEN else 'the revoked token'} ({form!r}) is in "
                        f"{name}: ...{variant[max(at - 200, 0) : at + 200]}..."
                    )


def error_texts(err: BaseException) -> str:
    """What a traceback prints of ``err``, and the repr and attributes of it and of its causes
    (the requests/urllib3 exceptions a traceback would print)."""
    parts = ["".join(traceback.format_exception(err))]
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [repr(current), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def test_the_search_finds_every_spelling():
    # The search itself: each spelling of the token, inside other text, is found, and so are
    # spellings that mix escapes.
    mixed = [TOKEN.replace("/", "\\u002f"), TOKEN.replace("/", "%2F"), json.dumps({"t": TOKEN})]
    for form in [*spellings(TOKEN), *mixed]:
        with pytest.raises(AssertionError, match="the token"):
            assert_token_free({"sample": f"before {form} after"})
    assert_token_free({"sample": "Bearer ***", "object": {"unique": "m-1"}, "bytes": b"\x00\xff"})


# --------------------------------------------------------------------------------------------
# Every path, each through its own connection leak_<path> and server

# task id -> (simulator fault, or how its server is made) and a text its log must show.
PATHS: dict[str, tuple[dict | str, str]] = {
    "sent": ({}, "accepted, id"),
    "wrong_token": ("revoked", "reason 3 (wrong API token)"),
    "first_contact": ("first_contact", "reason 8 (first message to this contact"),
    "http_401": ({"status": 401, "body": '{"message": "Unauthorized"}'}, "HTTP 401"),
    "reason_6": ({"reason": 6, "n": 99}, "reason 6 (WhatsApp error, try again)"),
    "rate_limited": ({"status": 429, "retry_after": 1, "n": 99}, "HTTP 429"),
    "server_error": ({"status": 500}, "delivery unknown: 019sms answered HTTP 500"),
    "read_timeout": ({"delay": 1.0}, "no answer from"),
    "html_page": ({"body": "<html><h1>Bad gateway</h1></html>"}, "body is not JSON"),
    "refused": ("refused", "Connection refused"),
    "connect_timeout": ("unresponsive", "could not connect"),
    "cut_body": ("cut_body", "broke off mid-body"),
    "invalid_number": ({}, "invalid to 'call me maybe'"),
    # Answers that quote the request's Authorization header back.
    "echo_in_html": (
        {"status": 400, "body": f"<html><pre>Authorization: Bearer {TOKEN}</pre> rejected</html>"},
        "HTTP 400",
    ),
    "echo_in_reason": (
        {"body": json.dumps({"status": "FAIL", "reason": 2, "message": f"bad request, auth=Bearer {TOKEN}"})},
        "reason 2",
    ),
    "echo_in_success": (
        {"body": json.dumps({"status": "OK", "reason": 1, "unique": "m-1", "debug": f"Bearer {TOKEN}"})},
        "accepted, id m-1",
    ),
}
TO = {"invalid_number": "call me maybe"}


@pytest.fixture
def paths(make_sim, wa019_env) -> Iterator[dict[str, WhatsAppSimulator | None]]:
    """One server per path behind connection ``leak_<path>``; yields the simulators by path."""
    sims: dict[str, WhatsAppSimulator | None] = {}
    with ExitStack() as stack:
        for task_id, (fault, _) in PATHS.items():
            conn_id = f"leak_{task_id}"
            if fault in ("refused", "unresponsive", "cut_body"):
                if fault == "cut_body":
                    base_url = stack.enter_context(BrokenServer("cut_body")).base_url
                else:
                    base_url = stack.enter_context(
                        refused_address() if fault == "refused" else unresponsive_address()
                    )
                wa019_env(host=base_url, password=TOKEN, conn_id=conn_id, **FAST)
                sims[task_id] = None
                continue
            sim = make_sim(
                token=TOKEN,
                connection=conn_id,
                password=REVOKED if fault == "revoked" else TOKEN,
                open_windows=[] if fault == "first_contact" else [CLIENT],
            )
            if isinstance(fault, dict) and fault:
                fault = dict(fault)
                sim.fail_next(fault.pop("n", 1), **fault)
            sims[task_id] = sim
        yield sims


# --------------------------------------------------------------------------------------------
# 1. One DAG run through every path

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from airflow_provider_wa019.operators.whatsapp import WhatsAppBulkSendOperator, WhatsAppSendOperator

SPEC = SPEC_LITERAL

with DAG(SPEC["dag_id"], schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    for task_id in SPEC["sends"]:
        WhatsAppSendOperator(
            task_id=task_id,
            wa019_conn_id="leak_" + task_id,
            to=SPEC["to"].get(task_id, "+972 50-123-4567"),
            # Templated fields that read the connection (not its password) and the task context.
            body="{{ ti.task_id }} via {{ conn.leak_" + task_id + ".host }}",
            retries=0,
        )
    WhatsAppBulkSendOperator(
        task_id="bulk",
        wa019_conn_id="leak_bulk",
        recipients=SPEC["bulk"],
        body="Hi {{ to }}",
        max_concurrency=2,
        progress_interval=0.05,
        max_failure_ratio=1,
        retries=0,
    )
    WhatsAppBulkSendOperator(
        task_id="bulk_render",
        wa019_conn_id="leak_bulk_render",
        recipients=SPEC["render"],
        body=SPEC["render_body"],
        max_failure_ratio=1,
        retries=0,
    )
"""

# Bodies that fail to render for one recipient each: a plain error, a KeyError quoting the full
# number, and two that fail on the token (a KeyError quoting it, as Jinja's own error quotes a
# missing key).
RENDER_BODY = (
    "{% if kind == 'zero' %}{{ 1 / qty }}"
    "{% elif kind == 'number' %}{{ {}.pop(to) }}"
    "{% elif kind == 'key' %}{{ {}.pop(conn.leak_bulk_render.password) }}"
    "{% elif kind == 'jinja' %}{{ {}[conn.leak_bulk_render.password] }}"
    "{% else %}fine{% endif %}"
)


def numbers(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i:07d}" for i in range(count)]


def test_nothing_a_dag_run_shows_carries_the_token(paths, make_sim, tmp_path, airflow_db):
    # The bulk send: 30 open windows, one refused (reason 4), a stranger (8), a local number.
    nums = numbers(30, "97250")
    bulk_sim = make_sim(token=TOKEN, latency=0.01, connection="leak_bulk", open_windows=nums)
    bulk_sim.fail_next(reason=4, to=nums[0])
    recipients = [*nums, STRANGER, "050-123-4567"]
    # The bulk send whose bodies fail to render.
    ok, zero, quoted, key, jinja = render_nums = numbers(5, "97253")
    render_sim = make_sim(token=TOKEN, connection="leak_bulk_render", open_windows=render_nums)
    render = [
        {"to": ok, "kind": "ok"},
        {"to": zero, "kind": "zero", "qty": 0},
        {"to": quoted, "kind": "number"},
        {"to": key, "kind": "key"},
        {"to": jinja, "kind": "jinja"},
    ]
    spec = {
        "dag_id": DAG_ID,
        "sends": list(PATHS),
        "to": TO,
        "bulk": recipients,
        "render": render,
        "render_body": RENDER_BODY,
    }
    (tmp_path / "leak_dag.py").write_text(DAG_FILE.replace("SPEC_LITERAL", repr(spec)))

    result = airflow_dags_test(DAG_ID, dags_folder=tmp_path)

    log = result.output
    run = latest_run(DAG_ID)
    assert result.returncode != 0, result  # most paths fail the run
    for task_id, (_, evidence) in PATHS.items():
        assert evidence in result.task_log(task_id), f"{task_id}: expected {evidence!r} in its log\n{result}"

    # The send operator's log explains each outcome and masks the number.
    assert (run.state_of("sent"), run.state_of("wrong_token")) == ("success", "failed")
    assert f"accepted, id {paths['sent'].sent[0]['unique']}" in result.task_log("sent")
    assert "to ********4567" in result.task_log("sent")
    assert run.state_of("first_contact") == "skipped"
    assert "Skipping this task" in result.task_log("first_contact")

    # The bulk log: progress lines, each recipient masked (in XCom in full, never in the log).
    bulk_log = result.task_log("bulk")
    assert run.state_of("bulk") == "success", bulk_log
    for number in [*recipients, "0501234567", *render_nums]:
        assert number not in log, number
    assert re.search(r"sent \d+/32, failed \d+, \d+ msg/s, ~\d+ s left", bulk_log)
    assert "sent 29/32, failed 1, " in bulk_log  # the last progress line
    assert f"Recipient {'*' * 8}0000: failed, reason 4" in bulk_log
    assert f"Recipient {'*' * 8}0001: skipped, reason 8" in bulk_log
    assert f"Recipient {'*' * 6}4567: invalid" in bulk_log  # 050-123-4567, masked
    assert "Bulk send done: 29/32 sent, skipped 1 (8: 1), failed 1 (4: 1), 1 invalid" in bulk_log

    # Render errors: each recipient invalid on its own, the token blanked, the number masked.
    render_log = result.task_log("bulk_render")
    assert run.state_of("bulk_render") == "success", render_log
    assert [m["to"] for m in render_sim.sent] == [ok]
    assert "Recipient ********0001: invalid: ZeroDivisionError: division by zero" in render_log
    assert "Recipient ********0002: invalid: KeyError: '********0002'" in render_log
    assert "Recipient ********0003: invalid: KeyError: '***'" in render_log
    assert "Recipient ********0004: invalid: UndefinedError: " in render_log
    assert "Bulk send done: 1/5 sent, 4 invalid" in render_log
    results = run.xcom("bulk_render", key="results")
    assert {n: r["status"] for n, r in results.items()} == {
        ok: "sent",
        zero: "invalid",
        quoted: "invalid",
        key: "invalid",
        jinja: "invalid",
    }
    assert results[key]["error"] == "KeyError: '***'"
    assert results[jinja]["error"].startswith("UndefinedError: ")
    assert "***" in results[jinja]["error"]

    places: dict[str, object] = {"task logs (console)": log}
    home = Path(os.environ["AIRFLOW_HOME"])
    for path in sorted((home / "logs").rglob("*")) if (home / "logs").exists() else []:
        if path.is_file():
            places[f"log file {path.relative_to(home)}"] = path.read_bytes()
    places.update(_xcoms_and_rendered_fields())
    places["metadata DB file"] = (home / "airflow.db").read_bytes()
    assert_token_free(places)
    # The search did look at something: the run's XComs and rendered fields are there.
    assert any(k.startswith("xcom sent") for k in places)
    assert "sent via http://127.0.0.1:" in _text(places["rendered fields sent"])


def _xcoms_and_rendered_fields() -> dict[str, object]:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, object] = {}
    with create_session() as session:
        for row in session.scalars(select(XComModel).where(XComModel.dag_id == DAG_ID)):
            found[f"xcom {row.task_id} {row.key}"] = json.dumps(row.value, default=str)
        for row in session.scalars(
            select(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.dag_id == DAG_ID)
        ):
            found[f"rendered fields {row.task_id}"] = json.dumps(row.rendered_fields, default=str)
    return found


# --------------------------------------------------------------------------------------------
# 2. The same paths through the hook, in-process


def test_nothing_the_hook_shows_carries_the_token(paths, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    places: dict[str, object] = {}
    for task_id in PATHS:
        with WhatsAppHook(f"leak_{task_id}") as hook:
            try:
                result = hook.send_message(TO.get(task_id, CLIENT), "hello")
            except WhatsAppError as err:
                places[f"{task_id}: error"] = error_texts(err)
                places[f"{task_id}: pickled error"] = pickle.dumps(err)
            else:
                places[f"{task_id}: result"] = repr(result) + json.dumps(result.to_dict())
            places[f"{task_id}: test_connection"] = hook.test_connection()
            places[f"{task_id}: reprs"] = "\n".join(
                [repr(hook), repr(hook.settings), repr(hook.session.auth), str(hook.session.headers)]
            )
    # Airflow routes hook logs through structlog to stdout; urllib3's go to stdlib logging.
    logs = capsys.readouterr().out + caplog.text
    places["logs"] = logs

    assert str(places["sent: result"]).startswith("SendResult(")
    assert "Traceback" in str(places["read_timeout: error"])
    assert "Bearer ***" in str(places["echo_in_html: error"])  # the echoed token blanked, the rest kept
    # Log lines mask the recipient but its last 4 digits.
    assert "to ********4567" in logs
    assert CLIENT not in logs
    assert_token_free(places)


# --------------------------------------------------------------------------------------------
# 3. Template calls

TEMPLATES = [
    {"name": "order_shipped", "body": "Hi {{1}}, your order {{2}} has shipped.", "template_id": "101"},
    {"name": "welcome", "body": "Welcome to Acme!", "template_id": "102", "language": "en"},
]


def test_template_calls_never_carry_the_token(make_sim, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    sim = make_sim(token=TOKEN, templates=TEMPLATES)
    places: dict[str, object] = {}
    with WhatsAppHook() as hook:
        templates = hook.get_templates()
        result = hook.send_template(CLIENT, templates[0], ["Dana", "A-1"])
        places["templates"] = repr(templates)
        places["result"] = repr(result) + json.dumps(result.to_dict())
        for fault in ({"status": 500}, {"status": 401}, {"reason": 3}, {"body": "oops"}):
            sim.fail_next(**fault)
            with pytest.raises(WhatsAppError) as err:
                hook.send_template(CLIENT, "welcome")
            places[f"send_template {fault}"] = error_texts(err.value)
            sim.fail_next(**fault)
            with pytest.raises(WhatsAppError) as err:
                hook.get_templates()
            places[f"get_templates {fault}"] = error_texts(err.value)
    places["logs"] = capsys.readouterr().out + caplog.text
    assert_token_free(places)


# --------------------------------------------------------------------------------------------
# 4. A token echoed back in each spelling

ECHOES = {
    "PHP json_encode": f'"echo":"Bearer {TOKEN.replace("/", chr(92) + "/")}"',
    "unicode escapes": '"echo":"Bearer ' + "".join(f"\\u{ord(c):04X}" for c in TOKEN) + '"',
    "percent-encoded": f'"echo":"Authorization=Bearer%20{quote(TOKEN, safe="")}"',
    "raw": f'"echo":"Bearer {TOKEN}"',
    "base64 of the header": f'"echo":"{base64.b64encode(f"Bearer {TOKEN}".encode()).decode()}"',
    "base64url of the token": f'"echo":"{base64.urlsafe_b64encode(TOKEN.encode()).decode()}"',
}


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim(token=TOKEN, open_windows=[CLIENT])


@pytest.fixture
def hook(sim) -> Iterator[WhatsAppHook]:
    with WhatsAppHook() as h:
        yield h


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_an_echoed_token_is_blanked_in_refusals(sim, hook, echo):
    sim.fail_next(body='{"status":"FAIL","reason":4,"message":"bad to",' + echo + "}")
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert_token_free(
        {"error": error_texts(err.value), "response": err.value.response, "pickle": pickle.dumps(err.value)}
    )
    assert "***" in json.dumps(err.value.response)


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_an_echoed_token_is_blanked_in_a_401(sim, hook, echo):
    sim.fail_next(status=401, body="{" + echo + "}")
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert err.value.reason == 3
    assert_token_free({"error": error_texts(err.value), "response": err.value.response})


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_an_echoed_token_is_blanked_in_xcom_of_a_success(sim, hook, echo):
    sim.fail_next(body='{"status":"OK","reason":1,"unique":"m-1",' + echo + "}")
    result = hook.send_message(CLIENT, "hi")
    assert_token_free({"XCom": result.to_dict(), "raw": dict(result.raw), "repr": repr(result)})


@pytest.mark.parametrize("echo", ECHOES.values(), ids=list(ECHOES))
def test_an_echoed_token_is_blanked_in_an_unexpected_body(sim, hook, echo):
    sim.fail_next(body="[{" + echo + "}]")
    with pytest.raises(WhatsAppResponseError) as err:
        hook.send_message(CLIENT, "hi")
    assert_token_free({"error": error_texts(err.value), "excerpt": err.value.body_excerpt})


# --------------------------------------------------------------------------------------------
# 5. A token that cannot be an HTTP header


@pytest.mark.parametrize("bad", ["s3cr\nEt", "s3cr\rEt", "s3crö€Et", "s3cr Et", "s3cr\x00Et"])
def test_a_token_that_cannot_be_a_header_is_refused_and_never_quoted(sim, wa019_env, bad):
    wa019_env(sim, password=bad, **FAST)
    with WhatsAppHook() as hook, pytest.raises(WhatsAppConfigError, match="'wa019_default'") as err:
        hook.send_message(CLIENT, "hi")
    assert "s3cr" not in str(err.value)
    assert "Et" not in str(err.value)
    assert not err.value.retryable
    assert sim.requests == []


# --------------------------------------------------------------------------------------------
# 6. The notifier's failures


def test_the_notifiers_failures_are_logged_with_the_reason_and_without_the_token(
    make_sim, wa019_env, capsys, caplog
):
    caplog.set_level(logging.INFO)
    sim = make_sim(token=TOKEN, password=REVOKED, open_windows=[CLIENT])
    WhatsAppNotifier(to=[CLIENT, DEPUTY], body="{{ ti.task_id }} failed")(callback_context())
    first_requests = len(sim.requests)
    wa019_env(sim, **FAST)  # the right token again
    WhatsAppNotifier(to=[STRANGER, CLIENT])(callback_context())
    logs = capsys.readouterr().out + caplog.text
    assert "not sent: 019sms refused the message: reason 3 (wrong API token)" in logs
    assert "Not trying the other recipients" in logs
    assert first_requests == 1  # a wrong token stops the loop: the deputy would get the same refusal
    assert "reason 8 (first message to this contact" in logs
    assert "reached 1 of 2 recipient(s)" in logs
    assert "to ********4567 not sent" in logs  # numbers are masked
    assert STRANGER not in logs
    assert_token_free({"logs": logs})


# --------------------------------------------------------------------------------------------
# 7. The bulk engine's render errors


def test_a_render_error_quoting_the_token_is_typed_redacted_and_masked_by_the_bulk_engine(make_sim, caplog):
    ok, bad = nums = numbers(2, "97250")
    sim = make_sim(token=TOKEN, open_windows=nums)
    recipients, _ = parse_recipients(nums)

    def prepare(recipient):
        if recipient.number == bad:
            raise RuntimeError(f"lookup with {TOKEN} for {bad} failed")
        return "Hello"

    log = logging.getLogger("wa019.test_token_leak")
    caplog.set_level(logging.INFO, logger=log.name)
    with WhatsAppHook() as hook:
        hook.message_log_level = logging.DEBUG
        hook.get_conn()  # built once before worker threads share it, as the operator does
        report = BulkSender(
            lambda n, body: hook.send_message(n, body), prepare=prepare, secrets=[TOKEN], log=log
        ).run(recipients)

    assert report.results[bad].status == "invalid"
    assert report.results[bad].error == f"RuntimeError: lookup with *** for {bad} failed"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Recipient ********0001: invalid: RuntimeError: lookup with *** for ********0001 failed" in text
    assert bad not in text
    assert [r.json["to"] for r in sim.requests_to(SEND_PATH)] == [ok]
    assert_token_free({"log": text, "report": repr(report.results)})
