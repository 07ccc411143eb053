"""Clients' messages as Airflow assets: schedule DAGs on them and read them in tasks.

::

    from airflow_provider_wa019.inbound import inbound_messages, whatsapp_inbound

    with DAG("answer_clients", schedule=[whatsapp_inbound("wa019_default")]):

        @task
        def show(**context):
            for message in inbound_messages(context):
                print(message.sender, message.body)

Every message the webhook (``POST /wa019/webhook/<conn_id>`` in Airflow's api-server) accepts
becomes one event of the connection's inbound asset, ``wa019://<conn_id>/inbound``, with the
message in the event's ``extra``. Imported by DAG files at parse time: only the task SDK here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from airflow_provider_wa019.constants import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow_provider_wa019.api import InboundMessage

__all__ = ["INBOUND_URI_TEMPLATE", "inbound_messages", "inbound_uri", "whatsapp_inbound"]

INBOUND_URI_TEMPLATE = "wa019://{conn_id}/inbound"
#: The key of the message in an inbound asset event's ``extra``.
EXTRA_KEY = "wa019_message"


def inbound_uri(conn_id: str = DEFAULT_CONN_ID) -> str:
    """The URI of the inbound asset of connection ``conn_id``."""
    if not isinstance(conn_id, str) or not conn_id or "/" in conn_id:
        raise ValueError(f"expected an Airflow connection id, got {conn_id!r}")
    return INBOUND_URI_TEMPLATE.format(conn_id=conn_id)


def whatsapp_inbound(conn_id: str = DEFAULT_CONN_ID) -> Asset:
    """The :class:`~airflow.sdk.Asset` of the messages clients send to connection ``conn_id``'s
    account: ``schedule=[whatsapp_inbound("wa019_default")]`` runs a DAG on them (Airflow's own
    asset scheduling batches several messages into one run when they arrive together)."""
    return Asset(inbound_uri(conn_id))


def inbound_messages(context: Mapping[str, Any], conn_id: str | None = None) -> list[InboundMessage]:
    """The client messages that triggered this run, oldest first.

    :param context: the task's context (``**context`` of a ``@task``, or ``execute``'s).
    :param conn_id: only the messages of this connection's inbound asset (default: every
        inbound asset that triggered the run).
    """
    from airflow_provider_wa019.api import InboundMessage

    events = context.get("triggering_asset_events") or {}
    wanted = inbound_uri(conn_id) if conn_id is not None else None
    messages: dict[str, InboundMessage] = {}  # by unique: an event shows once per alias too
    for asset, asset_events in events.items():
        uri = getattr(asset, "uri", asset)
        if not isinstance(uri, str) or not uri.startswith("wa019://") or (wanted and uri != wanted):
            continue
        for event in asset_events:
            data = (getattr(event, "extra", None) or {}).get(EXTRA_KEY)
            if isinstance(data, Mapping):
                message = InboundMessage.from_dict(data)
                messages.setdefault(message.unique, message)
    return sorted(messages.values(), key=lambda m: m.timestamp)
