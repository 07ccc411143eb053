"""Knowing a client's window before sending: the webhook app's window endpoint, WhatsAppHook.window
on a worker, and WhatsAppSendOperator(check_window=True), over real HTTP on the migrated test DB."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pendulum
import pytest
from airflow.sdk import DAG
from airflow_support import FAST, run_dag
from webhook_support import plugin_app, serve

from airflow_provider_wa019.api import SEND_PATH, inbound_payload
from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
from airflow_provider_wa019.operators.whatsapp import WhatsAppSendOperator
from airflow_provider_wa019.testing import WhatsAppSimulator

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET = "window-test-secret-value"
CLIENT = "972501234567"
STRANGER = "972509999999"
START = pendulum.datetime(2026, 1, 1, tz="UTC")


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    with serve(plugin_app()) as url:
        yield url


@pytest.fixture
def conn(wa019_env, api_url) -> Iterator[tuple[str, WhatsAppSimulator]]:
    """A fresh receiving connection (its own inbound asset) on a simulator; yields (id, sim)."""
    conn_id = f"wa019_window_{uuid.uuid4().hex[:8]}"
    with WhatsAppSimulator(templates=[{"name": "follow_up", "body": "Hi, about {{1}}"}]) as sim:
        wa019_env(
            conn_id=conn_id, host=sim.base_url, password=sim.token, sender=sim.sender,
            webhook_secret=SECRET, airflow_api_url=api_url, **FAST,
        )  # fmt: skip
        yield conn_id, sim


def deliver(api_url: str, conn_id: str, number: str, ago: timedelta = timedelta(minutes=1)) -> None:
    body = inbound_payload(
        unique=uuid.uuid4().hex.upper(), sender=number, to="972771234567", body="hi",
        timestamp=pendulum.now("UTC") - ago,
    )  # fmt: skip
    answer = httpx.post(f"{api_url}/wa019/webhook/{conn_id}?secret={SECRET}", json=body, timeout=10)
    assert answer.json() == {"status": "recorded"}


def test_the_window_endpoint_answers_from_recorded_messages(api_url, conn):
    conn_id, _ = conn
    deliver(api_url, conn_id, CLIENT, ago=timedelta(hours=2))
    url = f"{api_url}/wa019/window/{conn_id}"
    answer = httpx.get(f"{url}/{CLIENT}", headers={"X-Wa019-Secret": SECRET}, timeout=10).json()
    assert answer["window_open"] is True
    assert pendulum.parse(answer["closes_at"]) - pendulum.parse(answer["last_inbound"]) == timedelta(hours=24)
    assert httpx.get(f"{url}/{STRANGER}", headers={"X-Wa019-Secret": SECRET}, timeout=10).json() == {
        "number": STRANGER, "last_inbound": None, "window_open": False, "closes_at": None,
    }  # fmt: skip
    assert httpx.get(f"{url}/{CLIENT}", headers={"X-Wa019-Secret": "wrong"}, timeout=10).status_code == 401
    assert httpx.get(f"{url}/{CLIENT}", timeout=10).status_code == 401
    assert (
        httpx.get(f"{api_url}/wa019/window/nope/{CLIENT}", headers={"X-Wa019-Secret": SECRET}).status_code
        == 404
    )


def test_a_message_older_than_24_hours_leaves_the_window_closed(api_url, conn):
    conn_id, _ = conn
    deliver(api_url, conn_id, CLIENT, ago=timedelta(hours=25))
    with WhatsAppHook(conn_id) as hook:
        status = hook.window("+972 50-123-4567")
    assert status.open is False


def test_the_hook_knows_the_window_from_the_webhook(api_url, conn):
    conn_id, sim = conn
    deliver(api_url, conn_id, CLIENT)
    with WhatsAppHook(conn_id) as hook:
        opened, unknown_client = hook.window(CLIENT), hook.window(STRANGER)
    assert opened.open is True
    assert opened.closes_at > pendulum.now("UTC")
    assert unknown_client.open is False
    assert sim.requests == []  # nothing asked of 019sms


def test_without_receiving_or_an_api_server_the_window_is_unknown(wa019_env):
    with WhatsAppSimulator() as sim:
        wa019_env(host=sim.base_url, password=sim.token, sender=sim.sender, **FAST)
        with WhatsAppHook() as hook:
            status = hook.window(CLIENT)
        assert (status.open, status.reason) == (
            None,
            "receiving is off: the connection has no webhook_secret",
        )
        wa019_env(host=sim.base_url, password=sim.token, sender=sim.sender, webhook_secret=SECRET,
                  airflow_api_url="http://127.0.0.1:9", **FAST)  # fmt: skip
        with WhatsAppHook() as hook:
            status = hook.window(CLIENT)
        assert status.open is None
        assert "could not be asked" in status.reason


def test_check_window_sends_the_template_at_once_when_the_window_is_known_closed(api_url, conn):
    conn_id, sim = conn
    with DAG("window_known_closed", schedule=None, start_date=START, catchup=False) as dag:
        WhatsAppSendOperator(
            task_id="send", to=STRANGER, body="free-form", wa019_conn_id=conn_id,
            fallback_template="follow_up", fallback_variables=["A-7"], check_window=True,
        )  # fmt: skip
    result = run_dag(dag)
    assert result.tis["send"] == ("success", 1)
    assert sim.requests_to(SEND_PATH) == []  # no refused free-form request first
    assert [m["kind"] for m in sim.sent] == ["template"]
    assert result.xcom("send", key="sent_as") == "template"


def test_check_window_sends_free_form_when_the_client_wrote(api_url, conn):
    conn_id, sim = conn
    deliver(api_url, conn_id, CLIENT)
    sim.open_window(CLIENT)  # the platform's side of the same message
    with DAG("window_known_open", schedule=None, start_date=START, catchup=False) as dag:
        WhatsAppSendOperator(
            task_id="send", to=CLIENT, body="free-form", wa019_conn_id=conn_id,
            fallback_template="follow_up", fallback_variables=["A-7"], check_window=True,
        )  # fmt: skip
    run_dag(dag)
    assert [m["kind"] for m in sim.sent] == ["message"]
