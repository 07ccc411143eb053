"""Defects found by an adversarial pass (hardening, round 2), each pinned by a test.

Hook-side items: numbers read in the right country, answers of any size or pace, connection
extras that are wrong in every way a form allows, odd ``unique`` ids and timers, errors that
copy. Every case runs against real HTTP on 127.0.0.1 (the simulator, or a raw socket server where
the simulator is too well-behaved), and "refused before sending" is checked by the server's
record. The fault matrix (tests/test_faults.py) holds the rows for 502/504, Retry-After, proxies,
deep JSON, oversize answers and gzip bombs; tests/test_token_leak.py the token echoed back in
every spelling (item 3) and tokens that cannot be a header (item 4).
"""

from __future__ import annotations

import copy
import json
import pickle
import tracemalloc
from collections.abc import Iterator

import pendulum
import phonenumbers
import pytest
from airflow import __version__ as airflow_version
from airflow.sdk import DAG, task
from airflow_support import FAST, WA019_CONN_ID, run_dag, set_connection_env
from fault_support import canned_server, gzip_bomb
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from airflow_provider_wa019.api import MAX_UNIQUE_CHARS, parse_send_response
from airflow_provider_wa019.bulk import BulkSender
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier
from airflow_provider_wa019.testing import WhatsAppSimulator, refused_address
from airflow_provider_wa019.validation import normalize_number

CLIENT = "972501234567"
# Base64 tokens hold "/" and "+": PHP's json_encode writes "/" as "\/".
TOKEN = "eyJhbGciOi/J9.abc+def/ghi=="
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim(token=TOKEN, templates=[{"name": "hello", "body": "Hi {{1}}"}], open_windows=[CLIENT])


@pytest.fixture
def hook(sim) -> Iterator[WhatsAppHook]:
    with WhatsAppHook() as h:
        yield h


# --------------------------------------------------------------------------------------------
# 1. Local numbers go to another country


@pytest.mark.parametrize(
    ("written", "region", "expected"),
    [
        ("(202) 555-0123", "US", "12025550123"),  # was 2025550123: Egypt
        ("9123456789", "IN", "919123456789"),  # was 9123456789
        ("612345678", "FR", "33612345678"),  # was an Australian number
        ("050-123-4567", "IL", "972501234567"),
        ("972501234567", "IL", "972501234567"),  # the region's own country code is understood
        ("011 972 50 123 4567", "US", "972501234567"),  # the US international call prefix
        ("00 972 50 123 4567", "US", "972501234567"),
        ("+33 6 12 34 56 78", "US", "33612345678"),
    ],
)
def test_digits_are_read_in_the_connections_region(written, region, expected):
    assert normalize_number(written, region=region) == expected


@pytest.mark.parametrize(
    ("written", "region"),
    [
        ("0972501234567", "IL"),  # was 972972501234567: trunk prefix before international digits
        ("4915123456789", "DE"),  # a German landline or +49 151...: both valid readings
        ("33612345678", "US"),  # international digits without + are not a US number
    ],
)
def test_ambiguous_or_foreign_digits_are_refused_before_sending(sim, wa019_env, written, region):
    # With a region set, the sender too is read in it: written with + it is international.
    wa019_env(sim, sender="+" + sim.sender, default_region=region, **FAST)
    with WhatsAppHook() as hook, pytest.raises(WhatsAppValidationError, match=r"with \+|ambiguous") as err:
        hook.send_message(written, "hi")
    assert err.value.field == "to"
    assert sim.requests == []


NATIONAL_REGIONS = ["IL", "US", "IN", "FR", "GB", "DE"]
NUMBER_TYPES = [
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
]


@st.composite
def valid_national_numbers(draw):
    """A valid number of one of the regions: (its national spelling, E.164 digits, region)."""
    region = draw(st.sampled_from(NATIONAL_REGIONS))
    sample = phonenumbers.example_number_for_type(region, draw(st.sampled_from(NUMBER_TYPES)))
    assume(sample is not None)
    nsn = str(sample.national_number)
    keep = draw(st.integers(min_value=1, max_value=min(4, len(nsn))))
    digits = nsn[:keep] + "".join(draw(st.sampled_from("0123456789")) for _ in nsn[keep:])
    number = phonenumbers.parse(f"+{sample.country_code}{digits}", None)
    assume(phonenumbers.is_valid_number(number) and phonenumbers.region_code_for_number(number) == region)
    national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    return national, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:], region


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(case=valid_national_numbers())
def test_a_nationally_formatted_number_round_trips_in_its_region(case):
    national, e164, region = case
    assert normalize_number(national, region=region) == e164


@pytest.mark.parametrize("value", [-972501234567, "-972501234567", " -972 50 123 4567"])
def test_negative_numbers_are_refused(value):
    with pytest.raises(WhatsAppValidationError, match=r"negative|'-'"):
        normalize_number(value)


# --------------------------------------------------------------------------------------------
# 5. Deep JSON where the hook decodes a 401


def test_a_deeply_nested_401_body_is_still_a_token_refusal(sim, hook):
    sim.fail_next(status=401, body="[" * 100_000 + "]" * 100_000)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.response) == (3, {})


# --------------------------------------------------------------------------------------------
# 7. A dead proxy is "not sent": the bulk's breaker trips


def test_a_bulk_through_a_dead_proxy_stops_after_the_breaker_streak(sim, wa019_env):
    with refused_address() as proxy:
        wa019_env(sim, proxies={"http": proxy}, **FAST)
        with WhatsAppHook() as hook:
            engine = BulkSender(lambda number, _: hook.send_message(number, "hi"), max_concurrency=1)
            from airflow_provider_wa019.bulk import parse_recipients

            recipients, _ = parse_recipients([f"97250{n:07d}" for n in range(40)])
            report = engine.run(recipients)
    assert report.aborted
    assert report.abort_retryable
    # The streak of 10 stops it; the few already handed to a worker are tried too.
    unreachable = report.summary()["failed"]["unreachable"]
    assert 10 <= unreachable <= 10 + 2 * engine.max_concurrency
    assert report.summary()["failed"]["not_sent"] == 40 - unreachable
    assert sim.requests == []


# --------------------------------------------------------------------------------------------
# 9. Template variables WhatsApp refuses


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "five     spaces", "cr\rhere"])
def test_template_variables_whatsapp_refuses_are_refused_before_sending(sim, hook, value):
    with pytest.raises(WhatsAppValidationError, match="132018") as err:
        hook.send_template(CLIENT, "hello", [value])
    assert err.value.field == "variables[0]"
    assert sim.requests == []


def test_four_spaces_in_a_variable_are_fine(sim, hook):
    hook.send_template(CLIENT, "hello", ["four    spaces"])
    assert sim.sent[-1]["variables"] == ["four    spaces"]


def test_the_notifier_makes_multi_line_variables_fit(sim, airflow_db):
    notifier = WhatsAppNotifier(
        to="+972 50 999 0000",  # never wrote: the template goes out
        template="hello",
        variables=["{{ ti.task_id }} failed:\n\tTraceback (most recent call last):\n      File x"],
    )
    with DAG("notifier_variables_fit", schedule=None, start_date=START) as dag:

        @task(on_failure_callback=notifier, retries=0)
        def load() -> None:
            raise ValueError("boom")

        load()

    run_dag(dag)
    [sent] = sim.sent
    assert sent["variables"] == ["load failed: Traceback (most recent call last): File x"]


# --------------------------------------------------------------------------------------------
# 10. Answers are bounded


def test_xcom_keeps_a_small_raw_answer(sim, hook):
    answer = {"status": "OK", "reason": 1, "unique": "m-1", "x": "a" * 30_000, "list": list(range(3000))}
    sim.fail_next(body=json.dumps(answer))
    result = hook.send_message(CLIENT, "hi")
    pushed = json.dumps(result.to_dict())
    assert len(pushed) < 8_000
    assert result.to_dict()["raw"]["unique"] == "m-1"


def test_a_long_api_message_is_quoted_briefly(sim, hook):
    sim.fail_next(body=json.dumps({"status": "FAIL", "reason": 4, "message": "m" * 60_000}))
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert len(str(err.value)) < 600
    assert len(json.dumps(err.value.response)) < 2_000


def test_a_large_template_listing_is_read_whole(sim, hook):
    for n in range(150):  # about 160 KB: above a send's cap, within the listing's
        sim.add_template(f"t{n:03d}", "x" * 1000 + " {{1}}")
    assert len(hook.get_templates()) == 151


@pytest.mark.parametrize("kind", ["gzip bomb", "100 MB body"])
def test_a_huge_answer_is_never_held_in_memory(wa019_env, kind):
    if kind == "gzip bomb":  # ~200 KB on the wire, 200 MB inflated
        chunks = [gzip_bomb()]  # the fault matrix's, made once per process
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % sum(
            map(len, chunks)
        )
        body: Iterator[bytes] = iter(chunks)
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n"
        body = (b"x" * 1_000_000 for _ in range(100))
    with canned_server(head, body) as (base_url, _):
        wa019_env(host=base_url, password=TOKEN, sender="972771234567", **FAST)
        with WhatsAppHook() as hook:
            hook.settings  # noqa: B018 - connection parsing is not what is measured
            tracemalloc.start()
            try:
                with pytest.raises(WhatsAppResponseError, match="larger than 64 KiB"):
                    hook.send_message(CLIENT, "hi")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < 5_000_000, f"{peak / 1e6:.1f} MB held while reading the answer"


def test_a_trickling_answer_cannot_outlast_the_read_timeout(wa019_env):
    # 200 OK at once, then its 200-byte body one byte every 0.1 s.
    body = (b'{"status":"OK","reason":1,"unique":"m-1","pad":"' + b"x" * 200)[:200]
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n"
    with canned_server(head, (bytes([b]) for b in body), pause=0.1) as (base_url, sent):
        wa019_env(host=base_url, password=TOKEN, sender="972771234567", **FAST)
        with (
            WhatsAppHook() as hook,
            pytest.raises(WhatsAppDeliveryUnknownError, match=r"took more than 0\.5 s"),
        ):
            hook.send_message(CLIENT, "hi")
        # Each byte came well within the 0.5 s read timeout; the whole answer never did.
        assert sent[0] < 50


# --------------------------------------------------------------------------------------------
# Minor: message arguments


ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
BIDI = "\u202a\u202b\u202e\u2066\u2069\u200e\u200f"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"body": ZERO_WIDTH}, "body"),
        ({"body": BIDI + " \n"}, "body"),
        ({"body": "hello\x00world"}, "body"),
        ({"body": "lone \ud800 surrogate"}, "body"),
        ({"body": "hi", "reply_to": "id\x00"}, "reply_to"),
        ({"body": "hi", "reply_to": "x" * (MAX_UNIQUE_CHARS + 1)}, "reply_to"),
        ({"body": "hi", "reply_to": "two words"}, "reply_to"),
        ({"body": "hi", "reply_to": "\udc00"}, "reply_to"),
    ],
)
def test_unsendable_message_arguments_are_refused_before_sending(sim, hook, kwargs, field):
    with pytest.raises(WhatsAppValidationError) as err:
        hook.send_message(CLIENT, **kwargs)
    assert err.value.field == field
    assert sim.requests == []


@pytest.mark.parametrize("value", ["nul\x00", "\ud83d", ZERO_WIDTH])
def test_unsendable_template_variables_are_refused(sim, hook, value):
    with pytest.raises(WhatsAppValidationError):
        hook.send_template(CLIENT, "hello", [value])
    assert sim.requests == []


@pytest.mark.parametrize(
    "link", ["https://cdn.example/a b.png", "https://cdn.example/a\n.png", "https://cdn.example/a\tb.png"]
)
def test_a_header_link_with_spaces_or_line_breaks_is_refused(sim, hook, link):
    with pytest.raises(WhatsAppValidationError) as err:
        hook.send_template(CLIENT, "hello", ["x"], header_type=3, header_link=link)
    assert err.value.field == "header_link"
    assert sim.requests == []


def test_an_emoji_body_and_a_real_reply_id_are_sent(sim, hook):
    hook.send_message(CLIENT, "👍", reply_to="92E004B950CCEA3C386FCFA2AAF8558A")
    assert sim.sent[-1]["replyTo"] == "92E004B950CCEA3C386FCFA2AAF8558A"


# --------------------------------------------------------------------------------------------
# Minor: connection settings


@pytest.mark.parametrize(
    ("conn", "problem"),
    [
        ({"templates_path": "/t/{x}"}, "templates_path"),
        ({"templates_path": "/t/{phone"}, "templates_path"),
        ({"templates_path": "/t/{phone!r}"}, "templates_path"),
        ({"proxies": {"http": 3128}}, "proxies"),
        ({"port": 8080, "host": "http://127.0.0.1:abc"}, "port"),
        ({"timeout": "inf"}, "timeout"),
        ({"timeout": 1e300}, "timeout"),
        ({"timeout": [1, "nan"]}, "timeout"),
        ({"max_attempts": "inf"}, "max_attempts"),
        ({"max_attempts": 1e12}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"backoff_factor": "1e400"}, "backoff_factor"),
        ({"max_retry_wait": float("inf")}, "max_retry_wait"),
        ({"host": "https://019sms.co.il/api"}, "path"),
        ({"host": "https://019sms.co.il/?debug=1"}, "path"),
        ({"host": "https://019sms.co.il/#x"}, "path"),
        ({"host": "http://127.0.0.1:8080", "port": 9090}, "port"),
        ({"send_path": "/api/send message"}, "send_path"),
    ],
)
def test_unusable_connection_settings_are_typed_errors_naming_the_setting(sim, wa019_env, conn, problem):
    host = conn.pop("host", sim.base_url)
    port = conn.pop("port", None)
    stored = wa019_env(sim, host=host, port=port, **{**FAST, **conn})
    assert stored
    with WhatsAppHook() as hook:
        with pytest.raises(WhatsAppConfigError, match=problem) as err:
            hook.send_message(CLIENT, "hi")
        assert "'wa019_default'" in str(err.value)
        ok, message = hook.test_connection()  # the form's Test button: an answer, not a crash
        assert not ok
        assert problem in message
    assert sim.requests == []


def test_userinfo_in_the_host_is_refused_and_never_echoed(sim, wa019_env):
    wa019_env(sim, host=f"http://admin:hunter2@127.0.0.1:{sim.port}")
    with WhatsAppHook() as hook, pytest.raises(WhatsAppConfigError, match="user name or password") as err:
        hook.send_message(CLIENT, "hi")
    assert "hunter2" not in str(err.value)
    assert "admin" not in str(err.value)


def test_the_same_port_in_host_and_port_field_is_fine(sim, wa019_env):
    wa019_env(sim, port=sim.port)
    with WhatsAppHook() as hook:
        assert hook.send_message(CLIENT, "hi").unique


@pytest.mark.skipif(
    tuple(int(p) for p in airflow_version.split(".")[:2]) < (3, 3),
    reason=f"Airflow {airflow_version} refuses such a connection itself, before any hook reads it",
)
def test_invalid_extra_json_is_reported_as_such(sim, monkeypatch):
    # Extra that is not JSON at all: beyond wa019_env, whose extras are keyword arguments.
    set_connection_env(
        monkeypatch,
        WA019_CONN_ID,
        conn_type="wa019",
        host=sim.base_url,
        password=TOKEN,
        extra='{"sender": 9727',
    )
    with WhatsAppHook() as hook, pytest.raises(WhatsAppConfigError, match="extra is not valid JSON"):
        hook.send_message(CLIENT, "hi")


# --------------------------------------------------------------------------------------------
# Minor: answers


@pytest.mark.parametrize(
    "unique", ["", "   ", "x" * (MAX_UNIQUE_CHARS + 1), "a\nb", "tab\tid", True, None, [1], -5]
)
def test_a_success_without_a_usable_message_id_is_an_unexpected_body(sim, hook, unique):
    sim.fail_next(body=json.dumps({"status": "OK", "reason": 1, "unique": unique}))
    with pytest.raises(WhatsAppResponseError, match="'unique'"):
        hook.send_message(CLIENT, "hi")


def test_a_numeric_message_id_is_an_id(sim, hook):
    sim.fail_next(body='{"status":"OK","reason":1,"unique":123456789}')
    assert hook.send_message(CLIENT, "hi").unique == "123456789"


@pytest.mark.parametrize("minutes", ["-5", -1, "1e30", "nan"])
def test_negative_or_absurd_timers_are_no_timers(minutes):
    body = {
        "status": "OK",
        "reason": 1,
        "unique": "m-1",
        "templateTimeLeft": minutes,
        "conversationTimeLeft": minutes,
    }
    result = parse_send_response(200, json.dumps(body).encode())
    assert result.template_time_left is None
    assert result.conversation_time_left is None


@pytest.mark.parametrize(
    "listing",
    [
        '{"success": true, "templates": "none"}',
        '{"success": true, "templates": [{"body": "no name"}]}',
        '{"success": true, "templates": [' * 50 + "]" * 50 + "}",
    ],
)
def test_test_connection_fails_for_a_listing_get_templates_refuses(sim, hook, listing):
    sim.fail_next(body=listing, path="/whatsapp-api/get-phone-templates")
    ok, message = hook.test_connection()
    assert not ok
    assert "unexpected response" in message


def test_no_such_template_names_a_few_and_counts_the_rest(sim, hook):
    for n in range(40):
        sim.add_template(f"promo_{n:02d}", "Hi {{1}}")
    with pytest.raises(WhatsAppValidationError, match="and 31 more") as err:
        hook.send_template(CLIENT, "nope", ["x"], check_template=True)
    assert "promo_39" not in str(err.value)


# --------------------------------------------------------------------------------------------
# Minor: errors copy and pickle


ERRORS = [
    WhatsAppValidationError("to", "050", "not a possible number"),
    WhatsAppResponseError("empty body", http_status=200, body=b""),
    WhatsAppAPIError(7, response={"reason": 7}, http_status=200, detail="window closed"),
    WhatsAppTransientError("refused", http_status=None),
    WhatsAppDeliveryUnknownError("HTTP 500", http_status=500),
    WhatsAppConfigError("no token"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
def test_errors_survive_pickling_and_copying(error, how):
    clone = {
        "pickle": lambda e: pickle.loads(pickle.dumps(e)),
        "deepcopy": copy.deepcopy,
        "copy": copy.copy,
    }[how](error)
    assert type(clone) is type(error)
    assert str(clone) == str(error)
    assert vars(clone) == vars(error)
    assert clone.retryable == error.retryable
    if isinstance(error, WhatsAppAPIError):
        assert clone.reason == 7


def test_every_hook_failure_is_a_provider_error(sim, hook):
    # A sample of the hostile answers above, through one hook: nothing else escapes.
    for body in ["[" * 5000, '{"reason": 1e999}', '{"reason": "1", "unique": "\\ud800"}', "\xff\xfe"]:
        sim.fail_next(body=body)
        with pytest.raises(WhatsAppError):
            hook.send_message(CLIENT, "hi")


# --------------------------------------------------------------------------------------------
# Found on the way: template variable text that is no literal, deep JSON at the simulator


def test_variables_text_that_looks_like_a_list_but_is_not_one_is_one_value():
    from airflow_provider_wa019.operators.whatsapp import template_variables

    assert template_variables("[{[1]: 2}]") == ["[{[1]: 2}]"]


def test_the_simulator_answers_a_deeply_nested_request_as_the_platform_would(sim):
    import urllib.request

    body = ("[" * 100_000 + "]" * 100_000).encode()
    request = urllib.request.Request(
        sim.base_url + "/api/whatsapp/sendMessage",
        data=body,
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read())["reason"] == 2
    sim.fail_next(status=500, to=CLIENT)  # a fault that must parse the body to match
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read())["reason"] == 2
    assert sim.pending_faults == 1
