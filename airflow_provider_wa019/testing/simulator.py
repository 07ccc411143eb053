"""A faithful 019sms WhatsApp API served over real HTTP on loopback, for tests and benchmarks.

Standard library plus pendulum only (no Airflow, no requests), so DAG tests, benchmarks and the
``python -m airflow_provider_wa019.testing`` command can use it anywhere.

Use it in your own tests::

    from airflow_provider_wa019.testing import WhatsAppSimulator

    def test_my_dag(monkeypatch):
        with WhatsAppSimulator() as sim:                       # random free port on 127.0.0.1
            monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", sim.connection_json())
            sim.open_window("972501234567")                    # the client wrote to us just now
            ...                                                # run the DAG / task
            assert [m["to"] for m in sim.sent] == ["972501234567"]

or with the pytest fixtures ``wa019_simulator`` / ``wa019_connection`` (see ``pytest_plugin``).

What it models (from the vendor's "Send Message" page):

* ``POST /api/whatsapp/sendMessage``: free-form text, allowed only within 24 h of the client's
  last inbound message (``open_window``). Reason 8 for a contact that never wrote and was never
  messaged, 7 when the window expired or only templates were sent since.
* ``POST /api/whatsapp/sendTemplate``: approved template, allowed at any time; it starts a billing
  conversation but does not open the free-form window (only a client reply does).
* ``GET /whatsapp-api/get-phone-templates/{phone}[/{templateId}]``: read-only listing.
* Errors of the send endpoints come back as HTTP 200 with ``{"status": "FAIL", "reason": N}``,
  like 019's real API; transport faults (429, 5xx, slow answers, broken bodies) are injected on
  demand with :meth:`WhatsAppSimulator.fail_next`.
* ``/__sim__/...`` control endpoints let another process (a demo script, an end-to-end test
  against a real Airflow deployment) drive the simulator over HTTP.

Numbers the simulator is *told* (senders, ``open_window``, ``fail_next(to=...)``, the control
endpoints) may be written the way people write them ("+972 50-123-4567", "00972..."): they are
normalised to the API's digits-only form, and anything that is not 8-15 digits then is refused.
The ``from``/``to`` of a request are not normalised: the API takes digits only, so a ``to`` of
"+972..." is reason 4, as on the real platform.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import random
import re
import socket
import string
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

import pendulum

from airflow_provider_wa019.api import (
    HEADER_NONE,
    MAX_BODY_CHARS,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_VARIABLES,
    MEDIA_HEADER_TYPES,
    SEND_PATH,
    TEMPLATE_PATH,
    TEMPLATES_PATH,
    Reason,
    compact_number,
    count_placeholders,
    fill_template,
    reason_meaning,
    template_variable_problem,
)

__all__ = ["RecordedRequest", "WhatsAppSimulator"]

DEFAULT_TOKEN = "sim-token"
DEFAULT_SENDER = "972771234567"
CONTROL_PREFIX = "/__sim__/"

#: The free-form ("template") window and the billing conversation both last 24 hours.
WINDOW = timedelta(hours=24)
_TEMPLATES_PREFIX = TEMPLATES_PATH.split("{phone}", 1)[0]
_NUMBER_RE = re.compile(r"[0-9]{8,15}")
_VARIABLE_KEY_RE = re.compile(r"bodyVariable([0-9]+)")
_UNIQUE_ALPHABET = string.ascii_lowercase + string.digits
_UNIQUE_LENGTH = 22
_RNG = random.Random()  # seeded from os.urandom
#: Longest ``fail_next(delay=...)``: longer than any client timeout, short of hanging a thread forever.
_MAX_FAULT_DELAY = 24 * 3600.0


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the simulator answered (control requests are not recorded).

    ``headers`` never hold the token: ``Authorization`` reads ``"Bearer ***"`` when it carried the
    right token and ``"Bearer <wrong>"`` otherwise, and the token is masked anywhere else too.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw: bytes
    received_at: pendulum.DateTime
    response_status: int
    response_json: Any
    #: The query string without ``?`` ("" when none); ``path`` never includes it.
    query: str = ""
    #: The client's TCP port: requests sharing it came over one kept-alive connection.
    client_port: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what ``GET /__sim__/requests`` returns)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "client_port": self.client_port,
            "headers": dict(self.headers),
            "json": self.json,
            "raw": self.raw.decode("utf-8", errors="replace"),
            "received_at": self.received_at.isoformat(),
            "response_status": self.response_status,
            "response_json": self.response_json,
        }


@dataclass
class _Contact:
    """What the simulator knows about one (sender, client) pair."""

    last_inbound: datetime | None = None  # the client's last message to us
    conversation_start: datetime | None = None  # start of the current billing conversation
    messaged: bool = False  # anything was ever accepted towards this client


@dataclass
class _Fault:
    remaining: int
    reason: int | None = None
    status: int | None = None
    retry_after: str | None = None
    delay: float | None = None
    body: bytes | None = None
    content_type: str | None = None
    path: str | None = None
    to: str | None = None


@dataclass
class _Response:
    status: int
    payload: Any = None  # JSON answer, or None when ``body`` is raw
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> _Response:
        data = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status=status, payload=payload, body=data, headers=headers or [])


class _SimError(Exception):
    """A send refused with a reason code (answered as HTTP 200 FAIL, like 019 does)."""

    def __init__(self, reason: int, message: str | None = None) -> None:
        super().__init__(message or reason_meaning(reason))
        self.reason = int(reason)  # plain int in recorded JSON, not the enum
        self.message = message or reason_meaning(reason)


def _path_matches(pattern: str | None, path: str) -> bool:
    # "/whatsapp-api/get-phone-templates" also matches ".../get-phone-templates/<phone>".
    if pattern is None:
        return True
    pattern = pattern.rstrip("/") or "/"
    return path == pattern or path.startswith(pattern + "/")


def _to_utc(value: datetime | str) -> pendulum.DateTime:
    """A pendulum UTC datetime from an aware/naive (taken as UTC) datetime or an ISO string."""
    if isinstance(value, str):
        parsed = pendulum.parse(value, tz="UTC")
        if not isinstance(parsed, datetime):
            raise ValueError(f"not a date-time: {value!r}")
        value = parsed
    elif not isinstance(value, datetime):  # e.g. a JSON number from a control request
        raise TypeError(f"expected a datetime or an ISO 8601 string, not {type(value).__name__}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return pendulum.instance(value).in_timezone("UTC")


def _normalise_number(value: str | int, what: str = "number") -> str:
    """``value`` in the API's spelling, digits only: "+972 50-123-4567" -> "972501234567".

    Spelling is undone as the client's :func:`~airflow_provider_wa019.api.compact_number` does
    (spaces, dashes, dots, parentheses; a leading ``+`` or ``00``), so a test can say a number the
    way a person writes it and still match the digits-only ``to`` of a send.

    :raises TypeError: not a string or an int (a float would read as other digits: 9.7e11 -> "...0").
    :raises ValueError: not 8-15 digits after that.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{what} must be a string or an int, not {type(value).__name__}: {value!r:.60}")
    digits = compact_number(str(value)).lstrip("+")
    if not _NUMBER_RE.fullmatch(digits):
        raise ValueError(
            f"{what} {value!r:.60} is not a phone number: expected 8-15 digits once spaces, dashes, "
            "dots, parentheses and a leading + or 00 are removed"
        )
    return digits


def _check_int(name: str, value: object) -> int:
    # int(True) and int(6.5) would quietly become a fault nobody asked for.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}: {value!r:.60}")
    return value


def _check_number(name: str, value: object) -> float:
    """``value`` as a finite float; a bool, a string ("90"), NaN or infinity is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}: {value!r:.60}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name} is too large: {value!r:.60}") from None
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return seconds


def _check_header_value(name: str, value: str) -> str:
    # A new line would end the header and start another one (or the body) in the answer.
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} must not contain a new line: {value!r:.60}")
    return value


def _header_type(value: Any) -> int | None:
    """``headerType`` as the integer it is, or None when it is not one.

    An int, or a string of ASCII digits (clients send numbers as strings elsewhere too); not
    ``int()``'s reading, which turns 3.9 into 3 and ``true`` into 1.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and 0 < len(value) < 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _json_string(data: Mapping[str, Any], key: str) -> str | None:
    """A control request's ``key`` (None when absent or null), which must be a JSON string.

    Phone numbers must be strings there: a JSON number past 2**53 loses digits in many encoders.
    """
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a JSON string, not {type(value).__name__}: {value!r:.60}")
    return value


def _json_number(data: Mapping[str, Any], key: str) -> float:
    """A control request's ``key`` (0 when absent), which must be a finite JSON number."""
    return _check_number(key, data[key]) if key in data else 0.0


def _minutes_left(start: datetime | None, now: datetime) -> int:
    """Whole minutes left of a 24 h period that began at ``start`` (0 when none or over)."""
    if start is None:
        return 0
    seconds = (start + WINDOW - now).total_seconds()
    return max(0, int(seconds // 60))


def _mask(value: Any, token: str) -> Any:
    """``value`` (parsed JSON) with every occurrence of ``token`` in its strings replaced by ``***``."""
    if isinstance(value, str):
        return value.replace(token, "***") if token in value else value
    if isinstance(value, dict):
        return {_mask(k, token): _mask(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, token) for v in value]
    return value


def _new_unique() -> str:
    # Not secrets.choice: ids need to be unique, not unguessable, and that is ~15x slower.
    return "".join(_RNG.choices(_UNIQUE_ALPHABET, k=_UNIQUE_LENGTH))


# --------------------------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------------------------


class WhatsAppSimulator:
    """The 019sms WhatsApp API on ``http://127.0.0.1:<port>``, with a controllable clock and faults.

    :param token: the bearer token the simulator accepts.
    :param senders: the business accounts (``from`` numbers) that exist; ``sender`` is the first.
        Normalised to digits ("+972 77-123-4567" -> "972771234567"); ``ValueError`` if one is not
        8-15 digits then.
    :param host: address to bind; keep the loopback default in tests.
    :param port: port to bind; 0 picks a free one (read ``base_url`` after ``start()``).
    :param latency: seconds to sleep in every API request (realistic bulk benchmarks).
    :param max_concurrency: at most this many API requests are handled at once; others wait.
    :param templates: templates to register, as dicts of :meth:`add_template` arguments
        (``name``, ``body``, optional ``template_id``/``templateId``, ``language``, ...).
    :param now: freeze the clock at this moment (datetime or ISO string); by default it follows
        real time until :meth:`set_time` or :meth:`advance` is called.

    Everything is thread-safe (one lock). The simulator is a context manager::

        with WhatsAppSimulator(templates=[{"name": "hello", "body": "Hi {{1}}"}]) as sim:
            ...
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        senders: Sequence[str] = (DEFAULT_SENDER,),
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        templates: Iterable[Mapping[str, Any]] | None = None,
        now: datetime | str | None = None,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if isinstance(senders, (str, int)):
            senders = (senders,)
        if not senders:
            raise ValueError("at least one sender is needed")
        self._token = token
        # Normalised once here, so a send's digits-only 'from' matches "+972 77-123-4567".
        self._senders: tuple[str, ...] = tuple(_normalise_number(s, "sender") for s in senders)
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        # Same lock: the concurrency gate and the state never deadlock against each other.
        self._slots = threading.Condition(self._lock)
        self._latency = float(latency)
        self._max_concurrency = self._check_concurrency(max_concurrency)
        self._active = 0
        self._peak = 0
        self._frozen: pendulum.DateTime | None = _to_utc(now) if now is not None else None
        self._offset = timedelta(0)
        self._contacts: dict[tuple[str, str], _Contact] = {}
        self._templates: list[dict[str, Any]] = []
        self._next_template_id = 1
        self._faults: list[_Fault] = []
        self._log: list[RecordedRequest] = []
        self._sent: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for spec in templates or ():
            spec = dict(spec)
            if "templateId" in spec:
                spec["template_id"] = spec.pop("templateId")
            self.add_template(**spec)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WhatsAppSimulator:
        """Bind the port and serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        server = _Server((self._host, self._port), _Handler)
        server.sim = self
        self._server = server
        # A short poll interval makes stop() quick (~5 ms, not ~25): it matters for per-test fixtures.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="wa019-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and free the port (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> WhatsAppSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- addresses and connections -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (only after ``start()``)."""
        if self._server is None:
            raise RuntimeError("simulator not started: call start() or use it as a context manager")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the connection's host (only after ``start()``)."""
        host = self._server.server_address[0] if self._server is not None else self._host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def token(self) -> str:
        return self._token

    @property
    def senders(self) -> tuple[str, ...]:
        return self._senders

    @property
    def sender(self) -> str:
        """The default business account (``senders[0]``)."""
        return self._senders[0]

    def connection_json(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_...`` value (JSON form) pointing at this simulator.

        ``{"conn_type": "wa019", "host": base_url, "password": token, "extra": {"sender": ...}}``;
        keyword arguments are added to ``extra`` (e.g. ``timeout=5``).
        """
        return json.dumps(
            {
                "conn_type": "wa019",
                "host": self.base_url,
                "password": self._token,
                "extra": {"sender": self.sender, **extra},
            },
            separators=(",", ":"),  # no spaces: simpler to paste into a shell
        )

    def connection_uri(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_...`` value (URI form) that Airflow parses back to the JSON form's fields.

        The form is ``wa019://:TOKEN@http%3A%2F%2F127.0.0.1%3APORT/?__extra__=<url-encoded JSON>``:

        * the whole base URL is percent-encoded as the host, so Airflow's ``Connection`` (both
          ``airflow.sdk`` and ``airflow.models``) reads ``host == "http://127.0.0.1:PORT"`` and
          ``port is None``, the same as the JSON form;
        * extras go in ``__extra__`` as JSON because plain ``?sender=972...`` query values are
          JSON-decoded by ``airflow.models.Connection``, turning the number into an ``int``.
        """
        payload = json.dumps({"sender": self.sender, **extra})
        return (
            f"wa019://:{quote(self._token, safe='')}@{quote(self.base_url, safe='')}/"
            f"?__extra__={quote(payload, safe='')}"
        )

    def connection_env(self, conn_id: str = "wa019_default", **extra: Any) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<CONN_ID>": connection_json(**extra)}``, ready for ``os.environ.update``."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_json(**extra)}

    # -- clock --------------------------------------------------------------------------------

    def _now(self) -> pendulum.DateTime:  # lock held or not needed: two attribute reads
        if self._frozen is not None:
            return self._frozen
        return pendulum.now("UTC") + self._offset

    def now(self) -> pendulum.DateTime:
        """The simulator's current time (UTC)."""
        with self._lock:
            return self._now()

    def set_time(self, dt: datetime | str | None) -> None:
        """Freeze the clock at ``dt`` (naive means UTC); ``None`` returns to real time."""
        with self._lock:
            self._frozen = _to_utc(dt) if dt is not None else None
            self._offset = timedelta(0)

    def advance(self, **duration: float) -> pendulum.DateTime:
        """Move the clock forward by ``pendulum.duration(**duration)`` (e.g. ``hours=24, minutes=1``).

        A frozen clock stays frozen; a real-time clock keeps ticking from the shifted time.
        Returns the new ``now()``. ``ValueError`` (clock unchanged) if the result would not be a
        date of the years 1-9999.
        """
        try:
            delta = pendulum.duration(**duration)
        except OverflowError:
            raise ValueError(f"advance{duration} is too far: no such duration") from None
        with self._lock:
            frozen, offset = self._frozen, self._offset
            # Tried before the clock changes: a clock past year 9999 would crash every request.
            try:
                if frozen is not None:
                    frozen += delta
                else:
                    offset += delta
                    pendulum.now("UTC") + offset  # raises OverflowError past year 9999
            except OverflowError:
                raise ValueError(
                    f"advance{duration} is too far: the clock would leave years 1-9999"
                ) from None
            if frozen is not None:
                self._frozen = frozen
            else:
                self._offset = offset
            return self._now()

    # -- scenario set-up ------------------------------------------------------------------------

    def open_window(
        self, number: str | int, at: datetime | str | None = None, *, sender: str | int | None = None
    ) -> None:
        """Record that client ``number`` wrote to ``sender`` (default: ``sim.sender``) at ``at``.

        That opens, or refreshes, the 24 h window for free-form messages. ``at`` defaults to the
        simulator's now; pass an older time to set up an expired window.

        ``number`` and ``sender`` are normalised ("+972 50-123-4567" -> "972501234567").
        ``ValueError`` if one is not 8-15 digits then, or ``sender`` is not one of ``senders``
        (the window could never be used).
        """
        number = _normalise_number(number, "number")
        sender = self._known_sender(sender)
        with self._lock:
            when = _to_utc(at) if at is not None else self._now()
            self._contact(sender, number).last_inbound = when

    def _known_sender(self, sender: str | int | None) -> str:
        if sender is None:
            return self.sender
        normalised = _normalise_number(sender, "sender")
        if normalised not in self._senders:
            raise ValueError(f"sender {sender!r} is not one of the simulator's senders {self._senders}")
        return normalised

    def add_template(
        self,
        name: str,
        body: str,
        *,
        template_id: str | int | None = None,
        language: str = "he",
        status: str = "approved",
        category: str = "UTILITY",
        footer: str = "",
        buttons: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Register a template (all senders share them); ``{{1}}``..``{{10}}`` mark variables.

        Only ``status="approved"`` templates can be sent. A template with the same name and
        language replaces the old one. Returns the template as the listing shows it.
        """
        with self._lock:
            if template_id is None:
                template_id = self._next_template_id
                self._next_template_id += 1
            record = {
                "name": name,
                "templateId": str(template_id),
                "language": language,
                "body": body,
                "footer": footer,
                "buttons": list(buttons or []),
                "status": status,
                "category": category,
            }
            self._templates = [t for t in self._templates if (t["name"], t["language"]) != (name, language)]
            self._templates.append(record)
            return dict(record)

    @property
    def templates(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(t) for t in self._templates]

    def fail_next(
        self,
        n: int = 1,
        *,
        reason: int | None = None,
        status: int | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        body: str | bytes | None = None,
        content_type: str | None = None,
        path: str | None = None,
        to: str | int | None = None,
    ) -> None:
        """Make the next ``n`` API requests (only those under ``path``, and only those whose JSON
        ``to`` is ``to``, when given) fail this way.

        * ``reason=6``: HTTP 200 ``{"status": "FAIL", "reason": 6, "message": ...}`` (any code).
        * ``status=429`` / 500 / 502 / 503 / ...: that HTTP status with a small JSON body;
          ``retry_after`` adds a ``Retry-After`` header. With ``reason`` too, the body is the
          reason's FAIL JSON.
        * ``delay=seconds``: sleep, then answer normally (the message *is* sent: a client's read
          timeout leaves the outcome unknown, as in real life), or with the other fault fields.
        * ``body=str|bytes``: this raw body with HTTP ``status`` (default 200): non-JSON, cut JSON,
          an HTML error page, ``""``, a JSON array... ``content_type`` defaults to HTML when the
          body starts with ``<``, else JSON.

        Faults are queued: several calls line up in order. Control requests never consume them,
        nor do requests with a wrong or missing token (those get reason 3 / HTTP 401 as always).
        ``to`` ties a fault to one recipient, so a bulk send's order does not matter; it is
        normalised like :meth:`open_window`'s number ("+972 50-555-5555" matches "972505555555").

        Arguments are checked here, not when the fault fires: ``TypeError`` for a wrong type
        (``n``, ``reason`` and ``status`` are ints, not bools or floats), ``ValueError`` for a
        wrong value (``status`` outside 200-599, a negative or endless ``delay``...).
        """
        n = _check_int("n", n)
        if n < 1:
            raise ValueError("n must be at least 1")
        if reason is None and status is None and delay is None and body is None:
            raise ValueError("give at least one of reason, status, delay or body")
        if reason is not None:
            reason = _check_int("reason", reason)
        if status is not None and not 200 <= _check_int("status", status) <= 599:
            # 1xx would leave the client waiting for a final answer; 600+ is no HTTP status.
            raise ValueError(f"status must be an HTTP status 200-599, not {status}")
        retry: str | None = None
        if isinstance(retry_after, str):  # an HTTP date, or seconds as written
            retry = _check_header_value("retry_after", retry_after)
        elif retry_after is not None:
            if _check_number("retry_after", retry_after) < 0:
                raise ValueError(f"retry_after must not be negative: {retry_after!r}")
            retry = str(retry_after)
        if delay is not None:
            delay = _check_number("delay", delay)
            if not 0 <= delay <= _MAX_FAULT_DELAY:
                raise ValueError(f"delay must be 0-{_MAX_FAULT_DELAY:.0f} seconds, not {delay!r}")
        if body is not None and not isinstance(body, (str, bytes)):
            raise TypeError(f"body must be str or bytes, not {type(body).__name__}")
        if content_type is not None:
            if not isinstance(content_type, str):
                raise TypeError(f"content_type must be a string, not {type(content_type).__name__}")
            _check_header_value("content_type", content_type)
        if path is not None:
            if not isinstance(path, str):
                raise TypeError(f"path must be a string, not {type(path).__name__}")
            if not path.startswith("/"):  # request paths always do: the fault would never fire
                raise ValueError(f"path must start with '/': {path!r}")
        fault = _Fault(
            remaining=n,
            reason=reason,
            status=status,
            retry_after=retry,
            delay=delay,
            body=body.encode() if isinstance(body, str) else body,
            content_type=content_type,
            path=path,
            to=_normalise_number(to, "to") if to is not None else None,
        )
        with self._lock:
            self._faults.append(fault)

    def reset(self) -> None:
        """Forget the request log, sent messages, pending faults, contacts' windows and the peak.

        Templates, the clock, latency and max_concurrency stay.
        """
        with self._lock:
            self._log.clear()
            self._sent.clear()
            self._faults.clear()
            self._contacts.clear()
            self._peak = self._active

    # -- observation --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request answered so far, in the order they were answered."""
        with self._lock:
            return list(self._log)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path is ``path`` or below it."""
        with self._lock:
            return [r for r in self._log if _path_matches(path, r.path)]

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Accepted messages: dicts with ``unique``, ``from``, ``to``, ``body``, ``kind``, ``at``.

        ``kind`` is ``"message"`` or ``"template"``; templates also carry ``template`` (name),
        ``variables``, ``headerType`` and ``headerLink``; messages carry ``replyTo``.
        """
        with self._lock:
            return [dict(m) for m in self._sent]

    @property
    def pending_faults(self) -> int:
        """How many faulted requests are still queued."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    @property
    def peak_concurrency(self) -> int:
        """The most API requests ever handled at the same moment (since start or ``reset()``)."""
        with self._lock:
            return self._peak

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = float(seconds)

    @property
    def max_concurrency(self) -> int | None:
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int | None) -> None:
        with self._slots:
            self._max_concurrency = self._check_concurrency(value)
            self._slots.notify_all()

    @staticmethod
    def _check_concurrency(value: int | None) -> int | None:
        if value is not None and int(value) < 1:
            raise ValueError("max_concurrency must be at least 1 (or None for no limit)")
        return int(value) if value is not None else None

    # -- request handling (called from handler threads) ----------------------------------------

    def _contact(self, sender: str, number: str) -> _Contact:
        key = (sender, number)
        contact = self._contacts.get(key)
        if contact is None:
            contact = self._contacts[key] = _Contact()
        return contact

    def _take_fault(self, path: str, raw: bytes = b"") -> _Fault | None:
        with self._lock:
            to: Any = None
            if any(f.to is not None for f in self._faults):  # parse the body only when a fault needs it
                # RecursionError: a hostile body thousands of levels deep is simply not a match.
                with contextlib.suppress(ValueError, AttributeError, RecursionError):
                    to = json.loads(raw).get("to")
            for i, fault in enumerate(self._faults):
                if _path_matches(fault.path, path) and (fault.to is None or fault.to == to):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[i]
                    return fault
        return None

    def _acquire_slot(self) -> None:
        with self._slots:
            while self._max_concurrency is not None and self._active >= self._max_concurrency:
                self._slots.wait()
            self._active += 1
            self._peak = max(self._peak, self._active)

    def _release_slot(self) -> None:
        with self._slots:
            self._active -= 1
            self._slots.notify()

    def _serve_api(
        self, method: str, path: str, query: str, headers: Message, raw: bytes, client_port: int = 0
    ) -> _Response:
        """Handle one API request end to end, recording it *before* the answer is written, so a
        client that got its answer always finds its request in ``sim.requests``."""
        received_at = self.now()
        # Faults stand for the platform failing a request it accepted; one with a wrong or missing
        # token is refused first (reason 3 / 401) and must not use up a fault meant for a real
        # send. Unlocked peek at the queue: no token check and no lock when nothing is queued.
        faultable = bool(self._faults) and self._authorized(headers.get("Authorization"))
        fault = self._take_fault(path, raw) if faultable else None
        self._acquire_slot()
        try:
            if self._latency > 0:
                time.sleep(self._latency)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            response = self._faulted(fault) if fault is not None else None
            if response is None:
                response = self._route(method, path, headers, raw)
            self._record(method, path, query, headers, raw, received_at, response, client_port)
        finally:
            # Released before the answer is written: a client bounded to N requests in flight can
            # then never be seen as N + 1 (its next request may arrive before this thread resumes).
            self._release_slot()
        return response

    @staticmethod
    def _faulted(fault: _Fault) -> _Response | None:
        headers = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
        if fault.body is not None:
            ctype = fault.content_type
            if ctype is None:
                ctype = (
                    "text/html; charset=utf-8" if fault.body.lstrip().startswith(b"<") else "application/json"
                )
            return _Response(status=fault.status or 200, body=fault.body, content_type=ctype, headers=headers)
        if fault.reason is not None:
            payload = {"status": "FAIL", "reason": fault.reason, "message": reason_meaning(fault.reason)}
            return _Response.json(fault.status or 200, payload, headers)
        if fault.status is not None:
            try:
                phrase = HTTPStatus(fault.status).phrase
            except ValueError:
                phrase = "error"
            return _Response.json(fault.status, {"status": "FAIL", "message": phrase}, headers)
        return None  # delay only: answer normally

    def _record(
        self,
        method: str,
        path: str,
        query: str,
        headers: Message,
        raw: bytes,
        received_at: pendulum.DateTime,
        response: _Response,
        client_port: int = 0,
    ) -> None:
        token = self._token
        safe_headers: dict[str, str] = {}
        for name, value in headers.items():
            if name.lower() == "authorization":
                value = "Bearer ***" if self._authorized(value) else "Bearer <wrong>"
            elif token in value:
                value = value.replace(token, "***")
            safe_headers[name] = value
        if token.encode() in raw:  # a client that leaks the token into the body: never store it
            raw = raw.replace(token.encode(), b"***")
        try:
            parsed = json.loads(raw) if raw else None
        except (ValueError, RecursionError):
            parsed = None
        answer = _mask(response.payload, token)  # a send echoes the body, leaked token included
        entry = RecordedRequest(
            method=method,
            path=path,
            headers=safe_headers,
            json=parsed,
            raw=raw,
            received_at=received_at,
            response_status=response.status,
            response_json=answer,
            query=query,
            client_port=client_port,
        )
        with self._lock:
            self._log.append(entry)

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credential = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self._token.encode()
        )

    def _route(self, method: str, path: str, headers: Message, raw: bytes) -> _Response:
        if path in (SEND_PATH, TEMPLATE_PATH):
            if method != "POST":
                return _Response.json(
                    405, {"status": "FAIL", "message": "method not allowed"}, [("Allow", "POST")]
                )
            send = self._send_message if path == SEND_PATH else self._send_template
            try:
                return _Response.json(200, send(headers, raw))
            except _SimError as err:
                return _Response.json(200, {"status": "FAIL", "reason": err.reason, "message": err.message})
        if path.startswith(_TEMPLATES_PREFIX):
            if method != "GET":
                return _Response.json(
                    405, {"success": False, "message": "method not allowed"}, [("Allow", "GET")]
                )
            return self._get_templates(headers, path[len(_TEMPLATES_PREFIX) :])
        return _Response.json(404, {"status": "FAIL", "message": f"no such endpoint: {method} {path}"})

    # -- the endpoints --------------------------------------------------------------------------

    def _common_checks(self, headers: Message, raw: bytes) -> tuple[dict[str, Any], str, str]:
        """Auth (3), JSON object (2), known sender (2), recipient format (4), in the vendor's order."""
        if not self._authorized(headers.get("Authorization")):
            raise _SimError(Reason.BAD_TOKEN)
        try:
            data = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # the platform answers reason 2 to any bad JSON
            data = None
        if not isinstance(data, dict):
            raise _SimError(Reason.BAD_SENDER_OR_JSON, "the request body is not a JSON object")
        sender = data.get("from")
        if not isinstance(sender, str) or sender not in self._senders:
            raise _SimError(Reason.BAD_SENDER_OR_JSON, f"the 'from' account {sender!r} does not exist")
        to = data.get("to")
        if not isinstance(to, str) or not _NUMBER_RE.fullmatch(to):
            raise _SimError(Reason.BAD_RECIPIENT, f"'to' is empty or not 8-15 digits: {to!r}")
        return data, sender, to

    def _send_message(self, headers: Message, raw: bytes) -> dict[str, Any]:
        data, sender, to = self._common_checks(headers, raw)
        body = data.get("body")
        if not isinstance(body, str) or not body.strip():
            raise _SimError(Reason.EMPTY_BODY)
        if len(body) > MAX_BODY_CHARS:
            raise _SimError(
                Reason.BAD_SENDER_OR_JSON, f"'body' has {len(body)} characters; at most {MAX_BODY_CHARS}"
            )
        reply_to = data.get("replyTo")
        if reply_to is not None and not isinstance(reply_to, str):
            raise _SimError(Reason.BAD_SENDER_OR_JSON, "'replyTo' must be a string")
        with self._lock:
            now = self._now()
            contact = self._contact(sender, to)
            if contact.last_inbound is None:
                # Never wrote: either a brand-new contact, or only templates went out so far.
                raise _SimError(Reason.WINDOW_CLOSED if contact.messaged else Reason.FIRST_CONTACT)
            if now >= contact.last_inbound + WINDOW:
                raise _SimError(Reason.WINDOW_CLOSED)
            return self._accept(contact, now, sender, to, body, {"kind": "message", "replyTo": reply_to})

    def _send_template(self, headers: Message, raw: bytes) -> dict[str, Any]:
        data, sender, to = self._common_checks(headers, raw)
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise _SimError(Reason.BAD_SENDER_OR_JSON, "'name' (the template name) is required")
        given = data.get("headerType", HEADER_NONE)
        header_type = _header_type(given)
        if header_type is None:
            raise _SimError(Reason.BAD_SENDER_OR_JSON, f"bad headerType {given!r:.40}")
        link = data.get("headerLink")
        if header_type in MEDIA_HEADER_TYPES:
            if not isinstance(link, str) or not link.startswith("https://") or len(link) <= len("https://"):
                raise _SimError(
                    Reason.BAD_SENDER_OR_JSON, f"headerType {header_type} needs an https 'headerLink'"
                )
        elif header_type != HEADER_NONE:
            raise _SimError(Reason.BAD_SENDER_OR_JSON, f"bad headerType {header_type!r} (1, 3, 4 or 5)")
        variables: dict[int, Any] = {}
        for key, value in data.items():
            match = _VARIABLE_KEY_RE.fullmatch(key)
            if match and value is not None:
                variables[int(match.group(1))] = value
        with self._lock:
            template = next((t for t in reversed(self._templates) if t["name"] == name), None)
            if template is None:
                raise _SimError(Reason.BAD_SENDER_OR_JSON, f"no template named {name!r}")
            if str(template["status"]).lower() != "approved":
                raise _SimError(
                    Reason.BAD_SENDER_OR_JSON, f"template {name!r} is {template['status']}, not approved"
                )
            text = self._render(template, variables)
            now = self._now()
            contact = self._contact(sender, to)
            extra = {
                "kind": "template",
                "template": name,
                "variables": [str(variables[i]) for i in sorted(variables)],
                "headerType": header_type,
                "headerLink": link if header_type in MEDIA_HEADER_TYPES else None,
            }
            return self._accept(contact, now, sender, to, text, extra)

    @staticmethod
    def _render(template: Mapping[str, Any], variables: Mapping[int, Any]) -> str:
        body = str(template["body"])
        needed = count_placeholders(body)
        name = template["name"]
        if any(i < 1 or i > MAX_TEMPLATE_VARIABLES for i in variables):
            raise _SimError(
                Reason.BAD_SENDER_OR_JSON,
                f"only bodyVariable1..bodyVariable{MAX_TEMPLATE_VARIABLES} exist",
            )
        if set(variables) != set(range(1, needed + 1)):
            raise _SimError(
                Reason.BAD_SENDER_OR_JSON,
                f"template {name!r} takes {needed} variable(s) (bodyVariable1..{needed}), "
                f"got {sorted(variables) or 'none'}",
            )
        for i in sorted(variables):
            value = variables[i]
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
                raise _SimError(Reason.BAD_SENDER_OR_JSON, f"bodyVariable{i} is empty or not text")
            # Meta refuses the whole send (error 132018); 019 answers it like its other refusals.
            problem = template_variable_problem(value) if isinstance(value, str) else None
            if problem is not None:
                raise _SimError(Reason.BAD_SENDER_OR_JSON, f"bodyVariable{i}: {problem}")
        text = fill_template(body, [str(variables[i]) for i in range(1, needed + 1)])
        if len(text) > MAX_TEMPLATE_CHARS:
            raise _SimError(
                Reason.BAD_SENDER_OR_JSON,
                f"template {name!r} with its variables has {len(text)} characters; "
                f"at most {MAX_TEMPLATE_CHARS}",
            )
        return text

    def _accept(
        self,
        contact: _Contact,
        now: pendulum.DateTime,
        sender: str,
        to: str,
        body: str,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        """Book an accepted send (lock held): start a conversation if none is active."""
        conv = contact.conversation_start
        if conv is None or now >= conv + WINDOW:
            contact.conversation_start = now
        contact.messaged = True
        unique = _new_unique()
        self._sent.append({"unique": unique, "from": sender, "to": to, "body": body, "at": now, **extra})
        return {
            "status": "OK",
            "unique": unique,
            "body": body,
            "timestamp": int(now.timestamp()),
            "from": sender,
            "to": to,
            "templateTimeLeft": str(_minutes_left(contact.last_inbound, now)),
            "conversationTimeLeft": str(_minutes_left(contact.conversation_start, now)),
            "reason": int(Reason.OK),
        }

    def _get_templates(self, headers: Message, rest: str) -> _Response:
        if not self._authorized(headers.get("Authorization")):
            return _Response.json(401, {"success": False, "message": "Unauthorized"})
        parts = rest.split("/")
        if not 1 <= len(parts) <= 2 or not all(parts):
            return _Response.json(404, {"success": False, "message": "not found"})
        phone = parts[0]
        if phone not in self._senders:
            return _Response.json(200, {"success": False, "message": "phone not found"})
        templates = self.templates
        if len(parts) == 2:
            templates = [t for t in templates if t["templateId"] == parts[1]]
        return _Response.json(200, {"success": True, "templates": templates})

    # -- control endpoints ----------------------------------------------------------------------

    def _control(self, method: str, path: str, raw: bytes) -> _Response:
        """``/__sim__/...``: drive the simulator from another process. Not recorded, never faulted."""
        action = path[len(CONTROL_PREFIX) :].strip("/")
        try:
            data = json.loads(raw) if raw.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            if method == "GET" and action == "requests":
                return _Response.json(200, [r.to_dict() for r in self.requests])
            if method == "GET" and action == "sent":
                return _Response.json(200, [{**m, "at": m["at"].isoformat()} for m in self.sent])
            if method == "GET" and action == "clock":
                return _Response.json(200, {"ok": True, "now": self.now().isoformat()})
            if method == "GET" and action == "templates":
                return _Response.json(200, self.templates)
            if method == "POST" and action == "open-window":
                number = _json_string(data, "number")
                if not number:
                    raise ValueError("'number' is required")
                self.open_window(number, data.get("at"), sender=_json_string(data, "sender"))
                return _Response.json(200, {"ok": True})
            if method == "POST" and action == "faults":
                _json_string(data, "to")  # fail_next takes an int too; JSON may not (see _json_string)
                self.fail_next(**data)
                return _Response.json(200, {"ok": True, "pending": self.pending_faults})
            if method == "POST" and action == "templates":
                if "templateId" in data:
                    data["template_id"] = data.pop("templateId")
                return _Response.json(200, {"ok": True, "template": self.add_template(**data)})
            if method == "POST" and action == "reset":
                self.reset()
                return _Response.json(200, {"ok": True})
            if method == "POST" and action == "clock":
                if data.get("set") is not None:
                    self.set_time(data["set"])
                elif "advance_minutes" in data or "advance_seconds" in data:
                    # JSON numbers only: float("90") or float(true) would hide a client's mistake.
                    self.advance(
                        minutes=_json_number(data, "advance_minutes"),
                        seconds=_json_number(data, "advance_seconds"),
                    )
                elif data.get("real_time"):
                    self.set_time(None)
                else:
                    raise ValueError("give 'set' (ISO time), 'advance_minutes' or 'real_time': true")
                return _Response.json(200, {"ok": True, "now": self.now().isoformat()})
        except (TypeError, ValueError, OverflowError, RecursionError) as err:  # bad input: tell the caller, never crash
            return _Response.json(400, {"ok": False, "error": str(err)})
        return _Response.json(404, {"ok": False, "error": f"no such control endpoint: {method} {path}"})


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    block_on_close = False
    request_queue_size = 128  # bulk clients open many connections at once
    sim: WhatsAppSimulator

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet about clients that hang up (timeouts, stop()); loud about anything else (a bug).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_connections(self) -> None:
        # Keep-alive handler threads block reading the next request; wake them with EOF.
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections like with the real API
    # Headers and body leave in one buffered write (flushed by handle_one_request) with TCP_NODELAY:
    # two small writes would meet Nagle + delayed ACK and cost ~40 ms per keep-alive request.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server_version = "wa019-simulator"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read sim.requests instead
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        sim = self.server.sim
        split = urlsplit(self.path)
        path = split.path or "/"
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write(_Response.json(400, {"status": "FAIL", "message": "bad request framing"}))
            return
        if path.startswith(CONTROL_PREFIX):
            response = sim._control(self.command, path, raw)
        else:
            # self.headers (an email Message) looks names up case-insensitively, like HTTP does.
            response = sim._serve_api(
                self.command, path, split.query, self.headers, raw, client_port=self.client_address[1]
            )
        self._write(response)

    def _write(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            if response.body:
                self.wfile.write(response.body)
            self.wfile.flush()  # here, so a vanished client is handled below rather than logged
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout during a delay fault): nothing to tell it.
            self.close_connection = True
