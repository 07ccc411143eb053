"""The simulated 019sms platform, without sockets: its state, its rules, and each API answer.

:class:`Platform` holds, behind one lock,

* the accounts: the bearer token and the ``from`` numbers (senders);
* the contacts: per (sender, client), the client's last inbound message (the 24 h free-form
  window) and the current 24 h billing conversation;
* the clock: real time, shifted, or frozen;
* the templates (:class:`~airflow_provider_wa019.testing.templates.TemplateBook`) and the
  fault queue (:class:`~airflow_provider_wa019.testing.faults.FaultQueue`);
* what it accepted (``sent``) and every API request it answered (``requests``);
* the load model: latency per request and a limit on requests handled at once.

:meth:`Platform.answer_api` decides the answer to one API request: a queued fault, or the
endpoint's answer from the fields ``endpoints.py`` reads and the window and template rules here;
the request is recorded before the answer goes back. ``WhatsAppSimulator`` serves this over HTTP
and adds the ``/__sim__/`` control endpoints (``control.py``), which call the public methods.
"""

from __future__ import annotations

import hmac
import random
import string
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

import pendulum

from airflow_provider_wa019.api import (
    MAX_UNIQUE_CHARS,
    SEND_PATH,
    TEMPLATE_PATH,
    WINDOW_SECONDS,
    Reason,
    inbound_payload,
)
from airflow_provider_wa019.testing import endpoints
from airflow_provider_wa019.testing.checks import normalise_number, to_utc
from airflow_provider_wa019.testing.faults import Fault, FaultQueue, fault_response
from airflow_provider_wa019.testing.records import (
    RecordedRequest,
    Refusal,
    Response,
    path_matches,
    record,
)
from airflow_provider_wa019.testing.templates import TemplateBook, render, template_arguments
from airflow_provider_wa019.testing.webhooks import Delivery, deliver, encode, with_secret

#: The free-form ("template") window and the billing conversation both last 24 hours.
WINDOW = timedelta(seconds=WINDOW_SECONDS)
_UNIQUE_ALPHABET = string.ascii_lowercase + string.digits
#: The ``unique`` ids handed out: 22 characters, and never more than a client takes.
_UNIQUE_LENGTH = min(22, MAX_UNIQUE_CHARS)
_RNG = random.Random()  # seeded from os.urandom


@dataclass
class Contact:
    """What the platform knows about one (sender, client) pair."""

    last_inbound: datetime | None = None  # the client's last message to us
    conversation_start: datetime | None = None  # start of the current billing conversation
    messaged: bool = False  # anything was ever accepted towards this client


def minutes_left(start: datetime | None, now: datetime) -> int:
    """Whole minutes left of a 24 h period that began at ``start`` (0 when none or over)."""
    if start is None:
        return 0
    seconds = (start + WINDOW - now).total_seconds()
    return max(0, int(seconds // 60))


def _new_unique() -> str:
    # Not secrets.choice: ids need to be unique, not unguessable, and that is ~15x slower.
    return "".join(_RNG.choices(_UNIQUE_ALPHABET, k=_UNIQUE_LENGTH))


class Platform:
    """The 019sms platform's state and rules (see the module's docstring), thread-safe.

    The arguments are :class:`~airflow_provider_wa019.testing.WhatsAppSimulator`'s, which
    documents them and every public method here.
    """

    def __init__(
        self,
        token: str,
        senders: Sequence[str],
        *,
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
        self._senders: tuple[str, ...] = tuple(normalise_number(s, "sender") for s in senders)
        self._lock = threading.Lock()
        # Same lock: the concurrency gate and the state never deadlock against each other.
        self._slots = threading.Condition(self._lock)
        self._latency = float(latency)
        self._max_concurrency = self._check_concurrency(max_concurrency)
        self._active = 0
        self._peak = 0
        self._frozen: pendulum.DateTime | None = to_utc(now) if now is not None else None
        self._offset = timedelta(0)
        self._contacts: dict[tuple[str, str], Contact] = {}
        self._templates = TemplateBook()
        self._faults = FaultQueue()
        self._log: list[RecordedRequest] = []
        self._sent: list[dict[str, Any]] = []
        self._webhook_url: str | None = None
        self._deliveries: list[Delivery] = []
        for spec in templates or ():
            self.add_template(**template_arguments(spec))

    # -- accounts -----------------------------------------------------------------------------

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

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credential = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), self._token.encode()
        )

    def _known_sender(self, sender: str | int | None) -> str:
        if sender is None:
            return self.sender
        normalised = normalise_number(sender, "sender")
        if normalised not in self._senders:
            raise ValueError(f"sender {sender!r} is not one of the simulator's senders {self._senders}")
        return normalised

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
            self._frozen = to_utc(dt) if dt is not None else None
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
        number = normalise_number(number, "number")
        sender = self._known_sender(sender)
        with self._lock:
            when = to_utc(at) if at is not None else self._now()
            self._contact(sender, number).last_inbound = when

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
        entry = {
            "name": name,
            "templateId": template_id,
            "language": language,
            "body": body,
            "footer": footer,
            "buttons": list(buttons or []),
            "status": status,
            "category": category,
        }
        with self._lock:
            return self._templates.add(entry)

    @property
    def templates(self) -> list[dict[str, Any]]:
        with self._lock:
            return self._templates.listing()

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
        fault = Fault(
            remaining=n,
            reason=reason,
            status=status,
            retry_after=retry_after,
            delay=delay,
            body=body,
            content_type=content_type,
            path=path,
            to=to,
        )
        with self._lock:
            self._faults.append(fault)

    # -- the webhook (clients writing to us) ------------------------------------------------------

    def set_webhook(self, url: str | None, secret: str | None = None) -> None:
        """Where client messages are delivered: the URL configured at the platform (None: none).

        ``secret``, when given, is set as the URL's ``secret`` parameter (the platform can only be
        given a URL, so that is where a shared secret travels).
        """
        if url is not None and (not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https")):
            raise ValueError(f"the webhook URL must be an http(s) URL, got {url!r:.80}")
        with self._lock:
            self._webhook_url = with_secret(url, secret) if url is not None else None

    def client_says(
        self,
        number: str | int,
        text: str,
        *,
        quote: str | None = None,
        type: str = "text",
        sender: str | int | None = None,
        sender_name: str | None = None,
        times: int = 1,
        secret: str | None = None,
        body: bytes | str | None = None,
    ) -> dict[str, Any]:
        """Client ``number`` writes ``text`` to ``sender`` (default ``sim.sender``): their 24 h
        window opens (as :meth:`open_window`), and the message is delivered to the webhook, if one
        is set, ``times`` times (the platform re-delivers after a failure: duplicates happen).

        :param quote: the ``unique`` of our message the client quoted.
        :param secret: deliver with this ``secret`` instead of the configured one (a forged call).
        :param body: deliver these raw bytes instead of the documented payload (a malformed one).
        :return: ``{"unique": ..., "payload": {...}, "deliveries": [Delivery.to_dict(), ...]}``.
        """
        if isinstance(times, bool) or not isinstance(times, int) or not 0 <= times <= 10:
            raise ValueError(f"times must be 0 to 10, got {times!r}")
        if not isinstance(text, str):
            raise ValueError(f"text must be a string, got {text.__class__.__name__}")
        number = normalise_number(number, "number")
        account = self._known_sender(sender)
        unique = _new_unique().upper()
        with self._lock:
            now = self._now()
            self._contact(account, number).last_inbound = now
            url = self._webhook_url
        payload = inbound_payload(
            unique=unique, sender=number, to=account, body=text, type=type, timestamp=now,
            quote_unique=quote, sender_name=sender_name,
        )  # fmt: skip
        raw = body.encode() if isinstance(body, str) else body if body is not None else encode(payload)
        deliveries = []
        if url is not None:
            # Outside the lock: the receiver may call this simulator back while we wait.
            target = with_secret(url, secret)
            deliveries = [deliver(target, raw, unique=unique) for _ in range(times)]
            with self._lock:
                self._deliveries.extend(deliveries)
        return {"unique": unique, "payload": payload, "deliveries": [d.to_dict() for d in deliveries]}

    @property
    def deliveries(self) -> list[Delivery]:
        """Every webhook delivery so far, with the answer it got (secrets shown as ``***``)."""
        with self._lock:
            return list(self._deliveries)

    def reset(self) -> None:
        """Forget the request log, sent messages, pending faults, contacts' windows, deliveries
        and the peak.

        Templates, the clock, latency, max_concurrency and the webhook URL stay.
        """
        with self._lock:
            self._deliveries.clear()
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
            return [r for r in self._log if path_matches(path, r.path)]

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
            return self._faults.pending

    @property
    def peak_concurrency(self) -> int:
        """The most API requests ever handled at the same moment (since start or ``reset()``)."""
        with self._lock:
            return self._peak

    # -- load -----------------------------------------------------------------------------------

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

    # -- answering an API request (called from handler threads) --------------------------------

    def answer_api(
        self, method: str, path: str, query: str, headers: Message, raw: bytes, client_port: int = 0
    ) -> Response:
        """Answer one API request end to end, recording it *before* the answer is returned, so a
        client that got its answer always finds its request in ``requests``.

        ``headers`` look names up case-insensitively, as HTTP does (an ``email.message.Message``).
        """
        received_at = self.now()
        # Faults stand for the platform failing a request it accepted; one with a wrong or missing
        # token is refused first (reason 3 / 401) and must not use up a fault meant for a real
        # send. Unlocked peek at the queue: no token check and no lock when nothing is queued.
        fault = None
        if self._faults and self._authorized(headers.get("Authorization")):
            with self._lock:
                fault = self._faults.take(path, raw)
        self._acquire_slot()
        try:
            if self._latency > 0:
                time.sleep(self._latency)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            response = fault_response(fault) if fault is not None else None
            if response is None:
                response = self._route(method, path, headers, raw)
            entry = record(
                method,
                path,
                query,
                headers.items(),
                raw,
                received_at,
                response,
                client_port,
                token=self._token,
                authorized=self._authorized,
            )
            with self._lock:
                self._log.append(entry)
        finally:
            # Released before the answer is written: a client bounded to N requests in flight can
            # then never be seen as N + 1 (its next request may arrive before this thread resumes).
            self._release_slot()
        return response

    def _route(self, method: str, path: str, headers: Message, raw: bytes) -> Response:
        if path in (SEND_PATH, TEMPLATE_PATH):
            if method != "POST":
                return Response.json(
                    405, {"status": "FAIL", "message": "method not allowed"}, [("Allow", "POST")]
                )
            send = self._send_message if path == SEND_PATH else self._send_template
            try:
                if not self._authorized(headers.get("Authorization")):
                    raise Refusal(Reason.BAD_TOKEN)  # before anything else, as the vendor does
                return Response.json(200, send(raw))
            except Refusal as refusal:
                return refusal.response()
        if path.startswith(endpoints.TEMPLATES_PREFIX):
            if method != "GET":
                return Response.json(
                    405, {"success": False, "message": "method not allowed"}, [("Allow", "GET")]
                )
            return self._get_templates(headers, path[len(endpoints.TEMPLATES_PREFIX) :])
        return Response.json(404, {"status": "FAIL", "message": f"no such endpoint: {method} {path}"})

    def _send_message(self, raw: bytes) -> dict[str, Any]:
        data, sender, to = endpoints.read_send(raw, self._senders)
        body, reply_to = endpoints.read_message(data)
        with self._lock:
            now = self._now()
            contact = self._contact(sender, to)
            if contact.last_inbound is None:
                # Never wrote: either a brand-new contact, or only templates went out so far.
                raise Refusal(Reason.WINDOW_CLOSED if contact.messaged else Reason.FIRST_CONTACT)
            if now >= contact.last_inbound + WINDOW:
                raise Refusal(Reason.WINDOW_CLOSED)
            return self._accept(contact, now, sender, to, body, {"kind": "message", "replyTo": reply_to})

    def _send_template(self, raw: bytes) -> dict[str, Any]:
        data, sender, to = endpoints.read_send(raw, self._senders)
        name, header_type, link, variables = endpoints.read_template(data)
        with self._lock:
            text = render(self._templates.sendable(name), variables)
            extra = {
                "kind": "template",
                "template": name,
                "variables": [str(variables[i]) for i in sorted(variables)],
                "headerType": header_type,
                "headerLink": link,
            }
            return self._accept(self._contact(sender, to), self._now(), sender, to, text, extra)

    def _get_templates(self, headers: Message, rest: str) -> Response:
        if not self._authorized(headers.get("Authorization")):
            return Response.json(401, {"success": False, "message": "Unauthorized"})
        wanted = endpoints.read_listing_path(rest)
        if wanted is None:
            return Response.json(404, {"success": False, "message": "not found"})
        phone, template_id = wanted
        if phone not in self._senders:
            return Response.json(200, {"success": False, "message": "phone not found"})
        templates = self.templates
        if template_id is not None:
            templates = [t for t in templates if t["templateId"] == template_id]
        return Response.json(200, {"success": True, "templates": templates})

    def _contact(self, sender: str, number: str) -> Contact:  # lock held
        key = (sender, number)
        contact = self._contacts.get(key)
        if contact is None:
            contact = self._contacts[key] = Contact()
        return contact

    def _accept(
        self,
        contact: Contact,
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
            "templateTimeLeft": str(minutes_left(contact.last_inbound, now)),
            "conversationTimeLeft": str(minutes_left(contact.conversation_start, now)),
            "reason": int(Reason.OK),
        }
