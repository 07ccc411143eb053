"""Recording accepted messages: one Airflow asset event per message, at most once per ``unique``.

Each message becomes an event of the connection's inbound asset (``wa019://<conn_id>/inbound``)
with ``extra = {"wa019_message": message.to_dict()}``, through Airflow's own
``asset_manager.register_asset_change`` (what the REST route for asset events calls), so DAGs
scheduled on the asset are queued as for any other event.

- The asset row is created if no DAG has declared the asset yet (name = uri = the inbound uri,
  group ``asset``, as ``whatsapp_inbound(conn_id)`` declares it): a message that arrives before
  any DAG schedules on it is kept, and a DAG added later reuses that row (the DAG processor looks
  assets up by name and uri). Until a DAG references it, Airflow logs "Emitting event for inactive
  AssetModel" for each event; that is all.
- De-duplication: the platform re-delivers a message it thinks failed (immediately, then after 5
  min, 20 min, 1 h, 4 h and 24 h), so a ``unique`` already recorded is answered "duplicate" and
  not recorded again. The check reads the DB, not memory, so it holds across api-server restarts
  and workers: it looks for an event of the same asset, at most :data:`DEDUP_WINDOW` old (the
  last re-delivery comes about 25 h after the first), whose extra holds that ``unique``; and no
  older than the message's own ``timestamp`` less an hour, when the platform gave one (an
  earlier delivery cannot have been recorded before the client sent it), so a new message is
  checked against the last hour's events. The query is bounded by the ``(asset_id, timestamp)``
  index Airflow keeps on asset events and reads the extras of that range (a substring test on
  the JSON text, then a JSON path lookup written per dialect by SQLAlchemy: SQLite
  ``JSON_EXTRACT``, PostgreSQL ``#>>``, MySQL ``JSON_EXTRACT``).
- Two api-server workers receiving the same delivery at the same moment: the check and the
  insert are one transaction, and before the check it takes a lock:

  * PostgreSQL: ``pg_advisory_xact_lock(ns, key)``, key a hash of (conn_id, unique) in our own
    namespace (the two-key form, apart from Airflow's single-key locks); released at commit, so
    the second worker's check runs after the first worker's event is committed and visible.
  * SQLite: ``BEGIN IMMEDIATE`` as the transaction's first statement takes SQLite's single write
    lock before the check; the second writer waits (busy timeout) and then sees the event.
  * Elsewhere (MySQL): no lock. Two deliveries of one message that overlap within milliseconds
    may both be recorded; a DAG that must act once per message can skip a ``unique`` it has
    seen. (A ``SELECT ... FOR UPDATE`` of the asset row as the first, locking read would
    serialise a connection's deliveries there; it is not implemented because it is not tested.)
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from airflow.assets.manager import asset_manager
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
from sqlalchemy.exc import IntegrityError

from airflow_provider_wa019.inbound import EXTRA_KEY, inbound_uri, whatsapp_inbound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_wa019.api import InboundMessage

log = logging.getLogger(__name__)

#: How far back a re-delivery is looked for (the platform's last retry is ~25 h after the first).
DEDUP_WINDOW = timedelta(hours=48)
#: How much earlier than the message's own ``timestamp`` an earlier delivery of it is looked for:
#: the platform's clock and ours may disagree (see :func:`look_back_to`).
CLOCK_MARGIN = timedelta(hours=1)
#: The first key of our PostgreSQL advisory locks ("wa19"): a namespace of our own.
PG_LOCK_NAMESPACE = 0x77613139

RECORDED = "recorded"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Outcome:
    """What became of a delivery: ``recorded`` (a new event, ``event_id``) or ``duplicate``."""

    status: str
    event_id: int | None = None


def record_message(conn_id: str, message: InboundMessage, *, received_at: datetime | None = None) -> Outcome:
    """Record ``message`` as an event of ``conn_id``'s inbound asset, unless its ``unique`` was
    recorded in the last :data:`DEDUP_WINDOW`. Commits before returning.

    :param received_at: the ``received_at`` given to ``parse_inbound`` (the stand-in for a
        missing ``timestamp``): tells whether the message's timestamp is the platform's own.
    """
    uri = inbound_uri(conn_id)
    now = datetime.now(timezone.utc)
    since = look_back_to(message, now=now, received_at=received_at)
    with create_session() as session:
        dialect = session.get_bind().dialect.name
        lock_delivery(session, dialect, conn_id, message.unique)
        asset = _inbound_asset(session, conn_id, uri)
        if _already_recorded(session, dialect, asset.id, message.unique, since=since):
            return Outcome(DUPLICATE)
        event = asset_manager.register_asset_change(
            asset=asset,
            # Airflow 3.1 and 3.3 accept and ignore it (the event is stamped when inserted), as
            # for the REST route: the receipt time, which is what asset scheduling compares.
            timestamp=now,
            extra={EXTRA_KEY: message.to_dict()},
            session=session,
        )
        if event is None:  # the asset row vanished between our look-up and Airflow's
            raise RuntimeError(f"Airflow did not record the event of asset {uri}")
        session.flush()
        event_id = event.id
    return Outcome(RECORDED, event_id)


def look_back_to(message: InboundMessage, *, now: datetime, received_at: datetime | None) -> datetime:
    """How far back to look for an earlier delivery of ``message``.

    At most :data:`DEDUP_WINDOW`; less when the platform stamped the message: an earlier
    delivery was recorded after the client sent it, so events older than its ``timestamp`` (less
    :data:`CLOCK_MARGIN` for the two clocks) cannot hold it. A new message is then checked
    against the last hour's events instead of two days', whatever the account's volume. Without
    a timestamp of the platform's, or with one too far in the future, the whole window.
    """
    floor = now - DEDUP_WINDOW
    sent = message.timestamp
    if received_at is not None and sent == received_at:
        return floor  # parse_inbound's stand-in: the platform gave no usable timestamp
    if sent > now + CLOCK_MARGIN:
        return floor
    return max(floor, min(sent, now) - CLOCK_MARGIN)


def lock_delivery(session: Session, dialect: str, conn_id: str, unique: str) -> None:
    """Serialise concurrent deliveries of one message (see the module's notes)."""
    if dialect == "postgresql":
        session.execute(
            sa.text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
            {"namespace": PG_LOCK_NAMESPACE, "key": _lock_key(conn_id, unique)},
        )
    elif dialect == "sqlite":
        # Must be the transaction's first statement: pysqlite opens no transaction for reads, so
        # none is open yet on this connection.
        session.execute(sa.text("BEGIN IMMEDIATE"))


def _lock_key(conn_id: str, unique: str) -> int:
    digest = hashlib.blake2b(f"{conn_id}\x00{unique}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)  # an int4, as the two-key form takes


def _inbound_asset(session: Session, conn_id: str, uri: str) -> AssetModel:
    """The inbound asset's row, created as ``whatsapp_inbound(conn_id)`` declares it if no DAG
    has declared it yet."""
    declared = whatsapp_inbound(conn_id)
    asset = _find_asset(session, declared.name, declared.uri)
    if asset is not None:
        return asset
    try:
        with session.begin_nested():
            asset = AssetModel(
                name=declared.name, uri=declared.uri, group=declared.group, extra=dict(declared.extra or {})
            )
            session.add(asset)
        log.info("created asset %s for the messages of connection %r", uri, conn_id)
        return asset
    except IntegrityError:  # another delivery created it meanwhile (a different message)
        asset = _find_asset(session, declared.name, declared.uri)
        if asset is None:
            raise
        return asset


def _find_asset(session: Session, name: str, uri: str) -> AssetModel | None:
    return session.scalar(sa.select(AssetModel).where(AssetModel.name == name, AssetModel.uri == uri))


def _already_recorded(session: Session, dialect: str, asset_id: int, unique: str, *, since: datetime) -> bool:
    return session.scalar(dedup_query(asset_id, unique, since=since, dialect=dialect)) is not None


def dedup_query(asset_id: int, unique: str, *, since: datetime, dialect: str | None = None) -> Any:
    """The id of an event of asset ``asset_id`` since ``since`` that holds message ``unique``."""
    # type_coerce (no SQL CAST): Airflow 3.1 declares the column with sqlalchemy_jsonfield,
    # 3.3 as sa.JSON; stored as JSON (PostgreSQL, MySQL) or JSON text (SQLite) by both.
    held = sa.type_coerce(AssetEvent.extra, sa.JSON)[(EXTRA_KEY, "unique")].as_string()
    conditions = [AssetEvent.asset_id == asset_id, AssetEvent.timestamp >= since]
    # Parsing every event's extra (a whole delivery each) is most of the cost; a plain substring
    # test on the stored JSON text first skips the events that cannot match (about 5x fewer ms
    # per delivery with 10,000 events in the window on SQLite). Only for a unique JSON writes as
    # is (the API's are hex; a '"' or '\\' would be escaped in the text).
    substring = _SUBSTRING_FUNCTIONS.get(dialect or "")
    if substring is not None and '"' not in unique and "\\" not in unique:
        conditions.append(getattr(sa.func, substring)(sa.cast(AssetEvent.extra, sa.Text), unique) > 0)
    conditions.append(held == unique)
    return sa.select(AssetEvent.id).where(*conditions).limit(1)


#: The dialects whose JSON column reads as its JSON text, and their substring-position function.
_SUBSTRING_FUNCTIONS = {"sqlite": "instr", "postgresql": "strpos"}


def latest_inbound(conn_id: str, number: str, *, since: datetime) -> dict[str, Any] | None:
    """The newest message (``InboundMessage.to_dict`` form) client ``number`` sent to connection
    ``conn_id`` that was recorded since ``since``, or None. Read-only.

    Bounded like the de-duplication: the ``(asset_id, timestamp)`` index limits the scan to the
    window's events, and a substring test skips the ones that cannot be this client's.
    """
    uri = inbound_uri(conn_id)
    with create_session() as session:
        asset = _find_asset(session, uri, uri)
        if asset is None:
            return None
        dialect = session.get_bind().dialect.name
        sender = sa.type_coerce(AssetEvent.extra, sa.JSON)[(EXTRA_KEY, "sender")].as_string()
        conditions = [AssetEvent.asset_id == asset.id, AssetEvent.timestamp >= since]
        substring = _SUBSTRING_FUNCTIONS.get(dialect)
        if substring is not None:  # digits only: written as is in the JSON text
            conditions.append(getattr(sa.func, substring)(sa.cast(AssetEvent.extra, sa.Text), number) > 0)
        conditions.append(sender == number)
        extra = session.scalar(
            sa.select(AssetEvent.extra).where(*conditions).order_by(AssetEvent.timestamp.desc()).limit(1)
        )
    data = (extra or {}).get(EXTRA_KEY) if isinstance(extra, dict) else None
    return data if isinstance(data, dict) else None
