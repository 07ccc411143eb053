"""Reading the API's requests: which endpoint a path is, and the fields of each send, checked.

The checks are the vendor's, in the vendor's order after the token (reason 3, the model's):
the body is a JSON object and ``from`` an account (2), ``to`` is digits (4), then the
endpoint's own fields: a free-form ``body`` (5, or 2 when too long), a template's ``name``,
``headerType``/``headerLink`` and ``bodyVariableN`` (2). Each refusal is a
:class:`~airflow_provider_wa019.testing.records.Refusal`.

Pure functions of the request: what the platform then decides (windows, templates, faults) is
``model.py``'s. Paths, reason codes, limits and header types come from
:mod:`airflow_provider_wa019.api`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from airflow_provider_wa019.api import (
    HEADER_NONE,
    HEADER_TYPES,
    MAX_BODY_CHARS,
    MEDIA_HEADER_TYPES,
    TEMPLATES_PATH,
    Reason,
)
from airflow_provider_wa019.testing.checks import NUMBER_RE
from airflow_provider_wa019.testing.records import Refusal, json_or_none

#: The template listing's path up to the sender's number.
TEMPLATES_PREFIX = TEMPLATES_PATH.split("{phone}", 1)[0]
_VARIABLE_KEY_RE = re.compile(r"bodyVariable([0-9]+)")
_HTTPS = "https://"
# "1, 3, 4 or 5"
_HEADER_TYPES_TEXT = " or ".join(
    [", ".join(str(t) for t in sorted(HEADER_TYPES)[:-1]), str(max(HEADER_TYPES))]
)


def read_send(raw: bytes, senders: Collection[str]) -> tuple[dict[str, Any], str, str]:
    """``(data, sender, to)`` of a send's body: a JSON object (2), a known sender (2), a
    recipient in digits (4)."""
    data = json_or_none(raw)  # the platform answers reason 2 to any bad JSON
    if not isinstance(data, dict):
        raise Refusal(Reason.BAD_SENDER_OR_JSON, "the request body is not a JSON object")
    sender = data.get("from")
    if not isinstance(sender, str) or sender not in senders:
        raise Refusal(Reason.BAD_SENDER_OR_JSON, f"the 'from' account {sender!r} does not exist")
    to = data.get("to")
    if not isinstance(to, str) or not NUMBER_RE.fullmatch(to):
        raise Refusal(Reason.BAD_RECIPIENT, f"'to' is empty or not 8-15 digits: {to!r}")
    return data, sender, to


def read_message(data: Mapping[str, Any]) -> tuple[str, str | None]:
    """``(body, replyTo)`` of a free-form send."""
    body = data.get("body")
    if not isinstance(body, str) or not body.strip():
        raise Refusal(Reason.EMPTY_BODY)
    if len(body) > MAX_BODY_CHARS:
        raise Refusal(
            Reason.BAD_SENDER_OR_JSON, f"'body' has {len(body)} characters; at most {MAX_BODY_CHARS}"
        )
    reply_to = data.get("replyTo")
    if reply_to is not None and not isinstance(reply_to, str):
        raise Refusal(Reason.BAD_SENDER_OR_JSON, "'replyTo' must be a string")
    return body, reply_to


def read_template(data: Mapping[str, Any]) -> tuple[str, int, str | None, dict[int, Any]]:
    """``(name, headerType, headerLink, {n: bodyVariable<n>})`` of a template send.

    ``headerLink`` is None without a media header; null variables count as absent. Whether the
    template exists and takes these variables is the model's to say.
    """
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise Refusal(Reason.BAD_SENDER_OR_JSON, "'name' (the template name) is required")
    given = data.get("headerType", HEADER_NONE)
    header_type = _header_type(given)
    if header_type is None:
        raise Refusal(Reason.BAD_SENDER_OR_JSON, f"bad headerType {given!r:.40}")
    if header_type not in HEADER_TYPES:
        raise Refusal(Reason.BAD_SENDER_OR_JSON, f"bad headerType {header_type!r} ({_HEADER_TYPES_TEXT})")
    link = data.get("headerLink")
    if header_type in MEDIA_HEADER_TYPES:
        if not isinstance(link, str) or not link.startswith(_HTTPS) or len(link) <= len(_HTTPS):
            raise Refusal(Reason.BAD_SENDER_OR_JSON, f"headerType {header_type} needs an https 'headerLink'")
    else:
        link = None
    variables: dict[int, Any] = {}
    for key, value in data.items():
        match = _VARIABLE_KEY_RE.fullmatch(key)
        if match and value is not None:
            variables[int(match.group(1))] = value
    return name, header_type, link, variables


def read_listing_path(rest: str) -> tuple[str, str | None] | None:
    """``(phone, templateId or None)`` of the listing path after :data:`TEMPLATES_PREFIX`, or
    None when it is no listing path (a 404)."""
    parts = rest.split("/")
    if not 1 <= len(parts) <= 2 or not all(parts):
        return None
    return parts[0], parts[1] if len(parts) == 2 else None


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
