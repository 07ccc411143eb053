"""The simulator refuses what the real platform refuses and never crashes on odd input.

Numbers given to the simulator are normalised like the client does; template variables WhatsApp
refuses are refused; bad control input is a 400, never a dropped connection. All over real HTTP
to 127.0.0.1 with ``requests``, no mocks.
"""

from __future__ import annotations

import json
from typing import Any

import pendulum
import pytest
import requests

from airflow_provider_wa019.api import SEND_PATH, TEMPLATE_PATH, Reason, template_variable_problem
from airflow_provider_wa019.testing import WhatsAppSimulator
from airflow_provider_wa019.testing import simulator as simulator_module

TOKEN = "hardening-T0ken"
SENDER = "972771234567"
SENDER2 = "972771234568"
CLIENT = "972501234567"
OTHER = "972505555555"
T0 = pendulum.datetime(2025, 3, 1, 12, 0, 0, tz="UTC")
TEMPLATES = [
    {"name": "hello", "body": "Hi {{1}}, your code is {{2}}"},
    {"name": "spaced", "body": "Hi {{ 1 }} and {{2 }}"},
    {"name": "zero", "body": "Literal {{0}} stays"},
]


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim(connection=False, token=TOKEN, senders=(SENDER, SENDER2), templates=TEMPLATES, now=T0)


@pytest.fixture
def http() -> Any:
    with requests.Session() as session:
        yield session


def post(
    sim: WhatsAppSimulator, http: requests.Session, path: str, payload: Any, token: str | None = TOKEN
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post(
        sim.base_url + path, data=data, headers={**headers, "Content-Type": "application/json"}, timeout=5
    )


def send(
    sim: WhatsAppSimulator, http: requests.Session, to: Any = CLIENT, token: str | None = TOKEN, **fields: Any
) -> dict[str, Any]:
    response = post(sim, http, SEND_PATH, {"from": SENDER, "to": to, "body": "hi", **fields}, token)
    assert response.status_code == 200
    return response.json()


def send_template(
    sim: WhatsAppSimulator, http: requests.Session, name: str = "hello", **fields: Any
) -> dict[str, Any]:
    payload = {"from": SENDER, "to": CLIENT, "name": name, "headerType": 1, **fields}
    response = post(sim, http, TEMPLATE_PATH, payload)
    assert response.status_code == 200
    return response.json()


def control(sim: WhatsAppSimulator, http: requests.Session, action: str, payload: Any) -> requests.Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http.post(sim.base_url + "/__sim__/" + action, data=data, timeout=5)


SPELLINGS = ["+972 50-123-4567", "00972 (50) 123.4567", " 972-50-123-4567 ", "+972501234567", 972501234567]
BAD_NUMBERS = ["", "1234567", "+972 50 123 4567 8901 2", "call me", "97250123456x", "972+501234567"]
BAD_TYPES = [9.72501234567e11, True, ["972501234567"], {"n": "972501234567"}, None]


# -- 1. numbers given to the simulator are normalised ------------------------------------------


@pytest.mark.parametrize("number", SPELLINGS)
def test_open_window_normalises_the_number(
    sim: WhatsAppSimulator, http: requests.Session, number: Any
) -> None:
    sim.open_window(number)
    assert send(sim, http)["reason"] == Reason.OK
    assert [m["to"] for m in sim.sent] == [CLIENT]


@pytest.mark.parametrize("sender", ["+972 77-123-4568", "00972771234568", int(SENDER2)])
def test_open_window_normalises_the_sender(
    sim: WhatsAppSimulator, http: requests.Session, sender: Any
) -> None:
    sim.open_window(CLIENT, sender=sender)
    assert send(sim, http)["reason"] == Reason.FIRST_CONTACT  # the window is the other sender's
    assert send(sim, http, **{"from": SENDER2})["reason"] == Reason.OK


@pytest.mark.parametrize("number", ["+972 50-555-5555", "00972-50-555-5555", int(OTHER)])
def test_fail_next_to_is_normalised(sim: WhatsAppSimulator, http: requests.Session, number: Any) -> None:
    sim.open_window(CLIENT)
    sim.open_window(OTHER)
    sim.fail_next(reason=6, to=number)
    assert send(sim, http)["reason"] == Reason.OK  # another recipient: the fault waits
    assert send(sim, http, to=OTHER)["reason"] == Reason.WHATSAPP_ERROR
    assert sim.pending_faults == 0


def test_senders_are_normalised(http: requests.Session) -> None:
    with WhatsAppSimulator(token=TOKEN, senders=("+972 77-123-4567", "00972 77 123 4568")) as sim:
        assert sim.senders == (SENDER, SENDER2)
        assert sim.sender == SENDER
        assert json.loads(sim.connection_json())["extra"]["sender"] == SENDER
        sim.open_window("+972 50 123 4567", sender="+972771234568")
        assert send(sim, http, **{"from": SENDER2})["reason"] == Reason.OK
    with WhatsAppSimulator(senders="+972 77-123-4567") as one:  # a single string is one sender
        assert one.senders == (SENDER,)


def test_control_open_window_normalises_number_and_sender(
    sim: WhatsAppSimulator, http: requests.Session
) -> None:
    answer = control(sim, http, "open-window", {"number": "+972 50-123-4567", "sender": "+972 77-123-4568"})
    assert (answer.status_code, answer.json()) == (200, {"ok": True})
    assert send(sim, http, **{"from": SENDER2})["reason"] == Reason.OK
    assert control(sim, http, "faults", {"reason": 6, "to": "+972 50-123-4567"}).status_code == 200
    assert send(sim, http, **{"from": SENDER2})["reason"] == Reason.WHATSAPP_ERROR


@pytest.mark.parametrize("number", BAD_NUMBERS)
def test_bad_numbers_are_refused_with_a_clear_message(number: str) -> None:
    sim = WhatsAppSimulator(senders=(SENDER,))
    with pytest.raises(ValueError, match="8-15 digits"):
        sim.open_window(number)
    with pytest.raises(ValueError, match="8-15 digits"):
        sim.fail_next(reason=6, to=number)
    with pytest.raises(ValueError, match="8-15 digits"):
        sim.open_window(CLIENT, sender=number)
    with pytest.raises(ValueError, match="8-15 digits"):
        WhatsAppSimulator(senders=(SENDER, number))
    assert sim.pending_faults == 0


@pytest.mark.parametrize("number", BAD_TYPES)
def test_numbers_of_the_wrong_type_are_refused(number: Any) -> None:
    sim = WhatsAppSimulator(senders=(SENDER,))
    with pytest.raises(TypeError, match="string or an int"):
        sim.open_window(number)
    if number is not None:  # to=None and sender=None mean "any recipient" / "the default sender"
        with pytest.raises(TypeError, match="string or an int"):
            sim.fail_next(reason=6, to=number)
        with pytest.raises(TypeError, match="string or an int"):
            sim.open_window(CLIENT, sender=number)
    with pytest.raises(TypeError, match="string or an int"):
        WhatsAppSimulator(senders=(SENDER, number))


def test_open_window_for_an_unknown_sender_is_refused() -> None:
    sim = WhatsAppSimulator(senders=(SENDER,))
    with pytest.raises(ValueError, match="not one of the simulator's senders"):
        sim.open_window(CLIENT, sender="972770000000")


@pytest.mark.parametrize(
    "payload",
    [
        {"number": "call me"},
        {"number": "123"},
        {"number": ["972501234567"]},
        {"number": {"n": 1}},
        {"number": 972501234567},  # JSON numbers lose digits past 2**53: the API spells them as strings
        {"number": True},
        {"number": CLIENT, "sender": ["972771234568"]},
        {"number": CLIENT, "sender": "972770000000"},
    ],
)
def test_control_open_window_refuses_bad_numbers(
    sim: WhatsAppSimulator, http: requests.Session, payload: dict[str, Any]
) -> None:
    answer = control(sim, http, "open-window", payload)
    assert answer.status_code == 400
    assert answer.json()["ok"] is False
    assert answer.json()["error"]
    assert send(sim, http)["reason"] == Reason.FIRST_CONTACT  # no window was opened


def test_a_plus_in_the_json_to_is_still_reason_4(sim: WhatsAppSimulator, http: requests.Session) -> None:
    # The API's format is digits only: only what the simulator is *told* is normalised.
    sim.open_window(CLIENT)
    assert send(sim, http, to="+" + CLIENT)["reason"] == Reason.BAD_RECIPIENT
    assert send(sim, http, to="972 50 123 4567")["reason"] == Reason.BAD_RECIPIENT


# -- 2. template variables WhatsApp refuses (error 132018) --------------------------------------


@pytest.mark.parametrize("value", ["line\nbreak", "tab\there", "crlf\r\n", "five     spaces", "a\u2028b"])
@pytest.mark.parametrize("slot", [1, 2])
def test_template_variable_whatsapp_refuses_is_reason_2(
    sim: WhatsAppSimulator, http: requests.Session, value: str, slot: int
) -> None:
    variables = {"bodyVariable1": "Dana", "bodyVariable2": "1234", f"bodyVariable{slot}": value}
    answer = send_template(sim, http, **variables)
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.BAD_SENDER_OR_JSON)
    problem = template_variable_problem(value)
    assert problem is not None
    assert f"bodyVariable{slot}" in answer["message"]
    assert problem in answer["message"]
    assert sim.sent == []


def test_template_variable_with_four_spaces_is_accepted(
    sim: WhatsAppSimulator, http: requests.Session
) -> None:
    answer = send_template(sim, http, bodyVariable1="four    spaces", bodyVariable2=7)
    assert (answer["reason"], answer["body"]) == (Reason.OK, "Hi four    spaces, your code is 7")


# -- 3. one placeholder rule: api.PLACEHOLDER_RE ---------------------------------------------


def test_simulator_has_no_placeholder_regex_of_its_own() -> None:
    assert not hasattr(simulator_module, "_PLACEHOLDER_RE")


def test_placeholders_are_filled_as_before(sim: WhatsAppSimulator, http: requests.Session) -> None:
    answer = send_template(sim, http, name="spaced", bodyVariable1="A", bodyVariable2="B")
    assert (answer["reason"], answer["body"]) == (Reason.OK, "Hi A and B")
    assert "takes 2 variable" in send_template(sim, http, name="spaced", bodyVariable1="A")["message"]


def test_a_zero_placeholder_does_not_crash_the_handler(
    sim: WhatsAppSimulator, http: requests.Session
) -> None:
    # {{0}} is no variable (they count from 1): it stays as text, as api.fill_template leaves it.
    answer = send_template(sim, http, name="zero")
    assert (answer["reason"], answer["body"]) == (Reason.OK, "Literal {{0}} stays")


# -- 4. faults are for authorized requests only ------------------------------------------------


@pytest.mark.parametrize("token", ["wrong", None, ""])
def test_a_bad_token_request_does_not_use_up_a_fault(
    sim: WhatsAppSimulator, http: requests.Session, token: str | None
) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(reason=6)
    sim.fail_next(status=503, path="/whatsapp-api/get-phone-templates")
    assert send(sim, http, token=token) == {
        "status": "FAIL", "reason": Reason.BAD_TOKEN, "message": "wrong API token",
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    listing = http.get(
        sim.base_url + f"/whatsapp-api/get-phone-templates/{SENDER}", headers=headers, timeout=5
    )
    assert listing.status_code == 401
    assert sim.pending_faults == 2
    assert send(sim, http)["reason"] == Reason.WHATSAPP_ERROR  # the first authorized request gets it
    listing = http.get(
        sim.base_url + f"/whatsapp-api/get-phone-templates/{SENDER}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert listing.status_code == 503
    assert sim.pending_faults == 0
    assert [r.response_status for r in sim.requests] == [200, 401, 200, 503]


# -- 5. the clock control endpoint ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"advance_minutes": 1e300}',
        b'{"advance_minutes": 1e20}',
        b'{"advance_seconds": -1e300}',
        b'{"advance_minutes": NaN}',
        b'{"advance_minutes": Infinity}',
        b'{"advance_minutes": "90"}',
        b'{"advance_minutes": true}',
        b'{"advance_minutes": [1]}',
        b'{"advance_minutes": null}',
        b'{"advance_minutes": 1, "advance_seconds": {}}',
        b'{"set": 5}',
        b'{"set": ["2025-01-01"]}',
        b'{"set": "not a time"}',
    ],
)
def test_bad_clock_requests_are_400(sim: WhatsAppSimulator, http: requests.Session, payload: bytes) -> None:
    answer = control(sim, http, "clock", payload)
    assert answer.status_code == 400
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.json()["ok"] is False
    assert answer.json()["error"]
    assert sim.now() == T0  # the clock did not move
    assert control(sim, http, "clock", {"advance_minutes": 90}).json()["now"].startswith("2025-03-01T13:30")


def test_advancing_past_the_calendar_is_400(sim: WhatsAppSimulator, http: requests.Session) -> None:
    assert control(sim, http, "clock", {"set": "9999-12-31T00:00:00Z"}).status_code == 200
    answer = control(sim, http, "clock", {"advance_minutes": 10_000})
    assert (answer.status_code, answer.json()["ok"]) == (400, False)
    assert sim.now() == pendulum.datetime(9999, 12, 31, tz="UTC")
    with pytest.raises(ValueError, match="too far"):
        sim.advance(minutes=1e300)


def test_a_real_time_clock_cannot_be_pushed_off_the_calendar(http: requests.Session) -> None:
    with WhatsAppSimulator(token=TOKEN) as sim:
        answer = control(sim, http, "clock", {"advance_minutes": 5e9})  # ~9500 years
        assert (answer.status_code, answer.json()["ok"]) == (400, False)
        sim.open_window(CLIENT)  # the clock still works: requests are answered
        assert send(sim, http)["reason"] == Reason.OK


# -- 6. types of headerType, to, number, and the fault arguments ---------------------------------


@pytest.mark.parametrize(
    "header_type", [3.9, 1.0, True, False, None, "3.0", " 1", "", "\u0661", [1], {"t": 1}, "1" * 5000]
)
def test_header_type_must_be_an_int_or_ascii_digits(
    sim: WhatsAppSimulator, http: requests.Session, header_type: Any
) -> None:
    answer = send_template(
        sim,
        http,
        headerType=header_type,
        headerLink="https://example.test/a.png",
        bodyVariable1="A",
        bodyVariable2="B",
    )
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.BAD_SENDER_OR_JSON)
    assert "bad headerType" in answer["message"]
    assert sim.sent == []


@pytest.mark.parametrize("header_type", [1, "1", 3, "3", "03"])
def test_header_type_as_int_or_digit_string_is_accepted(
    sim: WhatsAppSimulator, http: requests.Session, header_type: Any
) -> None:
    answer = send_template(
        sim,
        http,
        headerType=header_type,
        headerLink="https://example.test/a.png",
        bodyVariable1="A",
        bodyVariable2="B",
    )
    assert answer["reason"] == Reason.OK
    assert sim.sent[0]["headerType"] == int(header_type)


@pytest.mark.parametrize("to", [[CLIENT], {"n": CLIENT}, True, 972501234567.0])
def test_a_non_string_to_is_reason_4(sim: WhatsAppSimulator, http: requests.Session, to: Any) -> None:
    sim.open_window(CLIENT)
    assert send(sim, http, to=to)["reason"] == Reason.BAD_RECIPIENT
    response = post(sim, http, TEMPLATE_PATH, {"from": SENDER, "to": to, "name": "zero", "headerType": 1})
    assert response.json()["reason"] == Reason.BAD_RECIPIENT
    assert sim.sent == []


@pytest.mark.parametrize(
    "payload",
    [
        {"status": [500]},
        {"status": {"code": 500}},
        {"status": True},
        {"status": "500"},
        {"status": 500.5},
        {"status": 99},
        {"status": 600},
        {"reason": True},
        {"reason": "6"},
        {"reason": [6]},
        {"reason": 6.5},
        {"reason": 6, "n": True},
        {"reason": 6, "n": "2"},
        {"reason": 6, "n": 1.5},
        {"reason": 6, "n": 0},
        {"body": 5},
        {"body": ["x"]},
        {"body": "x", "content_type": 5},
        {"body": "x", "content_type": "text/html\r\nX-Evil: 1"},
        {"status": 429, "retry_after": [1]},
        {"status": 429, "retry_after": True},
        {"status": 429, "retry_after": "1\r\nX-Evil: 1"},
        {"delay": -1},
        {"delay": "1"},
        {"delay": True},
        {"delay": 1e300},
        {"reason": 6, "path": 5},
        {"reason": 6, "path": "api/whatsapp/sendMessage"},
        {"reason": 6, "to": ["972501234567"]},
        {"reason": 6, "to": 972501234567},
        {"reason": 6, "to": "call me"},
    ],
)
def test_bad_fault_requests_are_400_and_queue_nothing(
    sim: WhatsAppSimulator, http: requests.Session, payload: dict[str, Any]
) -> None:
    answer = control(sim, http, "faults", payload)
    assert answer.status_code == 400
    assert answer.json()["ok"] is False
    assert answer.json()["error"]
    assert sim.pending_faults == 0
    sim.open_window(CLIENT)
    assert send(sim, http)["reason"] == Reason.OK  # nothing was queued that breaks later requests


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"status": True}, TypeError),
        ({"status": "500"}, TypeError),
        ({"status": 500.0}, TypeError),
        ({"status": 42}, ValueError),
        ({"reason": False}, TypeError),
        ({"reason": "6"}, TypeError),
        ({"reason": 6, "n": True}, TypeError),
        ({"reason": 6, "n": 2.0}, TypeError),
        ({"body": 5}, TypeError),
        ({"body": "x", "content_type": b"text/html"}, TypeError),
        ({"delay": float("nan")}, ValueError),
        ({"delay": -0.1}, ValueError),
        ({"reason": 6, "path": b"/api"}, TypeError),
    ],
)
def test_fail_next_checks_its_argument_types(kwargs: dict[str, Any], error: type[Exception]) -> None:
    sim = WhatsAppSimulator()
    with pytest.raises(error):
        sim.fail_next(**kwargs)
    assert sim.pending_faults == 0


def test_good_fault_arguments_still_work(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(status=429, retry_after=1.5)
    sim.fail_next(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    sim.fail_next(body=b"<html>x</html>", status=502, content_type="text/html")
    sim.fail_next(delay=0, reason=9)
    url, auth = sim.base_url + SEND_PATH, {"Authorization": f"Bearer {TOKEN}"}
    payload = {"from": SENDER, "to": CLIENT, "body": "x"}
    first, second, third, fourth = (http.post(url, json=payload, headers=auth, timeout=5) for _ in range(4))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "1.5")
    assert (second.status_code, second.headers["Retry-After"]) == (503, "Wed, 21 Oct 2015 07:28:00 GMT")
    assert (third.status_code, third.content) == (502, b"<html>x</html>")
    assert (fourth.status_code, fourth.json()["reason"]) == (200, 9)
    assert control(sim, http, "faults", {"status": 500, "n": 2, "to": CLIENT}).json() == {
        "ok": True,
        "pending": 2,
    }
