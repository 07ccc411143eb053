"""Recipients of a bulk send: the operator's ``recipients`` argument -> distinct :class:`Recipient`
objects, malformed entries kept as invalid (reported, never sent)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_wa019.exceptions import WhatsAppValidationError
from airflow_provider_wa019.validation import normalize_number

__all__ = ["Recipient", "parse_recipients"]


@dataclass(frozen=True, slots=True)  # slots: a 100,000-recipient list holds 100,000 of them
class Recipient:
    """One distinct recipient of a bulk send.

    :ivar key: what XCom ``results`` is keyed by: the normalized number (``972501234567``), or for
        an invalid entry its raw ``to`` (or ``recipients[i]`` when it has none).
    :ivar number: the normalized number; None when the entry is invalid.
    :ivar values: the entry's own values (``to`` included), top-level names in the body template.
    :ivar error: why the entry is invalid (None when valid).
    """

    key: str
    number: str | None
    values: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


def parse_recipients(raw: Any, *, region: str | None = None) -> tuple[list[Recipient], int]:
    """Turn the operator's ``recipients`` into distinct recipients, in order.

    ``raw`` is a list (or tuple) whose items are numbers (``"+972 50-123-4567"``) or dicts with a
    ``to`` and any other values. A text of such a list is accepted too, as JSON or as a Python
    literal: without ``render_template_as_native_obj``, Jinja renders ``"{{ params.lst }}"`` or an
    ``xcom_pull`` to the list's repr (``"['972501234567', {'to': '972...', 'name': 'Dana'}]"``).
    Entries whose number cannot be read become invalid recipients. A number listed twice is sent
    once (the first entry wins).

    :return: the recipients and how many duplicate entries were dropped.
    :raises ValueError: ``raw`` is not a list of recipients at all.
    """
    if isinstance(raw, str):
        raw = _list_from_text(raw)
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise ValueError(f"recipients must be a list of numbers or dicts, got {type(raw).__name__}")
    recipients: dict[str, Recipient] = {}
    duplicates = 0
    for index, item in enumerate(raw):
        recipient = _parse_one(index, item, region)
        if recipient.key in recipients:
            duplicates += 1
            continue
        recipients[recipient.key] = recipient
    return list(recipients.values()), duplicates


def _list_from_text(text: str) -> list[Any] | tuple[Any, ...]:
    """The list a rendered ``recipients`` text holds: JSON first, then a Python literal (never
    evaluated as code: ``ast.literal_eval`` builds only literals)."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        parsed = None
    if parsed is None and text.strip().startswith(("[", "(")):
        try:
            parsed = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: a literal that cannot be built, such as a dict keyed by a list.
            parsed = None
    if isinstance(parsed, (list, tuple)):
        return parsed
    raise ValueError(
        "recipients is a string, not a list: pass the upstream XComArg itself "
        "(recipients=my_task()), or a text of a list (JSON, or a Python literal as Jinja renders one)"
    )


def _parse_one(index: int, item: Any, region: str | None) -> Recipient:
    if isinstance(item, Mapping):
        values = item  # not copied: rendering only reads it, and a big list would be held twice
        to = values.get("to")
        if to is None or to == "":
            return Recipient(f"recipients[{index}]", None, values, "a recipient dict needs a 'to' number")
    else:
        to = item
        values = {"to": item}
    try:
        number = normalize_number(to, field="to", region=region)
    except WhatsAppValidationError as err:
        readable = isinstance(to, (str, int)) and not isinstance(to, bool) and str(to).strip()
        return Recipient(str(to) if readable else f"recipients[{index}]", None, values, str(err))
    return Recipient(number, number, values)
