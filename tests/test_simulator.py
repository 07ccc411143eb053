"""The loopback simulator, exercised over real HTTP with ``requests`` (no Airflow, except for the
connection round-trip test)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pendulum
import pytest
import requests

from airflow_provider_wa019.api import SEND_PATH, TEMPLATE_PATH, TEMPLATES_PATH, Reason
from airflow_provider_wa019.testing import (
    RecordedRequest,
    WhatsAppSimulator,
    refused_address,
    unresponsive_address,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cr3t-T0ken-xyz"
SENDER = "972771234567"
CLIENT = "972501234567"
T0 = pendulum.datetime(2025, 3, 1, 12, 0, 0, tz="UTC")
TEMPLATES = [
    {"name": "hello", "body": "Hi {{1}}, your code is {{2}}", "templateId": "77"},
    {"name": "plain", "body": "Service notice", "language": "en"},
    {"name": "draft", "body": "Not yet {{1}}", "status": "pending"},
]


@pytest.fixture
def sim(make_sim) -> WhatsAppSimulator:
    return make_sim(
        connection=False, token=TOKEN, senders=(SENDER, "972771234568"), templates=TEMPLATES, now=T0
    )


@pytest.fixture
def http() -> Any:
    with requests.Session() as session:
        yield session


def send(
    sim: WhatsAppSimulator,
    http: requests.Session,
    to: Any = CLIENT,
    body: Any = "hello",
    *,
    token: str | None = TOKEN,
    **fields: Any,
) -> dict[str, Any]:
    payload = {"from": SENDER, "to": to, "body": body, **fields}
    payload = {k: v for k, v in payload.items() if v is not None}
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = http.post(sim.base_url + SEND_PATH, json=payload, headers=headers, timeout=5)
    assert response.status_code == 200
    return response.json()


def send_template(
    sim: WhatsAppSimulator, http: requests.Session, to: str = CLIENT, name: str = "hello", **fields: Any
) -> dict[str, Any]:
    payload = {"from": SENDER, "to": to, "name": name, "headerType": 1, **fields}
    response = http.post(
        sim.base_url + TEMPLATE_PATH, json=payload, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    )
    assert response.status_code == 200
    return response.json()


# -- free-form sends: every reason code -------------------------------------------------------


def test_success_has_the_vendor_shape(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    answer = send(sim, http, body="*hi*\nthere", replyTo="abc")
    assert list(answer) == [
        "status", "unique", "body", "timestamp", "from", "to", "templateTimeLeft", "conversationTimeLeft", "reason",
    ]  # fmt: skip
    assert answer["status"] == "OK"
    assert answer["reason"] == Reason.OK
    assert len(answer["unique"]) == 22
    assert answer["unique"].isalnum()
    assert answer["timestamp"] == int(T0.timestamp())
    assert (answer["from"], answer["to"], answer["body"]) == (SENDER, CLIENT, "*hi*\nthere")
    assert answer["templateTimeLeft"] == "1440"
    assert answer["conversationTimeLeft"] == "1440"
    [sent] = sim.sent
    assert sent["unique"] == answer["unique"]
    assert (sent["kind"], sent["replyTo"], sent["at"]) == ("message", "abc", T0)
    assert send(sim, http)["unique"] != answer["unique"]


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [(b"{not json", "application/json"), (b"[1, 2]", "application/json"), (b"", "application/json")],
)
def test_reason_2_for_bad_json(
    sim: WhatsAppSimulator, http: requests.Session, raw: bytes, content_type: str
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    answer = http.post(sim.base_url + SEND_PATH, data=raw, headers=headers, timeout=5).json()
    assert answer["status"] == "FAIL"
    assert answer["reason"] == Reason.BAD_SENDER_OR_JSON


@pytest.mark.parametrize("sender", ["972770000000", "", None, 972771234567])
def test_reason_2_for_unknown_sender(sim: WhatsAppSimulator, http: requests.Session, sender: Any) -> None:
    sim.open_window(CLIENT)
    answer = send(sim, http, **{"from": sender})
    assert (answer["status"], answer["reason"]) == ("FAIL", 2)
    assert "does not exist" in answer["message"]


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_reason_3_for_a_wrong_token_comes_first(
    sim: WhatsAppSimulator, http: requests.Session, token: Any
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    answer = http.post(sim.base_url + SEND_PATH, data=b"{broken", headers=headers, timeout=5).json()
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.BAD_TOKEN)
    assert sim.sent == []


def test_auth_header_name_is_case_insensitive(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    payload = {"from": SENDER, "to": CLIENT, "body": "x"}
    answer = http.post(
        sim.base_url + SEND_PATH, json=payload, headers={"authorization": f"bearer {TOKEN}"}
    ).json()
    assert answer["reason"] == Reason.OK


@pytest.mark.parametrize(
    "to", ["", None, "+972501234567", "1234567", "9725012345678901", "97250123456a", 972501234567]
)
def test_reason_4_for_a_bad_recipient(sim: WhatsAppSimulator, http: requests.Session, to: Any) -> None:
    answer = send(sim, http, to=to)
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.BAD_RECIPIENT)


@pytest.mark.parametrize("body", [None, "", "  \n\t"])
def test_reason_5_for_an_empty_body(sim: WhatsAppSimulator, http: requests.Session, body: Any) -> None:
    sim.open_window(CLIENT)
    answer = send(sim, http, body=body)
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.EMPTY_BODY)


def test_reason_6_only_as_an_injected_fault(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(reason=6)
    answer = send(sim, http)
    assert answer == {"status": "FAIL", "reason": 6, "message": "WhatsApp error, try again"}
    assert sim.sent == []
    assert send(sim, http)["reason"] == Reason.OK  # the fault is used up
    assert len(sim.sent) == 1


def test_reason_8_first_contact_then_7_after_a_template(
    sim: WhatsAppSimulator, http: requests.Session
) -> None:
    assert send(sim, http)["reason"] == Reason.FIRST_CONTACT
    template = send_template(sim, http, bodyVariable1="Dana", bodyVariable2="1234")
    assert (template["status"], template["body"]) == ("OK", "Hi Dana, your code is 1234")
    assert template["templateTimeLeft"] == "0"  # a template does not open the free-form window
    assert template["conversationTimeLeft"] == "1440"  # ... but it starts a conversation
    assert send(sim, http)["reason"] == Reason.WINDOW_CLOSED  # still refused: the client never replied
    assert send_template(sim, http, name="plain")["reason"] == Reason.OK  # templates again are fine
    sim.advance(minutes=10)
    sim.open_window(CLIENT)  # the client replies
    answer = send(sim, http)
    assert answer["reason"] == Reason.OK
    assert answer["conversationTimeLeft"] == "1430"  # the conversation the template started goes on
    assert [m["kind"] for m in sim.sent] == ["template", "template", "message"]
    assert sim.sent[0]["variables"] == ["Dana", "1234"]


def test_reason_7_when_the_window_expires(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    sim.advance(hours=23, minutes=59)
    answer = send(sim, http)
    assert (answer["reason"], answer["templateTimeLeft"]) == (1, "1")
    sim.advance(minutes=1)  # exactly 24 h since the client's message
    assert send(sim, http)["reason"] == Reason.WINDOW_CLOSED
    sim.open_window(CLIENT, at=sim.now().subtract(hours=25))  # an old message changes nothing
    assert send(sim, http)["reason"] == Reason.WINDOW_CLOSED
    sim.open_window(CLIENT)
    assert send(sim, http)["reason"] == Reason.OK


def test_windows_are_per_sender(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT, sender="972771234568")
    assert send(sim, http)["reason"] == Reason.FIRST_CONTACT
    assert send(sim, http, **{"from": "972771234568"})["reason"] == Reason.OK


def test_time_left_minutes(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT, at=T0.subtract(minutes=30, seconds=20))
    first = send(sim, http)
    assert (first["templateTimeLeft"], first["conversationTimeLeft"]) == ("1409", "1440")
    sim.advance(minutes=60, seconds=30)
    second = send(sim, http)
    assert (second["templateTimeLeft"], second["conversationTimeLeft"]) == ("1349", "1379")
    sim.open_window(CLIENT)  # the client writes again: the template window resets, not the conversation
    third = send(sim, http)
    assert (third["templateTimeLeft"], third["conversationTimeLeft"]) == ("1440", "1379")
    sim.advance(hours=23)
    sim.open_window(CLIENT)
    fourth = send(sim, http)  # 24 h after the first send: a new conversation starts
    assert (fourth["templateTimeLeft"], fourth["conversationTimeLeft"]) == ("1440", "1440")
    assert fourth["timestamp"] == int(T0.add(hours=24, seconds=30).timestamp())


def test_overlong_body_is_refused(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    assert send(sim, http, body="x" * 4096)["reason"] == Reason.OK
    answer = send(sim, http, body="x" * 4097)
    assert answer["reason"] == Reason.BAD_SENDER_OR_JSON
    assert "4096" in answer["message"]


# -- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"name": "nope"}, "no template named"),
        ({"bodyVariable1": "a"}, "takes 2 variable"),
        ({"bodyVariable1": "a", "bodyVariable2": "b", "bodyVariable3": "c"}, "takes 2 variable"),
        ({"bodyVariable1": "a", "bodyVariable2": " "}, "bodyVariable2 is empty"),
        ({"bodyVariable1": "a", "bodyVariable2": "b" * 1010}, "at most 1024"),
        ({"name": "draft", "bodyVariable1": "a"}, "not approved"),
        ({"headerType": 2}, "bad headerType"),
        ({"headerType": 3, "bodyVariable1": "a", "bodyVariable2": "b"}, "https 'headerLink'"),
        (
            {"headerType": 5, "headerLink": "http://x/y.pdf", "bodyVariable1": "a", "bodyVariable2": "b"},
            "https",
        ),
        ({"bodyVariable11": "a"}, "bodyVariable10"),
    ],
)
def test_template_refusals_are_reason_2(
    sim: WhatsAppSimulator, http: requests.Session, fields: dict[str, Any], words: str
) -> None:
    answer = send_template(sim, http, **fields)
    assert (answer["status"], answer["reason"]) == ("FAIL", Reason.BAD_SENDER_OR_JSON)
    assert words in answer["message"]
    assert sim.sent == []


def test_template_with_media_header_and_common_checks(sim: WhatsAppSimulator, http: requests.Session) -> None:
    answer = send_template(
        sim, http, headerType=3, headerLink="https://example.test/a.png", bodyVariable1="A", bodyVariable2=7
    )
    assert (answer["reason"], answer["body"]) == (1, "Hi A, your code is 7")
    assert sim.sent[0]["headerLink"] == "https://example.test/a.png"
    assert send_template(sim, http, to="+97250")["reason"] == Reason.BAD_RECIPIENT
    bad_token = http.post(sim.base_url + TEMPLATE_PATH, json={}, headers={"Authorization": "Bearer x"}).json()
    assert bad_token["reason"] == Reason.BAD_TOKEN


def test_get_templates(sim: WhatsAppSimulator, http: requests.Session) -> None:
    url = sim.base_url + TEMPLATES_PATH.format(phone=SENDER)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    unauthorized = http.get(url, headers={"Authorization": "Bearer nope"})
    assert (unauthorized.status_code, unauthorized.json()) == (
        401,
        {"success": False, "message": "Unauthorized"},
    )
    listing = http.get(url, headers=auth).json()
    assert listing["success"] is True
    assert [t["name"] for t in listing["templates"]] == ["hello", "plain", "draft"]
    assert set(listing["templates"][0]) == {
        "name", "templateId", "language", "body", "footer", "buttons", "status", "category",
    }  # fmt: skip
    one = http.get(url + "/77", headers=auth).json()
    assert [t["body"] for t in one["templates"]] == ["Hi {{1}}, your code is {{2}}"]
    assert http.get(url + "/999", headers=auth).json() == {"success": True, "templates": []}
    unknown = http.get(sim.base_url + TEMPLATES_PATH.format(phone="972000000000"), headers=auth)
    assert (unknown.status_code, unknown.json()) == (200, {"success": False, "message": "phone not found"})
    assert http.post(url, headers=auth).status_code == 405
    assert sim.sent == []


def test_unknown_paths_and_methods(sim: WhatsAppSimulator, http: requests.Session) -> None:
    missing = http.post(sim.base_url + "/api/whatsapp/sendMesage", json={})
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert "no such endpoint" in missing.json()["message"]
    assert http.get(sim.base_url + SEND_PATH).status_code == 405
    assert [r.response_status for r in sim.requests] == [404, 405]


def test_chunked_request_body(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    payload = json.dumps({"from": SENDER, "to": CLIENT, "body": "chunked"}).encode()
    chunks = iter([payload[:10], payload[10:]])
    answer = http.post(
        sim.base_url + SEND_PATH, data=chunks, headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    assert answer["reason"] == Reason.OK
    assert sim.requests[0].headers.get("Transfer-Encoding") == "chunked"


# -- faults -----------------------------------------------------------------------------------


def test_http_status_faults_and_retry_after(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(status=429, retry_after=3)
    sim.fail_next(2, status=503)
    url, auth = sim.base_url + SEND_PATH, {"Authorization": f"Bearer {TOKEN}"}
    payload = {"from": SENDER, "to": CLIENT, "body": "x"}
    first = http.post(url, json=payload, headers=auth)
    assert (first.status_code, first.headers["Retry-After"]) == (429, "3")
    assert first.json()["status"] == "FAIL"
    assert sim.pending_faults == 2
    assert [http.post(url, json=payload, headers=auth).status_code for _ in range(3)] == [503, 503, 200]
    for status in (500, 502, 504):
        sim.fail_next(status=status)
        assert http.post(url, json=payload, headers=auth).status_code == status
    assert len(sim.sent) == 1
    assert [r.response_status for r in sim.requests] == [429, 503, 503, 200, 500, 502, 504]


@pytest.mark.parametrize(
    ("kwargs", "status", "content_type", "raw"),
    [
        ({"body": "not json at all"}, 200, "application/json", b"not json at all"),
        ({"body": '{"status": "OK", "uni'}, 200, "application/json", b'{"status": "OK", "uni'),
        ({"body": b""}, 200, "application/json", b""),
        ({"body": "[1, 2]"}, 200, "application/json", b"[1, 2]"),
        (
            {"body": "<html>Bad gateway</html>", "status": 502},
            502,
            "text/html; charset=utf-8",
            b"<html>Bad gateway</html>",
        ),
        ({"body": "oops", "content_type": "text/plain"}, 200, "text/plain", b"oops"),
        ({"reason": 9, "status": 500}, 500, "application/json", None),
    ],
)
def test_raw_body_faults(
    sim: WhatsAppSimulator,
    http: requests.Session,
    kwargs: dict[str, Any],
    status: int,
    content_type: str,
    raw: Any,
) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(**kwargs)
    response = http.post(
        sim.base_url + SEND_PATH,
        json={"from": SENDER, "to": CLIENT, "body": "x"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert (response.status_code, response.headers["Content-Type"]) == (status, content_type)
    assert response.headers["Content-Length"] == str(len(response.content))
    if raw is not None:
        assert response.content == raw
    else:
        assert response.json()["reason"] == 9
    assert sim.sent == []
    # The keep-alive connection is still usable afterwards.
    assert send(sim, http)["reason"] == Reason.OK


def test_delay_fault_gives_a_read_timeout_but_the_message_is_sent(
    sim: WhatsAppSimulator, http: requests.Session
) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(delay=0.4)
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(
            sim.base_url + SEND_PATH,
            json={"from": SENDER, "to": CLIENT, "body": "slow"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=(2, 0.1),
        )
    deadline = time.monotonic() + 3
    while not sim.sent and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [m["body"] for m in sim.sent] == ["slow"]  # the outcome the client could not see


def test_fault_limited_to_a_path(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    sim.fail_next(status=500, path="/whatsapp-api/get-phone-templates")
    assert send(sim, http)["reason"] == Reason.OK
    url = sim.base_url + TEMPLATES_PATH.format(phone=SENDER)
    assert http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 500
    assert http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert len(sim.requests_to("/whatsapp-api/get-phone-templates")) == 2
    assert len(sim.requests_to(SEND_PATH)) == 1


def test_fail_next_needs_a_fault() -> None:
    sim = WhatsAppSimulator()
    with pytest.raises(ValueError, match="at least one"):
        sim.fail_next()
    with pytest.raises(ValueError, match="at least 1"):
        sim.fail_next(0, status=500)


# -- latency and concurrency ------------------------------------------------------------------


def _parallel_sends(sim: WhatsAppSimulator, count: int) -> float:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with requests.Session() as session:
                barrier.wait()
                assert send(sim, session)["reason"] == Reason.OK
        except BaseException as err:  # collected and re-raised by the test
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(count)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    return time.monotonic() - start


def test_latency_max_concurrency_and_peak() -> None:
    with WhatsAppSimulator(token=TOKEN, latency=0.15) as sim:
        sim.open_window(CLIENT)
        elapsed = _parallel_sends(sim, 4)
        assert sim.peak_concurrency == 4  # no limit: all four are handled at once
        assert 0.15 <= elapsed < 0.55
        sim.reset()
        sim.open_window(CLIENT)
        assert sim.peak_concurrency == 0
        sim.max_concurrency = 2
        elapsed = _parallel_sends(sim, 6)  # three rounds of two
        assert sim.peak_concurrency == 2
        assert elapsed >= 0.45
        assert len(sim.sent) == 6


# -- control endpoints ------------------------------------------------------------------------


def test_control_endpoints(sim: WhatsAppSimulator, http: requests.Session) -> None:
    control = sim.base_url + "/__sim__/"
    assert http.post(control + "clock", json={"set": "2025-06-01T08:00:00+00:00"}).json()["ok"] is True
    assert sim.now() == pendulum.datetime(2025, 6, 1, 8, tz="UTC")
    assert (
        http.post(control + "clock", json={"advance_minutes": 90})
        .json()["now"]
        .startswith("2025-06-01T09:30")
    )
    assert http.post(control + "open-window", json={"number": CLIENT}).json() == {"ok": True}
    assert http.post(control + "faults", json={"reason": 6, "n": 1}).json() == {"ok": True, "pending": 1}
    assert send(sim, http)["reason"] == Reason.WHATSAPP_ERROR
    assert send(sim, http)["reason"] == Reason.OK
    sent = http.get(control + "sent").json()
    assert [(m["to"], m["kind"], m["at"]) for m in sent] == [(CLIENT, "message", "2025-06-01T09:30:00+00:00")]
    log = http.get(control + "requests")
    assert [r["response_json"]["reason"] for r in log.json()] == [6, 1]
    assert TOKEN not in log.text
    bad = http.post(control + "faults", json={"nonsense": 1})
    assert (bad.status_code, bad.json()["ok"]) == (400, False)
    assert http.post(control + "clock", json={}).status_code == 400
    assert http.get(control + "nothing").status_code == 404
    assert http.post(
        control + "open-window", json={"number": "972509999999", "at": "2025-05-01T00:00:00Z"}
    ).ok
    assert send(sim, http, to="972509999999")["reason"] == Reason.WINDOW_CLOSED
    assert http.post(control + "reset").json() == {"ok": True}
    assert http.get(control + "requests").json() == []
    assert sim.sent == []
    assert send(sim, http)["reason"] == Reason.FIRST_CONTACT  # contacts are forgotten
    assert [r.path for r in sim.requests] == [SEND_PATH]  # control requests are never recorded


def test_clock_follows_real_time_until_set() -> None:
    sim = WhatsAppSimulator()
    assert abs((sim.now() - pendulum.now("UTC")).total_seconds()) < 1
    sim.advance(hours=2)
    assert abs((sim.now() - pendulum.now("UTC").add(hours=2)).total_seconds()) < 1
    sim.set_time("2024-01-01T00:00:00")
    assert sim.now() == pendulum.datetime(2024, 1, 1, tz="UTC")
    sim.set_time(None)
    assert abs((sim.now() - pendulum.now("UTC")).total_seconds()) < 1


# -- secrets and connections --------------------------------------------------------------------


def test_no_token_is_ever_stored(sim: WhatsAppSimulator, http: requests.Session) -> None:
    sim.open_window(CLIENT)
    send(sim, http)
    send(sim, http, token="wrong")
    send(sim, http, token=None)
    http.post(
        sim.base_url + SEND_PATH,
        json={"from": SENDER, "to": CLIENT, "body": f"leaked {TOKEN}"},
        headers={"Authorization": f"Bearer {TOKEN}", "X-Debug": f"token={TOKEN}"},
    )
    records = sim.requests
    assert [r.headers.get("Authorization") for r in records] == [
        "Bearer ***",
        "Bearer <wrong>",
        None,
        "Bearer ***",
    ]
    assert records[3].headers["X-Debug"] == "token=***"
    assert records[3].json["body"] == "leaked ***"
    assert isinstance(records[0], RecordedRequest)
    assert TOKEN not in repr(records)
    assert records[3].response_json["body"] == "leaked ***"
    assert sim.sent[-1]["body"] == f"leaked {TOKEN}"  # sent keeps what was really sent
    assert records[0].received_at == T0
    with pytest.raises(AttributeError):
        records[0].path = "/x"  # type: ignore[misc]


def test_connection_forms(sim: WhatsAppSimulator) -> None:
    conn = json.loads(sim.connection_json(timeout=5))
    assert conn == {
        "conn_type": "wa019",
        "host": sim.base_url,
        "password": TOKEN,
        "extra": {"sender": SENDER, "timeout": 5},
    }
    assert sim.base_url == f"http://127.0.0.1:{sim.port}"
    env = sim.connection_env("my_wa")
    assert list(env) == ["AIRFLOW_CONN_MY_WA"]
    assert json.loads(env["AIRFLOW_CONN_MY_WA"])["host"] == sim.base_url


def test_connection_uri_and_json_round_trip_through_airflow(
    sim: WhatsAppSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk = pytest.importorskip("airflow.sdk")
    for value in (sim.connection_uri(timeout=5), sim.connection_json(timeout=5)):
        if value.startswith("wa019://"):
            conn = sdk.Connection.from_uri(value, conn_id="wa019_default")
        else:
            conn = sdk.Connection.from_json(value, conn_id="wa019_default")
        assert (conn.conn_type, conn.host, conn.port, conn.password) == ("wa019", sim.base_url, None, TOKEN)
        assert conn.extra_dejson == {"sender": SENDER, "timeout": 5}
        # And the way a task finds it: from the environment variable.
        monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", value)
        found = sdk.BaseHook.get_connection("wa019_default")
        assert (found.host, found.password, found.extra_dejson["sender"]) == (sim.base_url, TOKEN, SENDER)


# -- loopback failure addresses ---------------------------------------------------------------


def test_unresponsive_address_times_out_connects() -> None:
    with unresponsive_address() as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        start = time.monotonic()
        with pytest.raises(requests.exceptions.ConnectTimeout):
            requests.get(base_url + SEND_PATH, timeout=(0.3, 5))
        assert time.monotonic() - start < 2


def test_refused_address_refuses_connects() -> None:
    with refused_address() as base_url:
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            requests.get(base_url, timeout=(2, 2))
        assert not isinstance(caught.value, requests.exceptions.ConnectTimeout)


# -- packaging: CLI, plugin, import weight ------------------------------------------------------


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def _first_lines(proc: subprocess.Popen[str], count: int, timeout: float = 15) -> list[str]:
    """The first ``count`` lines of ``proc``'s stdout, failing instead of hanging."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def reader() -> None:
        for _ in range(count):
            lines.put(stdout.readline().rstrip("\n"))

    threading.Thread(target=reader, daemon=True).start()
    try:
        return [lines.get(timeout=timeout) for _ in range(count)]
    except queue.Empty:
        pytest.fail("the simulator did not print its two lines in time")


def test_cli_serves_until_sigterm() -> None:
    args = [
        sys.executable, "-m", "airflow_provider_wa019.testing", "--port", "0", "--token", TOKEN,
        "--sender", SENDER, "972771234568", "--open-window", CLIENT, "--template", "hi=Hello {{1}}",
        "--latency", "0", "--max-concurrency", "4",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        first, second = _first_lines(proc, 2)
        assert first.startswith("base_url: http://127.0.0.1:")
        base_url = first.split(": ", 1)[1]
        name, _, value = second.partition("=")
        assert name == "AIRFLOW_CONN_WA019_DEFAULT"
        conn = json.loads(value)
        assert (conn["host"], conn["password"], conn["extra"]["sender"]) == (base_url, TOKEN, SENDER)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        answer = requests.post(
            base_url + SEND_PATH, json={"from": SENDER, "to": CLIENT, "body": "hi"}, headers=auth, timeout=5
        ).json()
        assert answer["reason"] == Reason.OK
        listing = requests.get(
            base_url + TEMPLATES_PATH.format(phone="972771234568"), headers=auth, timeout=5
        )
        assert [t["body"] for t in listing.json()["templates"]] == ["Hello {{1}}"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert proc.stderr.read() == ""


def test_pytest_plugin_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_uses_fixtures.py").write_text(
        textwrap.dedent(
            """
            import os, sys, json, requests

            def test_fixtures(wa019_connection, wa019_simulator):
                assert wa019_connection is wa019_simulator
                conn = json.loads(os.environ["AIRFLOW_CONN_WA019_DEFAULT"])
                assert conn["host"] == wa019_simulator.base_url
                wa019_simulator.open_window("972501234567")
                r = requests.post(conn["host"] + "/api/whatsapp/sendMessage",
                                  json={"from": conn["extra"]["sender"], "to": "972501234567", "body": "x"},
                                  headers={"Authorization": "Bearer " + conn["password"]}, timeout=5)
                assert r.json()["reason"] == 1
                assert "airflow" not in sys.modules

            def test_env_is_restored():
                assert "AIRFLOW_CONN_WA019_DEFAULT" not in os.environ
            """
        )
    )
    env = _env()
    env.pop("AIRFLOW_CONN_WA019_DEFAULT", None)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the entry point may be installed: load it once only
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "airflow_provider_wa019.testing.pytest_plugin", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_testing_package_imports_light() -> None:
    code = (
        "import sys, airflow_provider_wa019.testing, airflow_provider_wa019.testing.pytest_plugin;"
        "heavy = [m for m in ('airflow', 'requests', 'urllib3', 'phonenumbers') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=30)
