"""The inbound webhook (``POST /wa019/webhook/<conn_id>``) over real HTTP, on the migrated test DB.

The app under test is the one the plugin gives Airflow (``WhatsAppWebhookPlugin.fastapi_apps``),
mounted at its ``url_prefix`` in a parent FastAPI app as Airflow's api-server mounts it, and
served by uvicorn on 127.0.0.1 in a background thread (``proxy_headers`` off, so the peer and
``X-Forwarded-For`` logic is the app's own). Clients bind 127.0.0.2/127.0.0.3 when a test needs
a different peer address. Connections come from ``AIRFLOW_CONN_*`` (``wa019_env``), one fresh
connection id per test, so each test has its own inbound asset and the 5 s settings cache of one
test never serves another. What was recorded is read back from the DB (asset event rows).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pendulum
import pytest
from webhook_support import plugin_app, serve

from airflow_provider_wa019.api import MAX_INBOUND_BYTES, InboundMessage, inbound_payload
from airflow_provider_wa019.inbound import EXTRA_KEY, inbound_messages, inbound_uri, whatsapp_inbound
from airflow_provider_wa019.webhook.auth import (
    SettingsCache,
    WebhookSettings,
    parse_address,
    redact_query,
    settings_from_connection,
)
from airflow_provider_wa019.webhook.plugin import URL_PREFIX, WhatsAppWebhookPlugin

pytestmark = pytest.mark.usefixtures("airflow_db")

SECRET = f"whsec-LEAKCHECK-{secrets.token_hex(10)}"
CLIENT = "972501234567"
ACCOUNT = "972771234567"
HOST = "https://019sms.co.il"


# --- serving the app --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve(plugin_app()) as url:
        yield url


def client(source: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(transport=transport, timeout=15)


def post(
    base_url: str,
    conn_id: str,
    body: Any = None,
    *,
    secret: str | None = SECRET,
    header_secret: str | None = None,
    headers: dict[str, str] | None = None,
    content: Any = None,
    source: str | None = None,
    query: str | None = None,
) -> httpx.Response:
    """POST a delivery; ``body`` as JSON unless ``content`` (raw bytes or a chunk generator)."""
    url = f"{base_url}{URL_PREFIX}/webhook/{conn_id}"
    if query is not None:
        url += f"?{query}"
    elif secret is not None:
        url += f"?secret={secret}"
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if header_secret is not None:
        all_headers["X-Wa019-Secret"] = header_secret
    if content is None:
        content = json.dumps(body if body is not None else payload()).encode()
    with client(source) as http:
        return http.post(url, content=content, headers=all_headers)


def payload(unique: str | None = None, **overrides: Any) -> dict[str, Any]:
    data = inbound_payload(
        unique=unique or uuid.uuid4().hex.upper(),
        sender=CLIENT,
        to=ACCOUNT,
        body="hello",
        timestamp=pendulum.datetime(2026, 3, 1, 12, 0, tz="UTC"),
        sender_name="Ronen",
    )
    data.update(overrides)
    return data


@pytest.fixture
def receiving(wa019_env):
    """Make a fresh wa019 connection that receives (``webhook_secret`` set); returns its id."""

    def _make(*, conn_type: str = "wa019", secret: str | None = SECRET, **extra: Any) -> str:
        conn_id = f"wa019_hook_{uuid.uuid4().hex[:10]}"
        if secret is not None:
            extra["webhook_secret"] = secret
        wa019_env(host=HOST, conn_id=conn_id, conn_type=conn_type, **extra)
        return conn_id

    return _make


# --- reading the DB back ------------------------------------------------------------------------


def recorded(conn_id: str) -> list[dict[str, Any]]:
    """The extras of the events of ``conn_id``'s inbound asset, oldest first."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == inbound_uri(conn_id))
            .order_by(AssetEvent.id)
        ).all()
        return [dict(row.extra) for row in rows]


def asset_rows(conn_id: str) -> list[tuple[int, str, str, str]]:
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [
            tuple(r)
            for r in session.execute(
                select(AssetModel.id, AssetModel.name, AssetModel.uri, AssetModel.group).where(
                    AssetModel.uri == inbound_uri(conn_id)
                )
            )
        ]


def uniques(conn_id: str) -> list[str]:
    return [extra[EXTRA_KEY]["unique"] for extra in recorded(conn_id)]


# --- 404: receiving is off unless configured ------------------------------------------------


def test_unknown_wrong_type_and_unconfigured_connections_answer_one_404(base_url, receiving):
    other_type = receiving(conn_type="http")
    no_secret = receiving(secret=None)
    unknown = f"wa019_missing_{uuid.uuid4().hex[:8]}"

    answers = [post(base_url, conn_id) for conn_id in (unknown, other_type, no_secret)]
    answers.append(post(base_url, unknown, header_secret=SECRET, secret=None))

    assert [a.status_code for a in answers] == [404] * 4
    assert len({(a.content, a.headers["content-type"]) for a in answers}) == 1
    assert answers[0].json() == {"error": "not found"}
    # An unknown path answers the same way.
    with client() as http:
        assert http.post(f"{base_url}{URL_PREFIX}/nothing-here").content == answers[0].content
    for conn_id in (unknown, other_type, no_secret):
        assert asset_rows(conn_id) == []


def test_a_connection_with_an_empty_secret_does_not_receive(base_url, receiving):
    conn_id = receiving(secret="   ")
    assert post(base_url, conn_id, secret="").status_code == 404


# --- 401: the secret ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "header"),
    [
        pytest.param(None, None, id="none"),
        pytest.param("secret=", None, id="empty-query"),
        pytest.param("secret=wrong", None, id="wrong-query"),
        pytest.param(f"secret={SECRET[:-1]}", None, id="prefix-query"),
        pytest.param(f"secret={SECRET.upper()}", None, id="case-query"),
        pytest.param(None, "wrong", id="wrong-header"),
        pytest.param(None, SECRET + "x", id="longer-header"),
        pytest.param(f"secret={SECRET}", "wrong", id="right-query-wrong-header"),
        pytest.param("secret=wrong", SECRET, id="wrong-query-right-header"),
        pytest.param(f"secret={SECRET}&secret=wrong", None, id="right-and-wrong-query"),
        pytest.param(f"Secret={SECRET}", None, id="other-name"),
    ],
)
def test_missing_or_wrong_secret_is_401_and_records_nothing(base_url, receiving, query, header):
    conn_id = receiving()
    answer = post(base_url, conn_id, query=query or "", header_secret=header)
    assert answer.status_code == 401
    assert answer.json() == {"error": "missing or wrong secret"}
    assert SECRET not in answer.text
    assert asset_rows(conn_id) == []


def test_the_secret_is_accepted_in_the_query_or_the_header(base_url, receiving):
    conn_id = receiving()
    first, second = payload(), payload()
    by_query = post(base_url, conn_id, first)
    by_header = post(base_url, conn_id, second, secret=None, header_secret=SECRET)
    both = post(base_url, conn_id, payload(), header_secret=SECRET)
    assert [a.status_code for a in (by_query, by_header, both)] == [200, 200, 200]
    assert by_query.json() == {"status": "recorded"}
    assert len(uniques(conn_id)) == 3
    assert uniques(conn_id)[:2] == [first["unique"], second["unique"]]


def test_a_non_ascii_secret_matches_in_query_and_header(base_url, receiving):
    secret = "sécret-ünïcode-" + secrets.token_hex(4)
    conn_id = receiving(secret=secret)
    from urllib.parse import quote

    assert post(base_url, conn_id, query=f"secret={quote(secret)}").status_code == 200
    # A header carries bytes: the UTF-8 bytes of the secret, as a client sends them.
    with client() as http:
        answer = http.post(
            f"{base_url}{URL_PREFIX}/webhook/{conn_id}",
            content=json.dumps(payload()).encode(),
            headers=[("Content-Type", "application/json"), ("X-Wa019-Secret", secret.encode("utf-8"))],
        )
    assert answer.status_code == 200
    assert len(recorded(conn_id)) == 2


# --- 403: addresses -----------------------------------------------------------------------------


def test_allow_list_with_cidr_refuses_other_peers_before_the_secret(base_url, receiving):
    conn_id = receiving(webhook_allowed_ips="10.0.0.0/8, 127.0.0.2/32")

    assert post(base_url, conn_id, source="127.0.0.3").status_code == 403
    refused = post(base_url, conn_id, secret="wrong", source="127.0.0.3")
    assert refused.status_code == 403  # the address is checked first: a prober learns nothing more
    assert refused.json() == {"error": "this address may not deliver here"}
    assert asset_rows(conn_id) == []

    assert post(base_url, conn_id, secret="wrong", source="127.0.0.2").status_code == 401
    assert post(base_url, conn_id, source="127.0.0.2").status_code == 200
    assert len(recorded(conn_id)) == 1


def test_allow_list_as_a_json_list_and_as_ipv6(base_url, receiving):
    conn_id = receiving(webhook_allowed_ips=["::1", "127.0.0.0/8"])
    assert post(base_url, conn_id, source="127.0.0.3").status_code == 200


def test_an_unreadable_allow_list_refuses_everyone(base_url, receiving, caplog):
    conn_id = receiving(webhook_allowed_ips="127.0.0.1, not-an-address")
    with caplog.at_level(logging.WARNING):
        assert post(base_url, conn_id).status_code == 403
    assert "not-an-address" in caplog.text


@pytest.mark.parametrize(
    ("trusted", "forwarded", "status"),
    [
        # No trusted proxy: X-Forwarded-For is ignored, the peer 127.0.0.1 is the client.
        pytest.param(None, ["203.0.113.7"], 403, id="untrusted-peer"),
        pytest.param("127.0.0.2", ["203.0.113.7"], 403, id="other-proxy-trusted"),
        # The peer is a trusted proxy: the right-most hop that is not a trusted proxy.
        pytest.param("127.0.0.1", ["203.0.113.7"], 200, id="trusted-proxy"),
        pytest.param("127.0.0.0/8", ["203.0.113.7, 127.0.0.5"], 200, id="proxy-chain"),
        pytest.param("127.0.0.1", ["203.0.113.7, 198.51.100.9"], 403, id="spoofed-left-entry"),
        pytest.param("127.0.0.1", ["203.0.113.7", "198.51.100.9"], 403, id="two-headers"),
        pytest.param("127.0.0.1, 198.51.100.0/24", ["203.0.113.7, 198.51.100.9"], 200, id="two-proxies"),
        pytest.param("127.0.0.1", ["203.0.113.7:5555"], 200, id="with-port"),
        pytest.param("127.0.0.1", ["203.0.113.7, junk"], 403, id="garbage-hop"),
        pytest.param("127.0.0.1", [], 403, id="no-header"),
    ],
)
def test_x_forwarded_for_is_read_only_from_trusted_proxies(base_url, receiving, trusted, forwarded, status):
    extra = {"webhook_allowed_ips": "203.0.113.0/24"}
    if trusted:
        extra["webhook_trusted_proxies"] = trusted
    conn_id = receiving(**extra)
    url = f"{base_url}{URL_PREFIX}/webhook/{conn_id}?secret={SECRET}"
    headers = [("Content-Type", "application/json")] + [("X-Forwarded-For", f) for f in forwarded]
    with client() as http:
        answer = http.post(url, content=json.dumps(payload()).encode(), headers=headers)
    assert answer.status_code == status
    assert len(recorded(conn_id)) == (1 if status == 200 else 0)


def test_client_address_rules():
    settings = WebhookSettings(
        conn_id="c",
        secret=b"s",
        trusted_proxies=tuple(__import__("ipaddress").ip_network(n) for n in ("10.0.0.0/8",)),
    )
    assert str(settings.client_address("10.1.1.1", ["192.0.2.1, 10.2.2.2"])) == "192.0.2.1"
    assert str(settings.client_address("10.1.1.1", ["10.3.3.3, 10.2.2.2"])) == "10.3.3.3"
    assert str(settings.client_address("192.0.2.50", ["10.3.3.3"])) == "192.0.2.50"
    assert str(parse_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(parse_address("[2001:db8::1]:443")) == "2001:db8::1"
    assert parse_address("unknown") is None
    assert parse_address(None) is None


# --- 413 / 415 / 400: the body ----------------------------------------------------------------


def padded(size: int) -> bytes:
    """A valid delivery of exactly ``size`` bytes."""
    data = payload(padding="")
    base = len(json.dumps(data).encode())
    data["padding"] = "x" * (size - base)
    encoded = json.dumps(data).encode()
    assert len(encoded) == size
    return encoded


def test_a_body_of_the_limit_is_accepted_and_one_byte_more_is_413(base_url, receiving):
    conn_id = receiving()
    assert post(base_url, conn_id, content=padded(MAX_INBOUND_BYTES)).status_code == 200
    answer = post(base_url, conn_id, content=padded(MAX_INBOUND_BYTES + 1))
    assert answer.status_code == 413
    assert answer.json() == {"error": f"the body is larger than {MAX_INBOUND_BYTES} bytes"}
    assert len(recorded(conn_id)) == 1


def test_a_chunked_body_is_cut_off_at_the_limit(base_url, receiving):
    conn_id = receiving()
    body = padded(MAX_INBOUND_BYTES + 5000)

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    assert post(base_url, conn_id, content=chunks()).status_code == 413
    small = padded(2000)
    assert post(base_url, conn_id, content=iter([small[:1000], small[1000:]])).status_code == 200
    assert len(recorded(conn_id)) == 1


async def _asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> int:
    """Drive the ASGI app directly: headers and body chunks exactly as given (a lying
    Content-Length reaches the app as is)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_the_size_is_counted_while_reading_not_taken_from_content_length(receiving):
    import asyncio

    conn_id = receiving()
    app = plugin_app()
    big = padded(MAX_INBOUND_BYTES + 10_000)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    path = f"{URL_PREFIX}/webhook/{conn_id}?secret={SECRET}"
    chunks = [big[i : i + 8192] for i in range(0, len(big), 8192)]
    assert asyncio.run(_asgi_post(app, path, headers, chunks)) == 413
    assert asyncio.run(_asgi_post(app, path, headers, [padded(3000)])) == 200
    assert len(recorded(conn_id)) == 1


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        pytest.param(None, 415, id="none"),
        pytest.param("text/plain", 415, id="text"),
        pytest.param("application/x-www-form-urlencoded", 415, id="form"),
        pytest.param("application/json; charset=latin-1", 415, id="latin-1"),
        pytest.param("application/jsonp", 415, id="jsonp"),
        pytest.param("application/json", 200, id="json"),
        pytest.param("application/json; charset=utf-8", 200, id="json-utf-8"),
        pytest.param('Application/JSON;Charset="UTF-8"', 200, id="json-spelled-otherwise"),
    ],
)
def test_content_type(base_url, receiving, content_type, status):
    conn_id = receiving()
    headers = {"Content-Type": content_type} if content_type else {}
    url = f"{base_url}{URL_PREFIX}/webhook/{conn_id}?secret={SECRET}"
    with client() as http:
        answer = http.post(url, content=json.dumps(payload()).encode(), headers=headers)
    assert answer.status_code == status
    if status == 415:
        assert "error" in answer.json()
    assert len(recorded(conn_id)) == (1 if status == 200 else 0)


def test_a_content_encoded_body_is_415(base_url, receiving):
    import gzip

    conn_id = receiving()
    body = gzip.compress(json.dumps(payload()).encode())
    answer = post(base_url, conn_id, content=body, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 415
    assert recorded(conn_id) == []


def _without(field: str) -> bytes:
    data = payload()
    del data[field]
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b'{"unique": "A1", "from": ', "the body is not valid JSON", id="malformed"),
        pytest.param(b"", "the body is not valid JSON", id="empty"),
        pytest.param(b"\xff\xfe{}", "the body is not valid JSON", id="not-utf-8"),
        pytest.param(b'{"unique": NaN}', "the body is not valid JSON", id="nan"),
        pytest.param(b"[" * 5000 + b"]" * 5000, "the body is not valid JSON", id="very-deep"),
        pytest.param(json.dumps([payload()]).encode(), "the body must be a JSON object", id="array"),
        pytest.param(b'"hello"', "the body must be a JSON object", id="string"),
        pytest.param(_without("unique"), "missing field(s): unique", id="no-unique"),
        pytest.param(_without("from"), "missing field(s): from", id="no-from"),
        pytest.param(_without("type"), "missing field(s): type", id="no-type"),
        pytest.param(b"{}", "missing field(s): unique, from, type", id="none-of-them"),
        pytest.param(
            json.dumps(payload(unique="has space")).encode(), "'unique' is not a message id", id="bad-unique"
        ),
        pytest.param(
            json.dumps(payload(**{"from": "hello"})).encode(), "'from' is not a phone number", id="bad-from"
        ),
    ],
)
def test_malformed_deliveries_are_400_naming_the_problem(base_url, receiving, content, error):
    conn_id = receiving()
    answer = post(base_url, conn_id, content=content)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(error)
    assert asset_rows(conn_id) == []


def test_deeply_nested_json_is_400(base_url, receiving):
    conn_id = receiving()
    nested: Any = "x"
    for _ in range(40):
        nested = {"n": nested}
    answer = post(base_url, conn_id, payload(extra_data=nested))
    assert answer.status_code == 400
    assert "nested more than" in answer.json()["error"]
    assert post(base_url, conn_id, payload(extra_data={"a": {"b": [1, 2]}})).status_code == 200


# --- 200: recorded ----------------------------------------------------------------------------------


def test_an_accepted_message_is_one_event_with_unknown_fields_kept(base_url, receiving):
    conn_id = receiving()
    delivery = payload(customField={"nested": [1, 2]}, hook="new", quote=True, quoteUnique="OUR-1")

    answer = post(base_url, conn_id, delivery)

    assert answer.status_code == 200
    assert answer.json() == {"status": "recorded"}
    [extra] = recorded(conn_id)
    assert set(extra) == {EXTRA_KEY}
    message = InboundMessage.from_dict(extra[EXTRA_KEY])
    assert (message.unique, message.sender, message.to, message.type, message.body) == (
        delivery["unique"],
        CLIENT,
        ACCOUNT,
        "text",
        "hello",
    )
    assert message.quote_unique == "OUR-1"
    assert message.sender_name == "Ronen"
    assert message.timestamp == pendulum.datetime(2026, 3, 1, 12, 0, tz="UTC")
    assert message.raw["customField"] == {"nested": [1, 2]}
    assert dict(message.raw) == delivery
    # What a triggered task reads back.
    event = type("Event", (), {"extra": extra})()
    assert inbound_messages({"triggering_asset_events": {inbound_uri(conn_id): [event]}}) == [message]


def test_the_asset_is_created_as_a_dag_declares_it(base_url, receiving):
    conn_id = receiving()
    assert asset_rows(conn_id) == []
    assert post(base_url, conn_id).status_code == 200
    [(_, name, uri, group)] = asset_rows(conn_id)
    declared = whatsapp_inbound(conn_id)
    assert (
        (name, uri, group)
        == (declared.name, declared.uri, declared.group)
        == (uri, inbound_uri(conn_id), "asset")
    )


def test_a_message_before_any_dag_is_kept_and_a_later_dag_reuses_the_asset(base_url, receiving):
    from airflow.models.asset import AssetDagRunQueue, DagScheduleAssetReference
    from airflow.models.dag import DagModel
    from airflow.sdk import DAG, task
    from airflow.utils.session import create_session
    from airflow_support import _write_dag_to_db
    from sqlalchemy import select, update

    conn_id = receiving()
    first = payload()
    assert post(base_url, conn_id, first).status_code == 200  # no DAG schedules on it yet
    [(asset_id, *_)] = asset_rows(conn_id)
    assert uniques(conn_id) == [first["unique"]]

    dag_id = f"answer_{conn_id}"
    with DAG(
        dag_id, schedule=[whatsapp_inbound(conn_id)], start_date=datetime(2026, 1, 1), catchup=False
    ) as dag:

        @task
        def answer() -> None:
            pass

        answer()
    _write_dag_to_db(dag)
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))

    assert [row[0] for row in asset_rows(conn_id)] == [asset_id]  # the same row, not a second one
    with create_session() as session:
        refs = session.scalars(
            select(DagScheduleAssetReference.asset_id).where(DagScheduleAssetReference.dag_id == dag_id)
        ).all()
        assert refs == [asset_id]
        assert (
            session.scalars(select(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id == dag_id)).all()
            == []
        )

    second = payload()
    assert post(base_url, conn_id, second).status_code == 200
    assert uniques(conn_id) == [first["unique"], second["unique"]]
    with create_session() as session:
        queued = session.execute(
            select(AssetDagRunQueue.asset_id).where(AssetDagRunQueue.target_dag_id == dag_id)
        ).all()
    assert [q[0] for q in queued] == [asset_id]  # the scheduler will start a run of the DAG


# --- duplicates ------------------------------------------------------------------------------------


def test_a_redelivery_is_200_duplicate_and_recorded_once_also_after_a_restart(base_url, receiving):
    from airflow_provider_wa019.webhook.app import create_app

    conn_id = receiving()
    delivery = payload()
    assert post(base_url, conn_id, delivery).json() == {"status": "recorded"}
    again = post(base_url, conn_id, delivery)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate"}
    # The platform's re-delivery carries the same unique; other fields may differ.
    assert (
        post(base_url, conn_id, {**delivery, "conversationTimeLeft": "1000"}).json()["status"] == "duplicate"
    )

    from fastapi import FastAPI

    restarted = FastAPI()
    restarted.mount(URL_PREFIX, create_app())  # a new process: nothing in memory
    with serve(restarted) as other_url:
        assert post(other_url, conn_id, delivery).json() == {"status": "duplicate"}
        assert post(other_url, conn_id, payload()).json() == {"status": "recorded"}
    assert uniques(conn_id)[0] == delivery["unique"]
    assert len(recorded(conn_id)) == 2


def test_the_same_unique_on_two_connections_is_two_messages(base_url, receiving):
    one, two = receiving(), receiving()
    delivery = payload()
    assert post(base_url, one, delivery).json() == {"status": "recorded"}
    assert post(base_url, two, delivery).json() == {"status": "recorded"}
    assert len(recorded(one)) == len(recorded(two)) == 1


def test_the_duplicate_check_looks_back_48_hours(base_url, receiving):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import update

    from airflow_provider_wa019.webhook.store import DEDUP_WINDOW

    assert timedelta(hours=26) < DEDUP_WINDOW == timedelta(hours=48)
    conn_id = receiving()
    delivery = payload()
    assert post(base_url, conn_id, delivery).json() == {"status": "recorded"}
    [(asset_id, *_)] = asset_rows(conn_id)
    with create_session() as session:  # the first delivery, 47 h ago: still a duplicate
        session.execute(
            update(AssetEvent)
            .where(AssetEvent.asset_id == asset_id)
            .values(timestamp=datetime.now(timezone.utc) - timedelta(hours=47))
        )
    assert post(base_url, conn_id, delivery).json() == {"status": "duplicate"}
    with create_session() as session:  # 49 h ago: outside the window, recorded again
        session.execute(
            update(AssetEvent)
            .where(AssetEvent.asset_id == asset_id)
            .values(timestamp=datetime.now(timezone.utc) - timedelta(hours=49))
        )
    assert post(base_url, conn_id, delivery).json() == {"status": "recorded"}
    assert len(recorded(conn_id)) == 2


def _age_events(asset_id: int, age: timedelta) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(
            update(AssetEvent)
            .where(AssetEvent.asset_id == asset_id)
            .values(timestamp=datetime.now(timezone.utc) - age)
        )


def test_a_redelivery_is_looked_for_from_the_messages_own_timestamp(base_url, receiving):
    conn_id = receiving()
    now = pendulum.now("UTC")
    # Sent 25 h ago, first recorded right then: the platform's last retry a day later is found.
    late = payload(timestamp=str(int(now.subtract(hours=25).timestamp())))
    assert post(base_url, conn_id, late).json() == {"status": "recorded"}
    [(asset_id, *_)] = asset_rows(conn_id)
    _age_events(asset_id, timedelta(hours=25) - timedelta(seconds=5))
    assert post(base_url, conn_id, late).json() == {"status": "duplicate"}

    # Only events since the message was sent (less an hour) are read: an event recorded
    # before that cannot be an earlier delivery of it.
    other = receiving()
    fresh = payload(timestamp=str(int(now.timestamp())))
    assert post(base_url, other, fresh).json() == {"status": "recorded"}
    [(other_asset, *_)] = asset_rows(other)
    _age_events(other_asset, timedelta(hours=2))
    assert post(base_url, other, fresh).json() == {"status": "recorded"}

    # No timestamp of the platform's: the whole 48 h.
    third = receiving()
    unstamped = payload()
    del unstamped["timestamp"]
    assert post(base_url, third, unstamped).json() == {"status": "recorded"}
    [(third_asset, *_)] = asset_rows(third)
    _age_events(third_asset, timedelta(hours=30))
    assert post(base_url, third, unstamped).json() == {"status": "duplicate"}


def test_look_back_to():
    from airflow_provider_wa019.api import parse_inbound
    from airflow_provider_wa019.webhook.store import CLOCK_MARGIN, DEDUP_WINDOW, look_back_to

    now = pendulum.datetime(2026, 6, 1, 12, 0, tz="UTC")

    def since(sent: Any) -> Any:
        data = payload(timestamp=str(int(sent.timestamp())) if sent is not None else None)
        received_at = now.add(microseconds=250_000)  # receipt times are not whole seconds
        message = parse_inbound(data, received_at=received_at)
        return look_back_to(message, now=now, received_at=received_at)

    assert since(now) == now - CLOCK_MARGIN
    assert since(now.subtract(hours=5)) == now.subtract(hours=5) - CLOCK_MARGIN
    assert since(now.subtract(days=9)) == now - DEDUP_WINDOW
    assert since(now.add(minutes=30)) == now - CLOCK_MARGIN  # a little ahead: read as now
    assert since(now.add(hours=3)) == now - DEDUP_WINDOW  # far ahead: not believed
    assert since(None) == now - DEDUP_WINDOW  # no timestamp: received_at stood in


def deliver_together(url: str, body: bytes, times: int) -> list[tuple[int, str]]:
    """POST ``body`` from ``times`` threads at once (connected first, released by one barrier)."""
    barrier = threading.Barrier(times)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    clients = [client() for _ in range(times)]
    for http in clients:  # open the connections first, so the requests really start together
        http.get(url.split("/wa019/")[0] + "/warm-up")

    def deliver(http: httpx.Client) -> None:
        barrier.wait()
        answer = http.post(url, content=body, headers={"Content-Type": "application/json"})
        with lock:
            answers.append((answer.status_code, answer.json().get("status")))

    threads = [threading.Thread(target=deliver, args=(http,)) for http in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for http in clients:
        http.close()
    return answers


def test_concurrent_deliveries_of_one_message_record_one_event(base_url, receiving):
    conn_id = receiving()
    url = f"{base_url}{URL_PREFIX}/webhook/{conn_id}?secret={SECRET}"
    deliveries = [payload() for _ in range(6)]
    times = 4
    for delivery in deliveries:
        answers = deliver_together(url, json.dumps(delivery).encode(), times)
        assert sorted(answers) == [(200, "duplicate")] * (times - 1) + [(200, "recorded")]
    assert sorted(uniques(conn_id)) == sorted(d["unique"] for d in deliveries)


# --- connection settings and their cache --------------------------------------------------------


def test_a_rotated_secret_takes_effect_within_the_cache_time(receiving, wa019_env):
    from fastapi import FastAPI

    from airflow_provider_wa019.webhook.app import create_app

    conn_id = receiving()
    app = FastAPI()
    app.mount(URL_PREFIX, create_app(SettingsCache(ttl=0.5)))
    with serve(app) as url:
        assert post(url, conn_id).status_code == 200
        new_secret = f"rotated-{secrets.token_hex(8)}"
        wa019_env(host=HOST, conn_id=conn_id, webhook_secret=new_secret)
        assert post(url, conn_id).status_code == 200  # cached: the old secret still passes
        time.sleep(0.6)
        assert post(url, conn_id).status_code == 401
        assert post(url, conn_id, secret=new_secret).status_code == 200


def test_settings_cache_reuses_lookups_for_its_ttl():
    now = [100.0]
    calls: list[str] = []

    def loader(conn_id: str) -> WebhookSettings | None:
        calls.append(conn_id)
        return None if conn_id == "missing" else WebhookSettings(conn_id=conn_id, secret=b"s")

    cache = SettingsCache(loader, ttl=5, clock=lambda: now[0])
    assert cache.get("a") is cache.get("a")
    assert cache.get("missing") is None
    assert cache.get("missing") is None  # "off" is cached too
    assert calls == ["a", "missing"]
    now[0] += 5.01
    cache.get("a")
    assert calls == ["a", "missing", "a"]

    def failing(conn_id: str) -> WebhookSettings | None:
        raise RuntimeError("backend down")

    broken = SettingsCache(failing, ttl=5, clock=lambda: now[0])
    for _ in range(2):  # a failure is not cached
        with pytest.raises(RuntimeError):
            broken.get("a")


def test_settings_from_connection_extras():
    from airflow.models.connection import Connection

    def conn(**extra: Any) -> Connection:
        return Connection(conn_id="c", conn_type="wa019", extra=json.dumps(extra))

    settings = settings_from_connection(
        conn(
            webhook_secret=" s3cret ",
            webhook_allowed_ips="192.0.2.0/24 198.51.100.1",
            webhook_trusted_proxies=None,
        )
    )
    assert settings is not None
    assert settings.secret == b"s3cret"
    assert [str(n) for n in settings.allowed or ()] == ["192.0.2.0/24", "198.51.100.1/32"]
    assert settings.trusted_proxies == ()
    # The prefixed names older connection forms save; a JSON list written in a text field.
    prefixed = settings_from_connection(
        conn(extra__wa019__webhook_secret="p", extra__wa019__webhook_allowed_ips='["10.0.0.1"]')
    )
    assert prefixed is not None
    assert (prefixed.secret, [str(n) for n in prefixed.allowed or ()]) == (b"p", ["10.0.0.1/32"])
    assert settings_from_connection(conn(webhook_secret="s", webhook_allowed_ips="")).allowed is None
    assert settings_from_connection(conn(webhook_secret="s", webhook_allowed_ips=[5])).allowed == ()
    assert settings_from_connection(conn(webhook_secret=123)) is None
    assert settings_from_connection(conn()) is None
    assert (
        settings_from_connection(Connection(conn_id="c", conn_type="http", extra='{"webhook_secret": "s"}'))
        is None
    )


# --- the secret stays secret -------------------------------------------------------------------------


def test_redact_query():
    assert redact_query("/wa019/webhook/c?secret=abc") == "/wa019/webhook/c?secret=***"
    assert redact_query("POST /x?a=1&secret=abc&b=2 HTTP/1.1") == "POST /x?a=1&secret=***&b=2 HTTP/1.1"
    assert redact_query("/x?s%65cret=abc") == "/x?s%65cret=***"  # Starlette reads this name as "secret"
    assert redact_query("/x?SECRET=abc&secret=def") == "/x?SECRET=***&secret=***"
    assert redact_query("/x?secretary=abc") == "/x?secretary=abc"
    assert redact_query("/x") == "/x"


def test_the_secret_never_appears_in_logs_error_bodies_or_reprs(base_url, receiving, caplog, capfd):
    from airflow_provider_wa019.webhook.app import WebhookReceiver

    conn_id = receiving()
    blocked = receiving(webhook_allowed_ips="10.0.0.0/8")
    near_miss = SECRET[:-2] + "zz"
    answers = []
    with caplog.at_level(logging.DEBUG):
        answers.append(post(base_url, conn_id))  # 200
        answers.append(post(base_url, conn_id, query=f"s%65cret={SECRET}"))  # 200, odd spelling
        answers.append(post(base_url, conn_id, secret=None, header_secret=SECRET))  # 200
        answers.append(post(base_url, conn_id, secret=near_miss))  # 401
        answers.append(post(base_url, conn_id, secret=near_miss, header_secret=SECRET))  # 401
        answers.append(post(base_url, blocked))  # 403
        answers.append(post(base_url, f"nope_{conn_id}"))  # 404
        answers.append(post(base_url, conn_id, content=b"{not json"))  # 400
        answers.append(post(base_url, conn_id, content=padded(MAX_INBOUND_BYTES + 1)))  # 413
        answers.append(post(base_url, conn_id, headers={"Content-Type": "text/plain"}))  # 415
        time.sleep(0.2)  # the access line is written after the answer was sent
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 401, 403, 404, 400, 413, 415]

    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert len(access) >= len(answers), "uvicorn's access log was not captured"
    assert any("secret=***" in r.getMessage() for r in access)
    lines = [r.getMessage() for r in caplog.records] + [caplog.text]
    out, err = capfd.readouterr()
    for text in [*lines, out, err, *(a.text for a in answers), *(str(a.headers) for a in answers)]:
        assert SECRET not in text
        assert near_miss not in text
        assert f"webhook/{conn_id}?secret={SECRET}" not in text

    [entry] = WhatsAppWebhookPlugin.fastapi_apps
    receiver: WebhookReceiver = entry["app"].state.wa019_receiver
    found, settings = receiver.settings.cached(conn_id)
    assert found
    assert settings is not None
    for obj in (settings, receiver, receiver.settings, entry, entry["app"]):
        assert SECRET not in repr(obj)


# --- the plugin --------------------------------------------------------------------------------


def _run_python(code: str, timeout: float = 180, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON, returned with the
    whole output under ``"_output"``."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_output"] = proc.stdout + proc.stderr
    return result


def test_importing_and_loading_the_plugin_builds_no_app():
    # What a scheduler, worker or DAG processor does: load plugins, never read fastapi_apps.
    result = _run_python(
        """
        import json, sys
        import airflow.plugins_manager as pm
        airflow_brought_fastapi = "fastapi" in sys.modules
        before = set(sys.modules)
        import airflow_provider_wa019.webhook.plugin as plugin
        new_on_import = sorted(set(sys.modules) - before)
        if hasattr(pm, "_get_plugins"):
            plugins = pm._get_plugins()[0]
        else:
            pm.ensure_plugins_loaded()
            plugins = pm.plugins
        descriptor = plugin.WhatsAppWebhookPlugin.__dict__["fastapi_apps"]
        print(json.dumps({
            "airflow_brought_fastapi": airflow_brought_fastapi,
            "new_on_import": new_on_import,
            "fastapi": "fastapi" in sys.modules,
            "app_module": "airflow_provider_wa019.webhook.app" in sys.modules,
            "store_module": "airflow_provider_wa019.webhook.store" in sys.modules,
            "built": descriptor.built,
            "loaded": [p.name for p in plugins],
        }))
        """
    )
    assert set(result["new_on_import"]) <= {
        "airflow_provider_wa019",
        "airflow_provider_wa019.webhook",
        "airflow_provider_wa019.webhook.plugin",
    }
    assert "wa019_webhook" in result["loaded"]
    assert not result["built"]
    assert not result["app_module"]
    assert not result["store_module"]
    if not result["airflow_brought_fastapi"]:  # Airflow 3.1 imports FastAPI itself (the task SDK client)
        assert not result["fastapi"]


def test_the_api_server_mounts_the_app_at_wa019():
    # Airflow's own api-server app factory, as `airflow api-server` runs it, with its
    # middlewares (3.3 writes its own access log), on the test DB.
    conn_id = f"wa019_api_{uuid.uuid4().hex[:8]}"
    connection = {"conn_type": "wa019", "extra": {"webhook_secret": SECRET}}
    result = _run_python(
        f"""
        import json, logging
        from airflow.api_fastapi.app import create_app
        from fastapi.testclient import TestClient
        logging.getLogger().setLevel(logging.INFO)
        app = create_app("core")
        mounts = [getattr(r, "path", None) for r in app.routes]
        with TestClient(app) as http:
            unknown = http.post("/wa019/webhook/nobody?secret=x", json={{}})
            accepted = http.post(
                "/wa019/webhook/{conn_id}?secret={SECRET}",
                content={json.dumps(payload())!r},
                headers={{"Content-Type": "application/json"}},
            )
        print(json.dumps({{
            "mounts": mounts,
            "unknown": [unknown.status_code, unknown.json()],
            "accepted": [accepted.status_code, accepted.json()],
        }}))
        """,
        env={f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)},
    )
    assert "/wa019" in result["mounts"]
    assert result["unknown"] == [404, {"error": "not found"}]
    assert result["accepted"] == [200, {"status": "recorded"}]
    assert len(recorded(conn_id)) == 1
    assert SECRET not in result["_output"]


def test_the_connection_form_declares_the_webhook_extras(monkeypatch):
    import types

    from airflow_provider_wa019.get_provider_info import get_provider_info
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    [conn] = get_provider_info()["connection-types"]
    fields = conn["conn-fields"]
    assert fields["webhook_secret"]["schema"]["format"] == "password"  # Airflow: is_sensitive
    assert {"webhook_allowed_ips", "webhook_trusted_proxies"} <= set(fields)
    assert "plugins" not in get_provider_info()  # registered by entry point only (see get_provider_info)

    # The hook's old-style widgets come from the same declaration. Neither venv has Flask
    # AppBuilder (3.1+ without the FAB provider), so stand-ins record what the hook builds.
    def stub(name: str, **attrs: Any) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)

    for name in ("flask_appbuilder", "flask_babel", "wtforms"):
        if name not in sys.modules:
            with contextlib.suppress(ImportError):
                __import__(name)
    if "flask_appbuilder.fieldwidgets" not in sys.modules:
        stub("flask_appbuilder")
        stub("flask_appbuilder.fieldwidgets", BS3TextFieldWidget=lambda: "widget")
        stub("flask_babel", lazy_gettext=lambda text: text)
        stub("wtforms", StringField=lambda label, **kw: (label, kw.get("description")))
    widgets = WhatsAppHook.get_connection_form_widgets()
    assert {"webhook_secret", "webhook_allowed_ips", "webhook_trusted_proxies"} <= set(widgets)
