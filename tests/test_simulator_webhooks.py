"""The simulator speaks webhooks: client_says opens the window and delivers the documented payload.

A plain HTTP server on 127.0.0.1 stands in for the receiver here, recording what arrives (the
real receiver, the plugin's app, is tests/test_webhook.py; the two together run in tests/e2e).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_wa019.api import SEND_PATH, parse_inbound
from airflow_provider_wa019.testing import WhatsAppSimulator

CLIENT = "972507654321"


class Receiver:
    """Answers each POST with ``status`` (200 by default) and keeps (path, query, headers, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, list[str]], dict[str, str], bytes]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = urlsplit(self.path)
                receiver.received.append((parts.path, parse_qs(parts.query), dict(self.headers), body))
                answer = b'{"status":"recorded"}'
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/wa019/webhook/wa019_default"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01})
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_client_says_delivers_the_documented_payload_and_opens_the_window(receiver):
    with WhatsAppSimulator(webhook_url=receiver.url, webhook_secret="s3cret") as sim:
        said = sim.client_says("+972 50-765-4321", "Where is A-7?", sender_name="Dana", quote="m-1")
        [(path, query, headers, body)] = receiver.received
        assert path == "/wa019/webhook/wa019_default"
        assert query == {"secret": ["s3cret"]}
        assert headers["Content-Type"] == "application/json"
        message = parse_inbound(json.loads(body))  # the receiver's parser reads it as sent
        assert (message.unique, message.sender, message.to) == (said["unique"], CLIENT, sim.sender)
        assert (message.body, message.sender_name, message.quote_unique) == ("Where is A-7?", "Dana", "m-1")
        # The window is open: a free-form reply quoting the message is accepted.
        reply = requests.post(
            sim.base_url + SEND_PATH,
            json={"from": sim.sender, "to": CLIENT, "body": "On its way", "replyTo": said["unique"]},
            headers={"Authorization": f"Bearer {sim.token}"},
            timeout=5,
        ).json()
        assert reply["reason"] == 1
        [delivery] = sim.deliveries
        assert delivery.status == 200
        assert "s3cret" not in delivery.url
        assert "secret=***" in delivery.url


def test_deliveries_can_repeat_be_forged_or_malformed(receiver):
    with WhatsAppSimulator(webhook_url=receiver.url, webhook_secret="s3cret") as sim:
        twice = sim.client_says(CLIENT, "hi", times=2)
        assert [d["status"] for d in twice["deliveries"]] == [200, 200]
        assert receiver.received[0][3] == receiver.received[1][3]  # the same message, twice
        sim.client_says(CLIENT, "forged", secret="wrong")
        assert receiver.received[2][1] == {"secret": ["wrong"]}
        sim.client_says(CLIENT, "x", body=b'{"unique": ')
        assert receiver.received[3][3] == b'{"unique": '
        receiver.status = 401
        refused = sim.client_says(CLIENT, "again")
        assert [d["status"] for d in refused["deliveries"]] == [401]


def test_without_a_webhook_client_says_only_opens_the_window():
    with WhatsAppSimulator() as sim:
        said = sim.client_says(CLIENT, "hi")
        assert said["deliveries"] == []
        assert sim.deliveries == []


def test_an_unreachable_webhook_is_recorded_not_raised():
    with WhatsAppSimulator(webhook_url="http://127.0.0.1:9/wa019/webhook/x") as sim:
        [delivery] = sim.client_says(CLIENT, "hi")["deliveries"]
        assert delivery["status"] is None
        assert delivery["error"]


def test_the_control_endpoints_drive_webhooks_from_another_process(receiver):
    with WhatsAppSimulator() as sim:
        control = sim.base_url + "/__sim__/"
        assert requests.post(control + "webhook", json={"url": receiver.url, "secret": "k"}, timeout=5).ok
        said = requests.post(
            control + "client-says", json={"number": CLIENT, "text": "hi", "times": 2}, timeout=5
        )
        assert said.status_code == 200
        assert [d["status"] for d in said.json()["deliveries"]] == [200, 200]
        deliveries = requests.get(control + "deliveries", timeout=5).json()
        assert [d["unique"] for d in deliveries] == [said.json()["unique"]] * 2
        bad = requests.post(control + "client-says", json={"number": CLIENT}, timeout=5)
        assert bad.status_code == 400
        bad = requests.post(control + "webhook", json={"url": "ftp://x"}, timeout=5)
        assert bad.status_code == 400
