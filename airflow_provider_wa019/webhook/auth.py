"""Who may deliver to a connection's webhook, read from the connection's extras.

- ``webhook_secret``: the shared secret. Receiving is off for a connection without one (404).
  The platform sends only to a URL (no headers, no signature), so the secret travels in it as
  ``?secret=...``; a proxy or a test may send the header ``X-Wa019-Secret`` instead.
- ``webhook_allowed_ips``: addresses/CIDRs that may deliver (a list, or one string separated by
  commas or spaces, as the connection form saves it). Unset: any address.
- ``webhook_trusted_proxies``: the same format; only when the socket peer is one of these is
  ``X-Forwarded-For`` read, and then the client is its right-most address that is not a trusted
  proxy.

A list with an entry that is no address or network refuses every peer (and says so in the log)
rather than guess. Settings are cached per connection for :data:`CONNECTION_CACHE_SECONDS`, so a
delivery does not ask the secrets backends each time; a changed or rotated secret, list or a
newly configured connection takes effect within that time.

Nothing here logs, formats or raises with the secret or a presented value, and the access-log
filter (:func:`install_access_log_redactor`) blanks a ``secret`` query value in uvicorn's
access lines (the full webhook URL is a credential).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from airflow_provider_wa019.constants import CONN_TYPE

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The connection extras the webhook reads.
EXTRA_SECRET = "webhook_secret"
EXTRA_ALLOWED_IPS = "webhook_allowed_ips"
EXTRA_TRUSTED_PROXIES = "webhook_trusted_proxies"
#: Where a delivery presents the secret.
SECRET_PARAM = "secret"
SECRET_HEADER = "X-Wa019-Secret"
#: How long a connection's webhook settings (or "not configured") are reused.
CONNECTION_CACHE_SECONDS = 5.0
#: Cached connections at most: ids probed at random are cached too ("not configured").
_CACHE_MAX_ENTRIES = 1024
#: Airflow's own limit on a connection id; longer ids are not looked up.
MAX_CONN_ID_CHARS = 250


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook settings of one connection. The secret is kept out of ``repr``.

    :ivar allowed: the networks that may deliver, or None for any address.
    :ivar trusted_proxies: the networks whose ``X-Forwarded-For`` is believed.
    """

    conn_id: str
    secret: bytes = field(repr=False)
    allowed: tuple[IPNetwork, ...] | None = None
    trusted_proxies: tuple[IPNetwork, ...] = ()

    def secret_matches(self, presented: Sequence[bytes]) -> bool:
        """True if at least one value was presented and every presented value is the secret
        (compared in constant time; a second, wrong copy does not pass with a right one)."""
        matches = bool(presented)
        for value in presented:
            matches &= hmac.compare_digest(value, self.secret)
        return matches

    def client_address(self, peer: str | None, forwarded_for: Iterable[str] = ()) -> IPAddress | None:
        """The delivering client: the socket peer, or, when the peer is a trusted proxy, the
        right-most ``X-Forwarded-For`` address that is not a trusted proxy. None if unknown."""
        address = parse_address(peer)
        if address is None or not _within(address, self.trusted_proxies):
            return address
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        for hop in reversed([h for h in hops if h]):
            hop_address = parse_address(hop)
            if hop_address is None:
                return None  # garbage where the client should be: unknown
            if not _within(hop_address, self.trusted_proxies):
                return hop_address
            address = hop_address
        return address  # every hop is a trusted proxy: the left-most one sent it

    def address_allowed(self, address: IPAddress | None) -> bool:
        if self.allowed is None:
            return True
        return address is not None and _within(address, self.allowed)


def settings_from_connection(conn: Any) -> WebhookSettings | None:
    """The webhook settings of an Airflow connection, or None if it does not receive: not of
    type ``wa019``, or no ``webhook_secret``."""
    conn_id = str(conn.conn_id)
    if getattr(conn, "conn_type", None) != CONN_TYPE:
        return None
    try:
        extra = conn.extra_dejson
    except Exception:  # an unreadable extra: the connection cannot receive
        extra = None
    if not isinstance(extra, dict):
        log.warning("connection %r: extra is not a JSON object; its webhook is off", conn_id)
        return None
    secret = _extra(extra, EXTRA_SECRET)
    if secret is None:
        return None
    if not isinstance(secret, str) or not secret.strip():
        log.warning("connection %r: %s is not a text; its webhook is off", conn_id, EXTRA_SECRET)
        return None
    secret = secret.strip()
    _mask(secret)
    allowed = _networks(conn_id, EXTRA_ALLOWED_IPS, _extra(extra, EXTRA_ALLOWED_IPS))
    trusted = _networks(conn_id, EXTRA_TRUSTED_PROXIES, _extra(extra, EXTRA_TRUSTED_PROXIES))
    return WebhookSettings(
        conn_id=conn_id,
        secret=secret.encode("utf-8"),
        allowed=allowed,
        trusted_proxies=trusted or (),
    )


def load_settings(conn_id: str) -> WebhookSettings | None:
    """Look connection ``conn_id`` up server-side (secrets backends, then the metadata DB), as
    the api-server may: None if it does not exist or does not receive."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        conn = Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    return settings_from_connection(conn)


class SettingsCache:
    """Webhook settings per connection id, each reused for ``ttl`` seconds (None included: an
    unknown or unconfigured connection is not looked up again at every delivery). Failed
    look-ups are not cached. Thread-safe."""

    def __init__(
        self,
        loader: Callable[[str], WebhookSettings | None] = load_settings,
        ttl: float = CONNECTION_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, WebhookSettings | None]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SettingsCache {len(self._entries)} connection(s), ttl {self._ttl:g} s>"

    def cached(self, conn_id: str) -> tuple[bool, WebhookSettings | None]:
        """``(True, settings)`` if a fresh entry exists, else ``(False, None)``; never loads."""
        entry = self._entries.get(conn_id)
        if entry is not None and entry[0] > self._clock():
            return True, entry[1]
        return False, None

    def get(self, conn_id: str) -> WebhookSettings | None:
        found, settings = self.cached(conn_id)
        if found:
            return settings
        settings = self._loader(conn_id)
        with self._lock:
            if len(self._entries) >= _CACHE_MAX_ENTRIES:
                now = self._clock()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= _CACHE_MAX_ENTRIES:
                    self._entries.clear()
            self._entries[conn_id] = (self._clock() + self._ttl, settings)
        return settings

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def parse_address(text: str | None) -> IPAddress | None:
    """An IP address as a socket or a proxy writes it (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``,
    ``[::1]:443``); IPv4-mapped IPv6 addresses as IPv4. None if it is not one."""
    if not text:
        return None
    text = text.strip()
    match = _BRACKETED.fullmatch(text) or _V4_WITH_PORT.fullmatch(text)
    if match:
        text = match.group(1)
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


_BRACKETED = re.compile(r"\[([^\]]+)\](?::\d+)?")
_V4_WITH_PORT = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):\d+")


def _within(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks)


def _extra(extra: dict[str, Any], name: str) -> Any:
    # null or empty means "not set" (the form saves empty fields as null); forms of Airflow
    # before 3.2 may store a field under its prefixed name.
    value = extra.get(name)
    if value is None or value == "" or value == []:
        value = extra.get(f"extra__{CONN_TYPE}__{name}")
    return None if value is None or value == "" or value == [] else value


def _networks(conn_id: str, name: str, value: Any) -> tuple[IPNetwork, ...] | None:
    """The networks of an allow-list extra; None if unset; () (nobody) if it is unreadable."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                value = None
        else:
            value = [part for part in re.split(r"[\s,]+", text) if part]
    if not isinstance(value, (list, tuple)) or not value:
        log.warning("connection %r: %s is not a list of addresses; no peer is allowed", conn_id, name)
        return ()
    networks = []
    for entry in value:
        try:
            if not isinstance(entry, str):
                raise ValueError
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            log.warning(
                "connection %r: %s holds %s, which is no address or network; no peer is allowed",
                conn_id,
                name,
                _short(entry),
            )
            return ()
        networks.append(network)
    return tuple(networks)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _mask(secret: str) -> None:
    # Airflow's log masking, where the running Airflow has it (best effort: nothing here logs it).
    try:
        from airflow._shared.secrets_masker import mask_secret
    except ImportError:
        return
    try:
        mask_secret(secret)
    except Exception:
        log.debug("could not register the webhook secret with Airflow's log masking")


# --- Access log ------------------------------------------------------------------------------
# Airflow 3.1's api-server leaves uvicorn's access log on, which prints each request line with its
# query string: "POST /wa019/webhook/x?secret=... HTTP/1.1" 200. (3.3 writes its own access log
# and blanks secret-looking query values itself.)

_MASK = "***"


def redact_query(text: str) -> str:
    """``text`` (a path with a query, or a log line holding one) with the value of every
    ``secret`` query parameter blanked, however its name is percent-encoded."""
    if "?" not in text:
        return text
    head, _, rest = text.partition("?")
    query, space, tail = rest.partition(" ")
    pairs = []
    for pair in query.split("&"):
        name, equals, _value = pair.partition("=")
        if equals and unquote_plus(name).strip().lower() == SECRET_PARAM:
            pair = f"{name}={_MASK}"
        pairs.append(pair)
    return f"{head}?{'&'.join(pairs)}{space}{redact_query(tail) if tail else ''}"


class AccessLogRedactor(logging.Filter):
    """Blanks ``secret`` query values in the records of the logger it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True


ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")


def install_access_log_redactor() -> None:
    """Attach :class:`AccessLogRedactor` to the servers' access loggers (once)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, AccessLogRedactor) for f in logger.filters):
            logger.addFilter(AccessLogRedactor())
