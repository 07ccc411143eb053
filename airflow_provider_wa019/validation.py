"""Checks of message arguments, run before any request is sent.

Number parsing uses the ``phonenumbers`` library, imported on first use: its metadata costs
about 20 ms to load and DAG files import the operator at every parse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_wa019.api import (
    HEADER_NONE,
    HEADER_TYPES,
    MAX_BODY_CHARS,
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_VARIABLES,
    MEDIA_HEADER_TYPES,
    WhatsAppTemplate,
)
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
    result = _normalize(compact, validate_region(region))  # an unknown region: a typed error
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


def validate_template_name(name: Any, *, field: str = "template") -> str:
    """A template name: a non-blank string (the API sends templates by name)."""
    if not isinstance(name, str) or not name.strip():
        raise WhatsAppValidationError(field, name, "expected a template name or a WhatsAppTemplate")
    return name.strip()


def validate_template_variables(variables: Any, *, field: str = "variables") -> tuple[str, ...]:
    """Values for ``{{1}}`` ... ``{{10}}``: a list or tuple of at most 10 non-blank texts.

    Numbers are accepted and sent as text; None, booleans, blank strings and nested values are
    refused (WhatsApp would refuse the whole template, or show the client "None").
    """
    if variables is None:
        return ()
    if isinstance(variables, (str, bytes)) or not isinstance(variables, Sequence):
        raise WhatsAppValidationError(
            field, variables, f"expected a list of texts, got {type(variables).__name__}"
        )
    if len(variables) > MAX_TEMPLATE_VARIABLES:
        raise WhatsAppValidationError(
            field, variables, f"{len(variables)} values; a template takes at most {MAX_TEMPLATE_VARIABLES}"
        )
    result = []
    for number, value in enumerate(variables, start=1):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise WhatsAppValidationError(
                f"{field}[{number - 1}]",
                value,
                f"expected text for {{{{{number}}}}}, got {type(value).__name__}",
            )
        text = str(value)
        if not text.strip():
            raise WhatsAppValidationError(
                f"{field}[{number - 1}]", value, f"empty value for {{{{{number}}}}}"
            )
        result.append(text)
    return tuple(result)


def validate_header(header_type: Any, header_link: Any) -> tuple[int, str | None]:
    """``headerType`` and ``headerLink``: 1 (none, the default) or 3/4/5 (image, video, document)
    with an ``https://`` link to the media. Digit strings (from templated fields) are accepted."""
    if header_type is None or header_type == "":
        header_type = HEADER_NONE
    elif isinstance(header_type, str) and header_type.strip().isdigit():
        header_type = int(header_type)
    if isinstance(header_type, bool) or not isinstance(header_type, int) or header_type not in HEADER_TYPES:
        raise WhatsAppValidationError(
            "header_type", header_type, "expected 1 (none), 3 (image), 4 (video) or 5 (document)"
        )
    if header_type not in MEDIA_HEADER_TYPES:
        if header_link not in (None, ""):
            raise WhatsAppValidationError(
                "header_link", header_link, "a link needs header_type 3 (image), 4 (video) or 5 (document)"
            )
        return header_type, None
    if not isinstance(header_link, str):
        raise WhatsAppValidationError(
            "header_link", header_link, f"header_type {header_type} needs an https link"
        )
    link = header_link.strip()
    parts = urlsplit(link)
    if parts.scheme != "https" or not parts.hostname:
        raise WhatsAppValidationError(
            "header_link", header_link, f"header_type {header_type} needs an https:// link to the media"
        )
    return header_type, link


def validate_template_fit(
    template: WhatsAppTemplate, variables: Sequence[str], *, field: str = "variables"
) -> None:
    """Check values against a template whose body is known: sendable status, one value per
    placeholder, and the filled-in text within 1024 characters."""
    if not template.sendable:
        raise WhatsAppValidationError(
            "template",
            template.name,
            f"its status is {template.status!r}; only approved templates can be sent",
        )
    if template.body is None:
        return
    if len(variables) != template.variable_count:
        raise WhatsAppValidationError(
            field,
            list(variables),
            f"template {template.name!r} takes {template.variable_count} value(s), got {len(variables)}",
        )
    text = template.render(variables) or ""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise WhatsAppValidationError(
            field,
            list(variables),
            f"template {template.name!r} with these values has {len(text)} characters; "
            f"at most {MAX_TEMPLATE_CHARS}",
        )


def mask_number(number: str) -> str:
    """A number for log lines: everything but the last 4 digits hidden."""
    return "*" * max(len(number) - 4, 0) + number[-4:]
