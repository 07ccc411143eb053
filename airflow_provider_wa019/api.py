"""The 019sms WhatsApp API contract: paths, field names, reason codes and limits.

One module both the hook (client side) and the simulator (server side) read, so the two cannot
drift apart. Pure Python: no Airflow, no HTTP library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    timestamp: DateTime | None
    template_time_left: Duration | None
    conversation_time_left: Duration | None
    raw: Mapping[str, Any] = field(repr=False)

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
            f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep", http_status=http_status, body=content
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
        timestamp=_timestamp(data.get("timestamp")),
        template_time_left=_duration(data.get("templateTimeLeft")),
        conversation_time_left=_duration(data.get("conversationTimeLeft")),
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
