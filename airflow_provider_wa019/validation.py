"""Checks of message arguments, run before any request is sent.

Number parsing uses the ``phonenumbers`` library, imported on first use: its metadata costs
about 20 ms to load and DAG files import the operator at every parse.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from airflow_provider_wa019.api import MAX_BODY_CHARS
from airflow_provider_wa019.exceptions import WhatsAppValidationError

# What people write around digits: "+972 (50) 123-4567", "050.123.4567".
_DECORATION = re.compile(r"[\s\-().]")
_PLAUSIBLE = re.compile(r"\+?\d+")


def normalize_number(value: Any, *, field: str = "to", region: str | None = None) -> str:
    """Return ``value`` as international digits without ``+`` (``972501234567``).

    Accepts ``+``, ``00``, spaces, dashes, dots and parentheses. Numbers without a country code
    (``050-123-4567``) need ``region`` (e.g. ``"IL"``). Checks that the number is *possible*
    (right length for its country), not that it is *valid*: phonenumbers' range tables lag
    reality and would refuse real recipients.

    :raises WhatsAppValidationError: naming ``field`` and the value.
    """
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise WhatsAppValidationError(
            field, value, f"expected a phone number string, got {type(value).__name__}"
        )
    raw = str(value).strip()
    if not raw:
        raise WhatsAppValidationError(field, value, "empty phone number")
    compact = _DECORATION.sub("", raw)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _PLAUSIBLE.fullmatch(compact):
        raise WhatsAppValidationError(
            field, value, "a phone number may hold only digits, a leading '+', spaces, dashes and parentheses"
        )
    result = _normalize(compact, region.upper() if region else None)
    if result is None:
        hint = (
            ""
            if region or compact.startswith("+")
            else " (a local number needs default_region, or write it with +country code)"
        )
        raise WhatsAppValidationError(field, value, f"not a possible phone number{hint}")
    return result


@lru_cache(maxsize=4096)
def _normalize(compact: str, region: str | None) -> str | None:
    import phonenumbers

    intl = ("+" + compact.lstrip("+"), None)
    if compact.startswith("+") or not region:
        # Bare digits are international digits, the API's own format.
        candidates = [intl]
    else:
        # Local forms begin with the region's trunk prefix ("0" in IL): read those nationally,
        # other bare digits internationally first. Regions without a trunk prefix (US) read
        # nationally first; phonenumbers strips their own country code when present.
        trunk = phonenumbers.PhoneMetadata.metadata_for_region(region).national_prefix
        national = (compact, region)
        candidates = [national, intl] if not trunk or compact.startswith(trunk) else [intl, national]
    for text, reg in candidates:
        try:
            number = phonenumbers.parse(text, reg)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    return None


def validate_region(region: Any) -> str | None:
    """Check a ``default_region`` setting: an ISO 3166 two-letter code phonenumbers knows."""
    if region in (None, ""):
        return None
    import phonenumbers

    if not isinstance(region, str) or region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise WhatsAppValidationError(
            "default_region", region, "expected a two-letter region code such as 'IL'"
        )
    return region.upper()


def validate_body(body: Any, *, field: str = "body", limit: int = MAX_BODY_CHARS) -> str:
    """A message text: a non-blank string of at most ``limit`` characters."""
    if not isinstance(body, str):
        raise WhatsAppValidationError(field, body, f"expected text, got {type(body).__name__}")
    if not body.strip():
        raise WhatsAppValidationError(field, body, "the message text is empty")
    if len(body) > limit:
        raise WhatsAppValidationError(field, body, f"{len(body)} characters, WhatsApp allows at most {limit}")
    return body


def validate_optional_text(value: Any, *, field: str) -> str | None:
    """An optional string argument (``reply_to``): None, or a non-blank string."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise WhatsAppValidationError(field, value, "expected a non-empty string or None")
    return value.strip()


def mask_number(number: str) -> str:
    """A number for log lines: everything but the last 4 digits hidden."""
    return "*" * max(len(number) - 4, 0) + number[-4:]
