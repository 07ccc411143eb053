"""The 019sms WhatsApp API contract: paths, field names, reason codes and limits.

One module both the hook (client side) and the simulator (server side) read, so the two cannot
drift apart. Pure Python: no Airflow, no HTTP library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pendulum

# Part of the contract, kept in constants.py (which imports nothing) and re-exported here.
from airflow_provider_wa019.constants import REASON_MEANINGS, Reason, reason_meaning  # noqa: F401
from airflow_provider_wa019.exceptions import EXCERPT_CHARS, WhatsAppAPIError, WhatsAppResponseError

if TYPE_CHECKING:
    from pendulum import DateTime, Duration

DEFAULT_BASE_URL = "https://019sms.co.il"
#: Free-form message (the vendor's "Send Message" page).
SEND_PATH = "/api/whatsapp/sendMessage"
#: Approved template message, same ``from``/``to`` dialect.
TEMPLATE_PATH = "/api/whatsapp/sendTemplate"
#: Read-only template listing; ``{phone}`` is the sender account. Sends nothing.
TEMPLATES_PATH = "/whatsapp-api/get-phone-templates/{phone}"

#: WhatsApp caps a text message at 4096 characters.
MAX_BODY_CHARS = 4096
#: A template body with its variables filled in may not exceed 1024 characters.
MAX_TEMPLATE_CHARS = 1024
#: Templates take ``bodyVariable1`` ... ``bodyVariable10``.
MAX_TEMPLATE_VARIABLES = 10

#: A ``unique`` message id is at most this long (the API's are 32 hex digits); also bounds
#: ``replyTo``.
MAX_UNIQUE_CHARS = 128

#: ``headerType`` values of the template endpoint.
HEADER_NONE = 1
HEADER_IMAGE = 3
HEADER_VIDEO = 4
HEADER_DOCUMENT = 5
MEDIA_HEADER_TYPES = frozenset({HEADER_IMAGE, HEADER_VIDEO, HEADER_DOCUMENT})
HEADER_TYPES = frozenset({HEADER_NONE}) | MEDIA_HEADER_TYPES

#: ``{{1}}`` ... ``{{10}}`` in a template body; WhatsApp numbers them from 1 without gaps.
PLACEHOLDER_RE = re.compile(r"\{\{\s*([0-9]+)\s*\}\}")
#: Meta's template statuses that cannot be sent (compared case-insensitively). Anything else,
#: including a status this list does not know, is left for the API to judge.
UNSENDABLE_TEMPLATE_STATUSES = frozenset(
    {
        "pending",
        "rejected",
        "paused",
        "disabled",
        "in_appeal",
        "pending_deletion",
        "deleted",
        "limit_exceeded",
    }
)


# --- Requests -------------------------------------------------------------------------------


def send_payload(sender: str, to: str, body: str, reply_to: str | None = None) -> dict[str, str]:
    """The JSON body of a free-form send, from already validated values."""
    payload = {"from": sender, "to": to, "body": body}
    if reply_to is not None:
        payload["replyTo"] = reply_to
    return payload


def template_payload(
    sender: str,
    to: str,
    name: str,
    variables: Sequence[str] = (),
    header_type: int = HEADER_NONE,
    header_link: str | None = None,
) -> dict[str, Any]:
    """The JSON body of a template send, from already validated values.

    ``headerType`` is always sent (1 when there is no media header); ``headerLink`` only with a
    media header; ``bodyVariable1`` ... ``bodyVariableN`` fill ``{{1}}`` ... ``{{N}}``.
    """
    payload: dict[str, Any] = {"from": sender, "to": to, "name": name, "headerType": header_type}
    if header_link is not None:
        payload["headerLink"] = header_link
    for number, value in enumerate(variables, start=1):
        payload[f"bodyVariable{number}"] = value
    return payload


#: What people write around the digits of a number: "+972 (50) 123-4567", "050.123.4567".
NUMBER_DECORATION_RE = re.compile(r"[\s\-().]")
#: Meta refuses a template body variable with a new line or a tab, or with more than 4 spaces in a
#: row (Cloud API error 132018); the whole template send then fails.
_VARIABLE_REFUSED_RE = re.compile(r"[\r\n\t\v\f\x85\u2028\u2029]| {5,}")


def compact_number(value: str) -> str:
    """``value`` without decoration, with a leading ``00`` written as ``+`` ("+972501234567").

    Only the spelling is changed; whether the result is a possible number is not checked here.
    """
    compact = NUMBER_DECORATION_RE.sub("", value.strip())
    return "+" + compact[2:] if compact.startswith("00") else compact


class E164Digits(str):
    """A number as international digits (``"972501234567"``) that is known to be international:
    what :func:`~airflow_provider_wa019.validation.normalize_number` returns, and the numbers the
    platform writes (an inbound message's ``from`` and ``to``). A plain ``str`` otherwise.

    Sends take one as it is. Plain digits are read in the connection's ``default_region`` (as a
    national number), and reading already-international digits so would change the country:
    ``"972501234567"`` in DE is +49 972501234567. It also spares a bulk send a second parse of
    every recipient.
    """

    __slots__ = ()


def template_variable_problem(value: str) -> str | None:
    """Why WhatsApp would refuse ``value`` as a template body variable, or None if it would not.

    The client, the simulator and the notifier all ask this one function.
    """
    match = _VARIABLE_REFUSED_RE.search(value)
    if match is None:
        return None
    if match.group(0).startswith(" "):
        return "WhatsApp refuses more than 4 spaces in a row in a template variable"
    return "WhatsApp refuses a new line or a tab in a template variable"


def collapse_whitespace(text: str) -> str:
    """``text`` with every run of whitespace (new lines and tabs included) made one space, so it fits
    a template variable (see :func:`template_variable_problem`)."""
    return " ".join(text.split())


def fill_template(body: str, variables: Sequence[str]) -> str:
    """``body`` with ``{{n}}`` replaced by ``variables[n - 1]`` (placeholders without a value stay)."""

    def value(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return variables[index - 1] if 1 <= index <= len(variables) else match.group(0)

    return PLACEHOLDER_RE.sub(value, body)


def count_placeholders(body: str) -> int:
    """How many variables a template body takes: its highest ``{{n}}`` (0 when none)."""
    return max((int(n) for n in PLACEHOLDER_RE.findall(body)), default=0)


# --- Inbound messages (the webhook) ---------------------------------------------------------
# The platform POSTs one client message per request as a JSON object (99digital's documented
# format for this dialect; see the README's "Receiving messages"). The receiver parses it with
# parse_inbound and the simulator builds it with inbound_payload: one format, in one place.

#: Fields without which a delivery is refused (HTTP 400): the id, the client, the kind.
INBOUND_REQUIRED_FIELDS = ("unique", "from", "type")
#: A delivery's body is at most this many bytes (HTTP 413 above).
MAX_INBOUND_BYTES = 64 * 1024
#: The client's window for free-form messages: 24 h from their last message (the seed's rule).
WINDOW_SECONDS = 24 * 60 * 60
#: ``hook`` of a client message; other values (status notices) are kept as they came.
HOOK_NEW_MESSAGE = "new"


class InboundError(ValueError):
    """A delivery that is not a client message in the documented format (the receiver's 400)."""


@dataclass(frozen=True)
class InboundMessage:
    """One message a client sent to the account, as the webhook received it. Immutable.

    :ivar unique: the platform's id of the message; quote it with ``reply_to=unique``.
    :ivar sender: the client's number, normalised to international digits (``972507654321``).
    :ivar to: the account (business) number it was sent to, digits; None if absent.
    :ivar type: ``text``, ``image``, ``audio``, ``video``, ``ptt``, ``document``, ``location``,
        ``button``, ``list``, ``contacts``, ``reaction``, ``order``, or what the platform sent.
    :ivar body: the text (for media: a link to it; ``location``: ``"lat,lng"``), or None.
    :ivar caption: a media caption, or None.
    :ivar timestamp: when the client sent it (UTC); the receipt time if the platform gave none.
    :ivar quote_unique: the ``unique`` of our message the client quoted, or None.
    :ivar sender_name: the client's profile name, or None.
    :ivar raw: the delivery as decoded (unknown fields kept), read-only.
    """

    unique: str
    sender: str
    to: str | None
    type: str
    body: str | None
    caption: str | None
    timestamp: DateTime
    quote_unique: str | None = None
    sender_name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))
        # The platform's numbers are international: a reply must not read them in a region (also
        # when the message came back from XCom or an asset event as plain strings).
        for name in ("sender", "to"):
            value = getattr(self, name)
            if isinstance(value, str) and (digits := international_digits(value)) is not None:
                object.__setattr__(self, name, digits)

    @property
    def window_closes_at(self) -> DateTime:
        """When the client's 24 h free-form window opened by this message closes."""
        return self.timestamp.add(seconds=WINDOW_SECONDS)

    def window_open(self, now: DateTime | None = None) -> bool:
        """Whether a free-form message to the client is allowed now, judged by this message
        alone (a later message of the client's extends the window; the API has the last word)."""
        return (now or pendulum.now("UTC")) < self.window_closes_at

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the asset event's ``extra`` (and read back by :meth:`from_dict`)."""
        return {
            "unique": self.unique,
            "sender": self.sender,
            "to": self.to,
            "type": self.type,
            "body": self.body,
            "caption": self.caption,
            "timestamp": self.timestamp.isoformat(),
            "quote_unique": self.quote_unique,
            "sender_name": self.sender_name,
            "raw": dict(self.raw),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InboundMessage:
        """The message of :meth:`to_dict`'s form (an asset event's ``extra``)."""
        stamp = pendulum.parse(str(data["timestamp"]))
        return cls(
            unique=str(data["unique"]),
            sender=str(data["sender"]),
            to=_text(data.get("to")),
            type=str(data["type"]),
            body=_text(data.get("body")),
            caption=_text(data.get("caption")),
            timestamp=stamp.in_timezone("UTC"),  # type: ignore[union-attr]
            quote_unique=_text(data.get("quote_unique")),
            sender_name=_text(data.get("sender_name")),
            raw=data.get("raw") or {},
        )


def parse_inbound(data: Any, *, received_at: DateTime | None = None) -> InboundMessage:
    """A webhook delivery (decoded JSON) as an :class:`InboundMessage`.

    Numbers are normalised the way the API writes them (international digits). Unknown fields
    stay in ``raw``.

    :raises InboundError: not a JSON object, or ``unique``/``from``/``type`` missing or unusable.
    """
    if not isinstance(data, Mapping):
        raise InboundError("the body must be a JSON object")
    missing = [name for name in INBOUND_REQUIRED_FIELDS if data.get(name) in (None, "", False)]
    if missing:
        raise InboundError(f"missing field(s): {', '.join(missing)}")
    unique = data["unique"]
    if (
        isinstance(unique, bool)
        or not isinstance(unique, (str, int))
        or not _UNIQUE_RE.fullmatch(str(unique))
    ):
        raise InboundError(f"'unique' is not a message id (1 to {MAX_UNIQUE_CHARS} characters, no spaces)")
    sender = international_digits(data["from"])
    if sender is None:
        raise InboundError("'from' is not a phone number")
    kind = data["type"]
    if not isinstance(kind, str) or not kind.strip() or len(kind) > 32:
        raise InboundError("'type' is not a message type")
    quoted = data.get("quoteUnique")
    return InboundMessage(
        unique=str(unique),
        sender=sender,
        to=international_digits(data.get("to")),
        type=kind.strip(),
        body=_text_field(data.get("body")),
        caption=_text_field(data.get("caption")),
        timestamp=_timestamp(data.get("timestamp")) or received_at or pendulum.now("UTC"),
        quote_unique=str(quoted)
        if isinstance(quoted, (str, int)) and not isinstance(quoted, bool) and str(quoted)
        else None,
        sender_name=_text_field(data.get("senderName")),
        raw=data,
    )


def inbound_payload(
    *,
    unique: str,
    sender: str,
    to: str,
    body: str,
    type: str = "text",
    timestamp: DateTime,
    quote_unique: str | None = None,
    sender_name: str | None = None,
    caption: str | None = None,
) -> dict[str, Any]:
    """The JSON body the platform POSTs for one client message (what the simulator delivers)."""
    return {
        "status": "OK",
        "hook": HOOK_NEW_MESSAGE,
        "unique": unique,
        "from": sender,
        "from_id": f"XX.{sender.zfill(16)[-16:]}",  # stable per client, as the platform's is
        "username": None,
        "country": None,
        "phone": sender,
        "to": to,
        "senderName": sender_name,
        "type": type,
        "body": body,
        "caption": caption if caption is not None else False,
        "isForwarded": False,
        "timestamp": str(int(timestamp.timestamp())),
        "media": type not in ("text", "button", "list", "location", "contacts", "reaction"),
        "quote": quote_unique is not None,
        "quoteUnique": quote_unique if quote_unique is not None else False,
        "profilePic": None,
        "conversationTimeLeft": "1440",
    }


def international_digits(value: Any) -> str | None:
    """``value`` as international digits when it reads as one (``"+972 50-123-4567"`` ->
    ``"972501234567"``), else None. The platform writes numbers so; the spellings people use are
    accepted too. No region, no phonenumbers: for what the platform and its clients send."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if type(value) is E164Digits:
        return value
    digits = compact_number(str(value)).lstrip("+")
    return E164Digits(digits) if digits.isascii() and digits.isdigit() and 6 <= len(digits) <= 15 else None


def _text_field(value: Any) -> str | None:
    # The platform writes false for "none" (caption, quoteUnique).
    if value is None or value is False:
        return None
    return str(value)


# --- Responses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    """What the API answered for an accepted message (``reason`` 1). Immutable.

    :ivar unique: the message id; also the ``replyTo`` value of a later quoted reply.
    :ivar timestamp: when the API accepted the message (UTC), or None if it did not say.
    :ivar template_time_left: time left of the 24 h free-form window (since the client's last
        message); None if not reported.
    :ivar conversation_time_left: time left of the billed 24 h conversation; None if not reported.
    :ivar raw: the decoded response body, read-only.
    """

    unique: str
    reason: int
    status: str | None
    to: str | None
    sender: str | None
    body: str | None
    raw: Mapping[str, Any] = field(repr=False)

    # Read from ``raw`` when first asked for: a bulk send never asks, and making pendulum
    # objects for every answer was a tenth of its event loop's time.
    @cached_property
    def timestamp(self) -> DateTime | None:
        """When the API accepted the message (UTC), or None if it did not say."""
        return _timestamp(self.raw.get("timestamp"))

    @cached_property
    def template_time_left(self) -> Duration | None:
        """Time left of the 24 h free-form window; None if not reported."""
        return _duration(self.raw.get("templateTimeLeft"))

    @cached_property
    def conversation_time_left(self) -> Duration | None:
        """Time left of the billed 24 h conversation; None if not reported."""
        return _duration(self.raw.get("conversationTimeLeft"))

    def __repr__(self) -> str:
        return (
            f"SendResult(unique={self.unique!r}, reason={self.reason!r}, status={self.status!r}, "
            f"to={self.to!r}, sender={self.sender!r}, body={self.body!r}, "
            f"timestamp={self.timestamp!r}, template_time_left={self.template_time_left!r}, "
            f"conversation_time_left={self.conversation_time_left!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, as pushed to XCom (durations in whole minutes)."""
        return {
            "unique": self.unique,
            "reason": self.reason,
            "status": self.status,
            "to": self.to,
            "sender": self.sender,
            "body": self.body,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "template_time_left_minutes": _minutes(self.template_time_left),
            "conversation_time_left_minutes": _minutes(self.conversation_time_left),
            # Small, whatever the API sent: XCom rows live in the metadata DB.
            "raw": compact_json(self.raw),
        }


@dataclass(frozen=True)
class WhatsAppTemplate:
    """One approved (or pending...) template of the account, as the template listing describes it.

    Pass it to :meth:`~airflow_provider_wa019.hooks.whatsapp.WhatsAppHook.send_template` instead
    of the bare name and the variables are checked against its body before anything is sent.

    :ivar template_id: the vendor's ``templateId``.
    :ivar name: what a template send names (``name``).
    :ivar language: e.g. ``"he"``, ``"en_US"``; None if not reported.
    :ivar body: the text with ``{{1}}`` ... ``{{10}}`` placeholders; None if not reported.
    :ivar status: e.g. ``"approved"``; None if not reported.
    :ivar variable_count: values the body takes (its highest placeholder number; 0 without a body).
    :ivar raw: the listing's entry as decoded (footer, buttons, category...), read-only.
    """

    template_id: str
    name: str
    language: str | None
    body: str | None
    status: str | None
    variable_count: int = field(init=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived, not passed: it can never disagree with the body.
        object.__setattr__(self, "variable_count", count_placeholders(self.body or ""))
        object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))

    @property
    def sendable(self) -> bool:
        """False when the status says the template cannot be sent (pending, rejected...)."""
        return (self.status or "").strip().lower() not in UNSENDABLE_TEMPLATE_STATUSES

    def render(self, variables: Sequence[str]) -> str | None:
        """The message text the client would read with these variables (None without a body)."""
        return None if self.body is None else fill_template(self.body, variables)


def parse_templates_response(
    http_status: int, content: bytes, *, scrub: Callable[[str], str] | None = None
) -> list[WhatsAppTemplate]:
    """Turn a get-phone-templates answer into template objects.

    :raises WhatsAppAPIError: ``success`` is not true (reason 2: the phone is not an account of
        this token, unless the answer names its own ``reason``).
    :raises WhatsAppResponseError: the body is not the documented JSON.
    """
    data = decode_json_object(http_status, content, scrub=scrub)
    if data.get("success") is not True:
        message = data.get("message")
        reason = _reason(data.get("reason")) or Reason.BAD_SENDER_OR_JSON
        raise WhatsAppAPIError(
            reason,
            response=compact_json(data),
            http_status=http_status,
            detail=f"template listing: {message}" if isinstance(message, str) else "template listing refused",
        )
    entries = data.get("templates")
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise WhatsAppResponseError("'templates' is not a list", http_status=http_status, body=content)
    templates = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise WhatsAppResponseError(
                f"a template entry has no name: {compact_json(entry)!r}"[:EXCERPT_CHARS],
                http_status=http_status,
                body=content,
            )
        body = entry.get("body")
        templates.append(
            WhatsAppTemplate(
                template_id=_text(entry.get("templateId", entry.get("id"))) or "",
                name=name,
                language=_text(entry.get("language")),
                body=body if isinstance(body, str) else None,
                status=_text(entry.get("status")),
                raw=entry,
            )
        )
    return templates


#: Documented answers are flat objects; one nested deeper than this is not the API's.
MAX_JSON_DEPTH = 16
#: What XCom ``response["raw"]`` and an error's ``response`` keep of an answer: strings cut to
#: ``EXCERPT_CHARS``, at most this many entries per object or list, this many levels.
_COMPACT_ITEMS = 40
_COMPACT_DEPTH = 3


def decode_json_object(
    http_status: int, content: bytes, *, scrub: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """Decode a response body that must be a JSON object.

    ``scrub`` is applied to every string of the decoded answer, keys included (the hook blanks
    its token with it: an echo may be JSON-escaped in the raw bytes, ``\\/`` or ``\\u0041``).

    :raises WhatsAppResponseError: not JSON, not an object, or nested deeper than
        :data:`MAX_JSON_DEPTH` (any failure to decode is an unexpected body).
    """
    if not content.strip():
        raise WhatsAppResponseError("empty body", http_status=http_status, body=content)
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." thousands deep
        raise WhatsAppResponseError("body is not JSON", http_status=http_status, body=content) from None
    if not isinstance(data, dict):
        raise WhatsAppResponseError(
            f"expected a JSON object, got a JSON {type(data).__name__}", http_status=http_status, body=content
        )
    try:
        return _walk(data, scrub)
    except RecursionError:
        raise WhatsAppResponseError(
            f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep",
            http_status=http_status,
            body=content,
        ) from None


def _walk(value: Any, scrub: Callable[[str], str] | None, depth: int = 0) -> Any:
    # Raises RecursionError (caught above) past MAX_JSON_DEPTH, so nothing downstream (XCom
    # serialisation, repr) ever recurses through a hostile answer.
    if isinstance(value, str):
        return scrub(value) if scrub is not None else value
    if isinstance(value, dict):
        if depth >= MAX_JSON_DEPTH:
            raise RecursionError
        return {_walk(k, scrub, depth): _walk(v, scrub, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        if depth >= MAX_JSON_DEPTH:
            raise RecursionError
        return [_walk(v, scrub, depth + 1) for v in value]
    return value


def compact_json(value: Any, depth: int = 0) -> Any:
    """A small copy of a decoded answer, for XCom and error attributes: long strings cut, long
    objects and lists shortened, deep levels dropped (an answer may be tens of kilobytes)."""
    if isinstance(value, str):
        return value if len(value) <= EXCERPT_CHARS else value[: EXCERPT_CHARS - 3] + "..."
    if isinstance(value, Mapping):
        if depth >= _COMPACT_DEPTH:
            return "{...}"
        items = list(value.items())
        out = {compact_json(str(k)): compact_json(v, depth + 1) for k, v in items[:_COMPACT_ITEMS]}
        if len(items) > _COMPACT_ITEMS:
            out["..."] = f"{len(items) - _COMPACT_ITEMS} more"
        return out
    if isinstance(value, (list, tuple)):
        if depth >= _COMPACT_DEPTH:
            return "[...]"
        out_list = [compact_json(v, depth + 1) for v in value[:_COMPACT_ITEMS]]
        if len(value) > _COMPACT_ITEMS:
            out_list.append(f"... {len(value) - _COMPACT_ITEMS} more")
        return out_list
    return value


def parse_send_response(
    http_status: int, content: bytes, *, scrub: Callable[[str], str] | None = None
) -> SendResult:
    """Turn a send (or template send) response into a :class:`SendResult`.

    :param scrub: applied to every string of the answer (see :func:`decode_json_object`).
    :raises WhatsAppAPIError: the API refused the message (``reason`` other than 1).
    :raises WhatsAppResponseError: the body is not the documented JSON.
    """
    data = decode_json_object(http_status, content, scrub=scrub)
    reason = _reason(data.get("reason"))
    if reason is None:
        raise WhatsAppResponseError(
            f"'reason' is missing or not an integer ({data.get('reason')!r})",
            http_status=http_status,
            body=content,
        )
    if reason != Reason.OK:
        detail = data.get("message") if isinstance(data.get("message"), str) else None
        raise WhatsAppAPIError(reason, response=compact_json(data), http_status=http_status, detail=detail)
    unique = data.get("unique")
    if isinstance(unique, int) and not isinstance(unique, bool) and unique >= 0:
        unique = str(unique)  # numbers as text are the API's habit; an id in digits is an id
    if not isinstance(unique, str) or not _UNIQUE_RE.fullmatch(unique):
        raise WhatsAppResponseError(
            f"reason 1 (sent) but 'unique' is not a message id (1 to {MAX_UNIQUE_CHARS} characters, "
            "no spaces or line breaks)",
            http_status=http_status,
            body=content,
        )
    return SendResult(
        unique=unique,
        reason=reason,
        status=_text(data.get("status")),
        to=_text(data.get("to")),
        sender=_text(data.get("from")),
        body=_text(data.get("body")),
        raw=MappingProxyType(data),
    )


# What a ``unique`` may be: it is quoted back as ``replyTo`` and shown in logs and XCom.
_UNIQUE_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_UNIQUE_CHARS}}}")


def _reason(value: Any) -> int | None:
    # The API sends numbers as strings elsewhere in the same body; accept "1" as 1.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # ASCII digits only ("²".isdigit() is true but int() refuses it), and a code-sized number.
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 20:
        return int(value)
    return None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _timestamp(value: Any) -> DateTime | None:
    try:
        return pendulum.from_timestamp(int(value), tz="UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _duration(value: Any) -> Duration | None:
    # Minutes, documented as strings ("400"); a negative or absurd timer is no timer.
    try:
        minutes = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return pendulum.duration(minutes=minutes) if 0 <= minutes <= _MAX_TIMER_MINUTES else None


# Both timers count down from 24 h; allow generous slack, refuse nonsense.
_MAX_TIMER_MINUTES = 7 * 24 * 60


def _minutes(value: Duration | None) -> int | None:
    return None if value is None else int(value.total_seconds() // 60)
