"""WhatsAppHook against the real simulator over HTTP on 127.0.0.1.

What each API answer and transport fault makes of a send (error type, reason, retries, text) is
the fault matrix, tests/test_faults.py; whether the token shows anywhere, tests/test_token_leak.py.
"""

from __future__ import annotations

import json

import pendulum
import pytest

from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppResponseError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

CLIENT = "972501234567"


@pytest.fixture
def sim(make_sim):
    """The simulator, with the default connection pointing at it and fast retries."""
    return make_sim(open_windows=[CLIENT])


@pytest.fixture
def hook(sim):
    with WhatsAppHook() as h:
        yield h


# --- success --------------------------------------------------------------------------------


def test_send_returns_typed_immutable_result(sim, hook):
    sim.set_time(pendulum.datetime(2026, 3, 1, 12, 0, tz="UTC"))
    sim.open_window(CLIENT, at=pendulum.datetime(2026, 3, 1, 10, 30, tz="UTC"))

    result = hook.send_message("+972 50-123-4567", "Your order *A-1* shipped")

    [sent] = sim.sent
    assert result.unique == sent["unique"]
    assert result.reason == 1
    assert result.status == "OK"
    assert (result.to, result.sender, result.body) == (CLIENT, sim.sender, "Your order *A-1* shipped")
    assert result.timestamp == pendulum.datetime(2026, 3, 1, 12, 0, tz="UTC")
    assert result.timestamp.timezone_name == "UTC"
    # Client wrote 90 minutes ago: 24 h - 90 min of the free-form window are left.
    assert result.template_time_left == pendulum.duration(minutes=24 * 60 - 90)
    assert result.conversation_time_left == pendulum.duration(minutes=24 * 60)
    assert result.raw["unique"] == sent["unique"]
    with pytest.raises(AttributeError):
        result.unique = "other"
    with pytest.raises(TypeError):
        result.raw["unique"] = "other"
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["unique"] == result.unique
    assert as_dict["template_time_left_minutes"] == 24 * 60 - 90
    assert as_dict["timestamp"] == "2026-03-01T12:00:00+00:00"


def test_request_matches_the_vendor_contract(sim, hook):
    hook.send_message(CLIENT, "line one\nline two", reply_to="wamid-123")
    [request] = sim.requests
    assert request.method == "POST"
    assert request.path == "/api/whatsapp/sendMessage"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json == {
        "from": sim.sender,
        "to": CLIENT,
        "body": "line one\nline two",
        "replyTo": "wamid-123",
    }


def test_one_session_is_reused_for_every_call(sim, hook):
    for _ in range(3):
        hook.send_message(CLIENT, "hi")
    session = hook.session
    hook.send_message(CLIENT, "again")
    assert hook.session is session
    # Keep-alive: every request arrived over the same TCP connection.
    assert len({r.client_port for r in sim.requests}) == 1


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+972 50-123-4567", None, CLIENT),
        ("(+972) 50 123 4567", None, CLIENT),
        ("00972501234567", None, CLIENT),
        (972501234567, None, CLIENT),
        ("050-123-4567", "IL", CLIENT),
        ("972501234567", "IL", CLIENT),
    ],
)
def test_numbers_are_normalised_before_sending(sim, wa019_env, raw, region, expected):
    wa019_env(sim, default_region=region)
    WhatsAppHook().send_message(raw, "hi")
    assert sim.requests[-1].json["to"] == expected


def test_sender_argument_overrides_the_connection(sim, hook):
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi", sender="+972 77-000-0000")
    assert err.value.reason == 2
    assert sim.requests[-1].json["from"] == "972770000000"


# --- validation: clear errors, and nothing sent ---------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"to": "", "body": "hi"}, "to", "empty phone number"),
        ({"to": "not-a-number", "body": "hi"}, "to", "only digits"),
        ({"to": "050-123-4567", "body": "hi"}, "to", "default_region"),
        ({"to": "+972 5", "body": "hi"}, "to", "not a possible phone number"),
        ({"to": None, "body": "hi"}, "to", "expected a phone number"),
        ({"to": CLIENT, "body": ""}, "body", "empty"),
        ({"to": CLIENT, "body": "  \n "}, "body", "empty"),
        ({"to": CLIENT, "body": "x" * 4097}, "body", "4097 characters"),
        ({"to": CLIENT, "body": 42}, "body", "expected text"),
        ({"to": CLIENT, "body": "hi", "reply_to": ""}, "reply_to", "non-empty string"),
        ({"to": CLIENT, "body": "hi", "sender": "12"}, "sender", "not a possible phone number"),
    ],
)
def test_invalid_input_is_refused_before_any_request(sim, hook, kwargs, field, fragment):
    with pytest.raises(WhatsAppValidationError) as err:
        hook.send_message(**kwargs)
    assert err.value.field == field
    assert field in str(err.value)
    assert fragment in str(err.value)
    assert sim.requests == []


def test_body_of_exactly_4096_characters_is_sent(sim, hook):
    hook.send_message(CLIENT, "x" * 4096)
    assert len(sim.requests[-1].json["body"]) == 4096


def test_missing_token_names_the_connection(sim, wa019_env):
    wa019_env(sim, conn_id="wa019_no_token", password=None)
    with pytest.raises(WhatsAppConfigError, match="'wa019_no_token' has no API token"):
        WhatsAppHook("wa019_no_token").send_message(CLIENT, "hi")
    assert sim.requests == []


def test_missing_sender_is_a_clear_error(sim, wa019_env):
    wa019_env(sim, sender=None)
    with pytest.raises(WhatsAppConfigError, match="no sender"):
        WhatsAppHook().send_message(CLIENT, "hi")
    assert sim.requests == []


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"timeout": "soon"}, "'timeout'"),
        ({"timeout": -1}, "'timeout'"),
        ({"max_attempts": 0}, "'max_attempts'"),
        ({"default_region": "Israel"}, "default_region"),
        ({"proxies": "http://proxy"}, "'proxies'"),
    ],
)
def test_malformed_extras_are_named(sim, wa019_env, extra, fragment):
    wa019_env(sim, **extra)
    with pytest.raises((WhatsAppConfigError, WhatsAppValidationError), match=fragment):
        WhatsAppHook().send_message(CLIENT, "hi")
    assert sim.requests == []


def test_connection_host_rules(wa019_env):
    cases = {
        "": "https://019sms.co.il",
        "019sms.co.il": "https://019sms.co.il",
        "https://api.example.test/": "https://api.example.test",
        "http://127.0.0.1:8019": "http://127.0.0.1:8019",
    }
    for host, expected in cases.items():
        wa019_env(host=host, password="t")
        assert WhatsAppHook().settings.base_url == expected
    wa019_env(host="127.0.0.1", port=8019, password="t", sender=None)
    assert WhatsAppHook().settings.base_url == "https://127.0.0.1:8019"


def test_null_extras_from_the_ui_form_mean_unset(sim, wa019_env):
    wa019_env(sim, timeout=None, default_region=None, send_path=None, max_attempts=None)
    settings = WhatsAppHook().settings
    assert settings.timeout == (5.0, 30.0)
    assert settings.send_path == "/api/whatsapp/sendMessage"
    assert settings.max_attempts == 3


def test_uri_form_connection(sim, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", sim.connection_uri())
    result = WhatsAppHook().send_message(CLIENT, "via uri")
    assert result.unique == sim.sent[-1]["unique"]


def test_send_path_override(sim, wa019_env):
    wa019_env(sim, send_path="nowhere")
    with pytest.raises(WhatsAppResponseError, match="HTTP 404"):
        WhatsAppHook().send_message(CLIENT, "hi")
    assert sim.requests[-1].path == "/nowhere"


# --- the API's reason codes (the rest: tests/test_faults.py) --------------------------------


def test_reason_7_window_closed_after_24_hours(sim, hook):
    sim.open_window(CLIENT, at=sim.now().subtract(hours=23, minutes=59))
    hook.send_message(CLIENT, "still open")
    sim.advance(minutes=2)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "too late")
    assert err.value.reason == 7
    assert "template" in err.value.meaning
    assert len(sim.sent) == 1


# --- HTTP faults (the rest: tests/test_faults.py) ------------------------------------------


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_on_a_read_are_retried(sim, hook, status):
    # The template listing sends nothing: asking again is safe.
    sim.fail_next(status=status, path="/whatsapp-api/get-phone-templates")
    assert hook.get_templates() == []
    assert [r.response_status for r in sim.requests] == [status, 200]


def test_non_json_body_quotes_status_and_first_200_characters(sim, hook):
    page = "<html><body>" + "Maintenance " * 40 + "</body></html>"
    sim.fail_next(body=page, content_type="text/html")
    with pytest.raises(WhatsAppResponseError) as err:
        hook.send_message(CLIENT, "hi")
    message = str(err.value)
    assert "HTTP 200" in message
    assert page[:200] in message
    assert page[:201] not in message


# --- test_connection ------------------------------------------------------------------------


def test_test_connection_proves_token_and_sender_without_sending(sim, hook):
    ok, message = hook.test_connection()
    assert ok, message
    assert sim.sender in message
    assert [r.method for r in sim.requests] == ["GET"]
    assert sim.requests[0].path == f"/whatsapp-api/get-phone-templates/{sim.sender}"
    assert sim.sent == []


def test_test_connection_reports_a_wrong_token(sim, wa019_env):
    # That the token itself is in no message: tests/test_token_leak.py.
    wa019_env(sim, password="wrong")
    ok, message = WhatsAppHook().test_connection()
    assert not ok
    assert "token" in message


def test_test_connection_reports_an_unknown_sender(sim, wa019_env):
    wa019_env(sim, sender="972779999999")
    ok, message = WhatsAppHook().test_connection()
    assert not ok
    assert "972779999999" in message
    assert sim.sent == []
