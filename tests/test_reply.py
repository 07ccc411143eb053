"""Inbound messages and replies: the payload parser shared with the simulator, the message type,
reading triggering messages from a context, and WhatsAppReplyOperator in real task runs against
the simulator. (The webhook that records messages is tests/test_webhook.py; the whole path,
webhook to scheduler to reply, is tests/e2e.)"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import SimpleNamespace

import pendulum
import pytest
from airflow.sdk import DAG, Asset
from airflow_support import run_dag

from airflow_provider_wa019.api import (
    SEND_PATH,
    TEMPLATE_PATH,
    InboundError,
    InboundMessage,
    inbound_payload,
    parse_inbound,
)
from airflow_provider_wa019.inbound import EXTRA_KEY, inbound_messages, inbound_uri, whatsapp_inbound
from airflow_provider_wa019.operators.reply import WhatsAppReplyOperator

CLIENT = "972507654321"
OTHER = "972507654322"
ACCOUNT = "972771234567"
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def payload(
    unique: str, sender: str = CLIENT, body: str = "hello", *, ago: pendulum.Duration | None = None, **kw
):
    when = pendulum.now("UTC") - (ago or pendulum.duration(seconds=5))
    return inbound_payload(unique=unique, sender=sender, to=ACCOUNT, body=body, timestamp=when, **kw)


@pytest.fixture
def sim(make_sim):
    return make_sim(senders=(ACCOUNT,), templates=[{"name": "follow_up", "body": "Hi, about {{1}}"}])


def reply_dag(dag_id: str, **op_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        WhatsAppReplyOperator(task_id="answer", retries=0, **op_kwargs)
    return dag


# --------------------------------------------------------------------------------------------
# The payload and the message type


def test_the_documented_payload_parses_to_a_typed_message():
    raw = {
        "status": "OK", "hook": "new", "unique": "92E004B950CCEA3C386FCFA2AAF8558A",
        "from": "972507654321", "from_id": "IL.1605856887361213", "username": None, "country": "IL",
        "phone": "972507654321", "to": "972501234567", "senderName": "Ronen", "type": "text",
        "body": "hello", "caption": "caption", "isForwarded": False, "timestamp": "1600517209",
        "media": False, "quote": True, "quoteUnique": "m-41", "profilePic": "https://x/file.jpg",
        "conversationTimeLeft": "600", "somethingNew": {"kept": True},
    }  # fmt: skip
    message = parse_inbound(raw)
    assert message.unique == "92E004B950CCEA3C386FCFA2AAF8558A"
    assert (message.sender, message.to, message.type) == ("972507654321", "972501234567", "text")
    assert (message.body, message.caption, message.sender_name) == ("hello", "caption", "Ronen")
    assert message.timestamp == pendulum.from_timestamp(1600517209, tz="UTC")
    assert message.quote_unique == "m-41"
    assert message.raw["somethingNew"] == {"kept": True}
    assert InboundMessage.from_dict(message.to_dict()) == message
    with pytest.raises(AttributeError):
        message.body = "changed"  # type: ignore[misc]


def test_the_simulators_payload_is_the_parsers_format():
    message = parse_inbound(payload("in-1", quote_unique="out-7", sender_name="Dana"))
    assert (message.unique, message.sender, message.quote_unique, message.sender_name) == (
        "in-1", CLIENT, "out-7", "Dana",
    )  # fmt: skip
    assert parse_inbound(payload("in-2")).quote_unique is None  # the platform writes false


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"unique": None}, "unique"),
        ({"from": ""}, "from"),
        ({"type": None}, "type"),
        ({"unique": "two words"}, "'unique'"),
        ({"from": "not a number"}, "'from'"),
        ({"type": ["text"]}, "'type'"),
    ],
)
def test_a_delivery_that_is_not_a_client_message_is_refused(change, problem):
    with pytest.raises(InboundError, match=problem):
        parse_inbound({**payload("in-1"), **change})
    with pytest.raises(InboundError, match="object"):
        parse_inbound([payload("in-1")])


def test_the_window_is_24_hours_from_the_clients_message():
    message = parse_inbound(payload("in-1", ago=pendulum.duration(hours=23, minutes=59)))
    assert message.window_open()
    assert not message.window_open(message.timestamp.add(hours=24))
    assert message.window_closes_at == message.timestamp.add(hours=24)


class EventsByAsset(Mapping):
    """Like the task context's triggering_asset_events: iterates assets (which Airflow 3.1 cannot
    hash), looks events up by asset."""

    def __init__(self, *pairs: tuple[Asset, list[SimpleNamespace]]) -> None:
        self._pairs = list(pairs)

    def __iter__(self) -> Iterator[Asset]:
        return iter([asset for asset, _ in self._pairs])

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, asset: Asset) -> list[SimpleNamespace]:
        return [e for a, events in self._pairs if a is asset for e in events]


def test_inbound_messages_reads_the_triggering_events_of_the_inbound_assets():
    old, new = (
        parse_inbound(payload("in-1", ago=pendulum.duration(minutes=3))),
        parse_inbound(payload("in-2")),
    )
    other = parse_inbound(payload("in-3", OTHER, ago=pendulum.duration(minutes=1)))
    events = EventsByAsset(
        (whatsapp_inbound(), [SimpleNamespace(extra={EXTRA_KEY: new.to_dict()}), SimpleNamespace(extra={EXTRA_KEY: old.to_dict()})]),
        (whatsapp_inbound("wa019_second"), [SimpleNamespace(extra={EXTRA_KEY: other.to_dict()})]),
        (Asset("s3://bucket/other"), [SimpleNamespace(extra={EXTRA_KEY: other.to_dict()})]),
        # The same event again, as Airflow lists an event once per alias it came through.
        (whatsapp_inbound(), [SimpleNamespace(extra={EXTRA_KEY: new.to_dict()})]),
    )  # fmt: skip
    context = {"triggering_asset_events": events}
    assert [m.unique for m in inbound_messages(context)] == ["in-1", "in-3", "in-2"]
    assert [m.unique for m in inbound_messages(context, "wa019_default")] == ["in-1", "in-2"]
    assert inbound_messages({}) == []
    assert inbound_uri("wa019_default") == "wa019://wa019_default/inbound"


# --------------------------------------------------------------------------------------------
# WhatsAppReplyOperator in real task runs


def test_a_reply_quotes_the_message_it_answers(sim, airflow_db):
    sim.open_window(CLIENT)  # the client wrote: in real life the webhook delivery did this
    dag = reply_dag(
        "reply_quotes", body="You wrote: {{ message.body }}", messages=[payload("in-1", body="where is A-7?")]
    )
    result = run_dag(dag)
    assert result.tis["answer"] == ("success", 1)
    [sent] = sim.sent
    assert (sent["to"], sent["replyTo"], sent["body"]) == (CLIENT, "in-1", "You wrote: where is A-7?")
    assert result.xcom("answer") == [sent["unique"]]
    assert result.xcom("answer", key="replies") == [
        {"to": CLIENT, "reply_to": "in-1", "unique": sent["unique"], "sent_as": "message"}
    ]


@pytest.mark.parametrize("given", ["payload", "to_dict"])
def test_a_reply_goes_to_the_clients_own_number_whatever_the_default_region(make_sim, airflow_db, given):
    """The platform's numbers are international: with default_region DE, 972507654321 must not be
    read as the German national number +49 972507654321 (also once the message went through
    XCom or an asset event as plain strings)."""
    sim = make_sim(senders=(ACCOUNT,), sender="+" + ACCOUNT, default_region="DE", open_windows=[CLIENT])
    message = payload("in-1")
    if given == "to_dict":
        message = parse_inbound(message).to_dict()
    result = run_dag(reply_dag(f"reply_region_{given}", body="ok", messages=[message]))
    assert result.tis["answer"] == ("success", 1)
    assert [m["to"] for m in sim.sent] == [CLIENT]


def test_each_client_gets_one_reply_to_their_newest_message_by_default(sim, airflow_db):
    sim.open_window(CLIENT)
    sim.open_window(OTHER)
    messages = [
        payload("in-1", ago=pendulum.duration(minutes=2)),
        payload("in-2", OTHER, ago=pendulum.duration(minutes=1)),
        payload("in-3"),
    ]
    run_dag(reply_dag("reply_newest", body="ok", messages=messages))
    assert sorted((m["to"], m["replyTo"]) for m in sim.sent) == [(CLIENT, "in-3"), (OTHER, "in-2")]
    sim.reset()
    sim.open_window(CLIENT)
    sim.open_window(OTHER)
    run_dag(reply_dag("reply_each", body="ok", messages=messages, each_message=True))
    assert [m["replyTo"] for m in sim.sent] == ["in-1", "in-2", "in-3"]


def test_a_closed_window_goes_straight_to_the_fallback_template(sim, airflow_db):
    late = payload("in-1", body="A-7\n\tplease", ago=pendulum.duration(hours=25))
    dag = reply_dag(
        "reply_fallback", body="never sent", messages=[late],
        fallback_template="follow_up", fallback_variables=["{{ message.body }}"],
    )  # fmt: skip
    result = run_dag(dag)
    assert result.tis["answer"] == ("success", 1)
    assert sim.requests_to(SEND_PATH) == []  # no refused free-form request first
    [sent] = sim.sent
    assert (sent["kind"], sent["body"]) == ("template", "Hi, about A-7 please")


def test_a_closed_window_without_fallback_skips_without_a_request(sim, airflow_db):
    result = run_dag(
        reply_dag("reply_closed", body="x", messages=[payload("in-1", ago=pendulum.duration(days=2))])
    )
    assert result.tis["answer"] == ("skipped", 1)
    assert sim.requests == []


def test_the_api_stays_the_authority_on_the_window(sim, airflow_db):
    # The message says the window is open, but the API has no record of it (reason 8): skipped.
    result = run_dag(reply_dag("reply_refused", body="x", messages=[payload("in-1")]))
    assert result.tis["answer"] == ("skipped", 1)
    assert len(sim.requests_to(SEND_PATH)) == 1
    assert sim.requests_to(TEMPLATE_PATH) == []


def test_a_run_without_client_messages_is_skipped(sim, airflow_db):
    result = run_dag(reply_dag("reply_nothing", body="x"))
    assert result.tis["answer"] == ("skipped", 1)
    assert sim.requests == []


def test_a_failed_reply_fails_the_task_after_the_others_were_tried(sim, airflow_db):
    sim.open_window(CLIENT)
    sim.open_window(OTHER)
    sim.fail_next(reason=2, to=CLIENT)
    messages = [payload("in-1"), payload("in-2", OTHER)]
    result = run_dag(reply_dag("reply_partial", body="ok", messages=messages))
    assert result.tis["answer"] == ("failed", 1)
    assert [m["to"] for m in sim.sent] == [OTHER]


def test_bad_arguments_fail_at_dag_parse_time():
    with pytest.raises(ValueError, match="body"):
        WhatsAppReplyOperator(task_id="x", body="  ")
