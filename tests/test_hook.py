"""WhatsAppHook against the real simulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import time

import pendulum
import pytest

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
from airflow_provider_wa019.testing import WhatsAppSimulator, refused_address, unresponsive_address

CLIENT = "972501234567"
FAST = {"backoff_factor": 0.01, "max_retry_wait": 0.2, "timeout": [1, 1]}


@pytest.fixture
def sim(wa019_simulator, monkeypatch):
    """The simulator, with the default connection pointing at it and fast retries."""
    monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", wa019_simulator.connection_json(**FAST))
    wa019_simulator.open_window(CLIENT)
    return wa019_simulator


@pytest.fixture
def hook(sim):
    with WhatsAppHook() as h:
        yield h


def use_connection(monkeypatch, conn_id: str = "wa019_default", **conn) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "wa019", **conn}))


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
def test_numbers_are_normalised_before_sending(sim, monkeypatch, raw, region, expected):
    use_connection(
        monkeypatch,
        host=sim.base_url,
        password=sim.token,
        extra={"sender": sim.sender, "default_region": region},
    )
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


def test_missing_token_names_the_connection(sim, monkeypatch):
    use_connection(monkeypatch, "wa019_no_token", host=sim.base_url, extra={"sender": sim.sender})
    with pytest.raises(WhatsAppConfigError, match="'wa019_no_token' has no API token"):
        WhatsAppHook("wa019_no_token").send_message(CLIENT, "hi")
    assert sim.requests == []


def test_missing_sender_is_a_clear_error(sim, monkeypatch):
    use_connection(monkeypatch, host=sim.base_url, password=sim.token)
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
def test_malformed_extras_are_named(sim, monkeypatch, extra, fragment):
    use_connection(monkeypatch, host=sim.base_url, password=sim.token, extra={"sender": sim.sender, **extra})
    with pytest.raises((WhatsAppConfigError, WhatsAppValidationError), match=fragment):
        WhatsAppHook().send_message(CLIENT, "hi")
    assert sim.requests == []


def test_connection_host_rules(monkeypatch):
    cases = {
        "": "https://019sms.co.il",
        "019sms.co.il": "https://019sms.co.il",
        "https://api.example.test/": "https://api.example.test",
        "http://127.0.0.1:8019": "http://127.0.0.1:8019",
    }
    for host, expected in cases.items():
        use_connection(monkeypatch, host=host, password="t", extra={"sender": "972771234567"})
        assert WhatsAppHook().settings.base_url == expected
    use_connection(monkeypatch, host="127.0.0.1", port=8019, password="t")
    assert WhatsAppHook().settings.base_url == "https://127.0.0.1:8019"


def test_null_extras_from_the_ui_form_mean_unset(sim, monkeypatch):
    extra = {
        "sender": sim.sender,
        "timeout": None,
        "default_region": None,
        "send_path": None,
        "max_attempts": None,
    }
    use_connection(monkeypatch, host=sim.base_url, password=sim.token, extra=extra)
    settings = WhatsAppHook().settings
    assert settings.timeout == (5.0, 30.0)
    assert settings.send_path == "/api/whatsapp/sendMessage"
    assert settings.max_attempts == 3


def test_uri_form_connection(sim, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", sim.connection_uri())
    result = WhatsAppHook().send_message(CLIENT, "via uri")
    assert result.unique == sim.sent[-1]["unique"]


def test_send_path_override(sim, monkeypatch):
    use_connection(
        monkeypatch,
        host=sim.base_url,
        password=sim.token,
        extra={"sender": sim.sender, "send_path": "nowhere"},
    )
    with pytest.raises(WhatsAppResponseError, match="HTTP 404"):
        WhatsAppHook().send_message(CLIENT, "hi")
    assert sim.requests[-1].path == "/nowhere"


# --- the API's reason codes -----------------------------------------------------------------


def test_reason_2_unknown_sender(sim, monkeypatch):
    use_connection(monkeypatch, host=sim.base_url, password=sim.token, extra={"sender": "972779999999"})
    with pytest.raises(WhatsAppAPIError) as err:
        WhatsAppHook().send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.retryable) == (2, False)
    assert "'from' account does not exist" in str(err.value)
    assert len(sim.requests) == 1


def test_reason_3_wrong_token_is_not_retried(sim, monkeypatch):
    use_connection(
        monkeypatch, host=sim.base_url, password="wrong-token", extra={"sender": sim.sender, **FAST}
    )
    with pytest.raises(WhatsAppAPIError) as err:
        WhatsAppHook().send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.retryable) == (3, False)
    assert len(sim.requests) == 1


@pytest.mark.parametrize("reason", [4, 5])
def test_reasons_4_and_5_from_the_api(sim, hook, reason):
    # Local validation stops bad numbers and empty bodies first; the API's own refusal is still mapped.
    sim.fail_next(reason=reason)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.retryable) == (reason, False)
    assert len(sim.requests) == 1


def test_reason_7_window_closed_after_24_hours(sim, hook):
    sim.open_window(CLIENT, at=sim.now().subtract(hours=23, minutes=59))
    hook.send_message(CLIENT, "still open")
    sim.advance(minutes=2)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "too late")
    assert err.value.reason == 7
    assert "template" in err.value.meaning
    assert len(sim.sent) == 1


def test_reason_8_first_contact(sim, hook):
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message("+972 52-000-0001", "hello stranger")
    assert err.value.reason == 8
    assert sim.sent == []


def test_reason_6_is_retried_and_then_succeeds(sim, hook):
    sim.fail_next(2, reason=6)
    result = hook.send_message(CLIENT, "hi")
    assert len(sim.requests) == 3
    assert [r.response_json["reason"] for r in sim.requests] == [6, 6, 1]
    assert result.unique == sim.sent[-1]["unique"]
    assert len(sim.sent) == 1


def test_reason_6_gives_up_after_max_attempts(sim, hook):
    sim.fail_next(5, reason=6)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.retryable) == (6, True)
    assert len(sim.requests) == 3


def test_unknown_reason_is_reported_as_undocumented(sim, hook):
    sim.fail_next(reason=42)
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.retryable) == (42, False)
    assert "undocumented reason code 42" in str(err.value)
    assert len(sim.requests) == 1


# --- HTTP faults ----------------------------------------------------------------------------


def test_429_honours_retry_after_capped(sim, hook):
    sim.fail_next(status=429, retry_after=3600)
    started = pendulum.now()
    hook.send_message(CLIENT, "hi")
    assert [r.response_status for r in sim.requests] == [429, 200]
    # Retry-After: 3600 was capped by the connection's max_retry_wait (0.2 s).
    assert (pendulum.now() - started).total_seconds() < 30


def test_429_every_time_is_a_transient_error(sim, hook):
    sim.fail_next(5, status=429, retry_after=0)
    with pytest.raises(WhatsAppTransientError, match="HTTP 429") as err:
        hook.send_message(CLIENT, "hi")
    assert err.value.retryable
    assert len(sim.requests) == 3
    assert sim.sent == []


def test_503_is_retried(sim, hook):
    sim.fail_next(status=503)
    hook.send_message(CLIENT, "hi")
    assert [r.response_status for r in sim.requests] == [503, 200]
    assert len(sim.sent) == 1


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_on_a_send_are_delivery_unknown_and_not_retried(sim, hook, status):
    # A gateway answers 502/504 when it lost the API's answer or stopped waiting for it; the API
    # may have taken the message. Sending it again could deliver it twice.
    sim.fail_next(status=status)
    with pytest.raises(WhatsAppDeliveryUnknownError, match=f"HTTP {status}") as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.http_status, err.value.retryable) == (status, True)
    assert [r.response_status for r in sim.requests] == [status]


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_on_a_read_are_retried(sim, hook, status):
    # The template listing sends nothing: asking again is safe.
    sim.fail_next(status=status, path="/whatsapp-api/get-phone-templates")
    assert hook.get_templates() == []
    assert [r.response_status for r in sim.requests] == [status, 200]


def test_http_500_is_delivery_unknown_and_not_retried(sim, hook):
    sim.fail_next(status=500, body="<html>Internal Server Error</html>")
    with pytest.raises(WhatsAppDeliveryUnknownError, match="delivery unknown") as err:
        hook.send_message(CLIENT, "hi")
    assert err.value.http_status == 500
    assert err.value.retryable
    assert len(sim.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_http_401_and_403_are_never_retried(sim, hook, status):
    sim.fail_next(5, status=status, body='{"message": "Unauthorized"}')
    with pytest.raises(WhatsAppAPIError) as err:
        hook.send_message(CLIENT, "hi")
    assert (err.value.reason, err.value.http_status, err.value.retryable) == (3, status, False)
    assert len(sim.requests) == 1


def test_non_json_body_quotes_status_and_first_200_characters(sim, hook):
    page = "<html><body>" + "Maintenance " * 40 + "</body></html>"
    sim.fail_next(body=page, content_type="text/html")
    with pytest.raises(WhatsAppResponseError) as err:
        hook.send_message(CLIENT, "hi")
    message = str(err.value)
    assert "HTTP 200" in message
    assert page[:200] in message
    assert page[:201] not in message
    assert not err.value.retryable
    assert len(sim.requests) == 1


def test_read_timeout_is_delivery_unknown_and_not_retried(sim, monkeypatch):
    use_connection(
        monkeypatch, host=sim.base_url, password=sim.token, extra={"sender": sim.sender, "timeout": [1, 0.3]}
    )
    sim.fail_next(delay=1.0)
    with pytest.raises(WhatsAppDeliveryUnknownError, match=r"no answer .* within 0\.3 s"):
        WhatsAppHook().send_message(CLIENT, "hi")
    # The simulator records the request once its delayed answer is written.
    deadline = time.monotonic() + 5
    while not sim.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sim.requests) == 1


def test_connect_timeout_is_retried_then_transient(monkeypatch):
    with unresponsive_address() as base_url:
        use_connection(
            monkeypatch,
            host=base_url,
            password="t",
            extra={"sender": "972771234567", **FAST, "timeout": [0.2, 5]},
        )
        hook = WhatsAppHook()
        started = pendulum.now()
        with pytest.raises(
            WhatsAppTransientError, match=r"could not connect .* within 0\.2 s on 3 tries"
        ) as err:
            hook.send_message(CLIENT, "hi")
        # Three connect attempts of 0.2 s each, not a 5 s read timeout.
        assert 0.5 < (pendulum.now() - started).total_seconds() < 4
    assert err.value.retryable


def test_connection_refused_is_transient(monkeypatch):
    with refused_address() as base_url:
        use_connection(monkeypatch, host=base_url, password="t", extra={"sender": "972771234567", **FAST})
        with pytest.raises(WhatsAppTransientError, match="Connection refused"):
            WhatsAppHook().send_message(CLIENT, "hi")


# --- test_connection ------------------------------------------------------------------------


def test_test_connection_proves_token_and_sender_without_sending(sim, hook):
    ok, message = hook.test_connection()
    assert ok, message
    assert sim.sender in message
    assert [r.method for r in sim.requests] == ["GET"]
    assert sim.requests[0].path == f"/whatsapp-api/get-phone-templates/{sim.sender}"
    assert sim.sent == []


def test_test_connection_reports_a_wrong_token(sim, monkeypatch):
    use_connection(monkeypatch, host=sim.base_url, password="wrong", extra={"sender": sim.sender})
    ok, message = WhatsAppHook().test_connection()
    assert not ok
    assert "token" in message
    assert "wrong" not in message.replace("wrong API token", "")


def test_test_connection_reports_an_unknown_sender(sim, monkeypatch):
    use_connection(monkeypatch, host=sim.base_url, password=sim.token, extra={"sender": "972779999999"})
    ok, message = WhatsAppHook().test_connection()
    assert not ok
    assert "972779999999" in message
    assert sim.sent == []


# --- token hygiene --------------------------------------------------------------------------

SECRET = "tok-SUPERSECRET-0123456789"


def test_token_appears_in_no_repr_error_or_log(monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with WhatsAppSimulator(token=SECRET) as sim:
        sim.open_window(CLIENT)
        use_connection(monkeypatch, host=sim.base_url, password=SECRET, extra={"sender": sim.sender, **FAST})
        hook = WhatsAppHook()
        hook.send_message(CLIENT, "hi")
        texts = [repr(hook), repr(hook.settings), repr(hook.session.auth), str(hook.session.headers)]
        for fault in (
            {"status": 500},
            {"status": 401},
            {"body": "oops"},
            {"reason": 6, "n": 3},
            {"reason": 3},
        ):
            sim.fail_next(**fault)
            with pytest.raises(WhatsAppError) as err:
                hook.send_message(CLIENT, "hi")
            texts += [str(err.value), repr(err.value), repr(getattr(err.value, "response", ""))]
    # Airflow routes hook logs through structlog to stdout; urllib3's go to stdlib logging.
    logs = capsys.readouterr().out + caplog.text
    texts.append(logs)
    for text in texts:
        assert SECRET not in text
    # Log lines mask the recipient but its last 4 digits.
    assert "to ********4567" in logs
    assert CLIENT not in logs
