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
    MAX_UNIQUE_CHARS,
    MEDIA_HEADER_TYPES,
    E164Digits,
    WhatsAppTemplate,
    compact_number,
    template_variable_problem,
)
from airflow_provider_wa019.exceptions import WhatsAppValidationError

_PLAUSIBLE = re.compile(r"\+?\d+")


def normalize_number(value: Any, *, field: str = "to", region: str | None = None) -> E164Digits:
    """Return ``value`` as international digits without ``+`` (``972501234567``).

    Accepts ``+``, ``00``, spaces, dashes, dots and parentheses. How digits without ``+`` or
    ``00`` are read depends on ``region`` (the connection's ``default_region``):

    * no region: they are international digits, the API's own format (``972501234567``);
    * a region (e.g. ``"IL"``, ``"US"``): they are that region's national number, with or without
      its trunk prefix (``050-123-4567`` in IL, ``(202) 555-0123`` in the US), or start with its
      international call prefix (``011 972 ...`` in the US). A number that is not possible in the
      region is refused, never guessed to be international: write it with ``+``.

    Checks that the number is *possible* (right length for its country), not that it is
    *valid*: phonenumbers' range tables lag reality and would refuse real recipients.

    An :class:`~airflow_provider_wa019.api.E164Digits` (what this function returns, or a number
    the platform wrote) is returned as it is, in any region: it is international already.

    :raises WhatsAppValidationError: naming ``field`` and the value.
    """
    if type(value) is E164Digits:
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise WhatsAppValidationError(
            field, value, f"expected a phone number string, got {type(value).__name__}"
        )
    if isinstance(value, int) and value < 0:
        raise WhatsAppValidationError(field, value, "a phone number cannot be negative")
    raw = str(value).strip()
    if not raw:
        raise WhatsAppValidationError(field, value, "empty phone number")
    if raw.startswith("-"):
        # "-972..." is not a spelling of a number; dropping the dash would send it anyway.
        raise WhatsAppValidationError(field, value, "a phone number cannot start with '-'")
    compact = compact_number(raw)
    if not _PLAUSIBLE.fullmatch(compact) or not compact.isascii():
        raise WhatsAppValidationError(
            field, value, "a phone number may hold only digits, a leading '+', spaces, dashes and parentheses"
        )
    region = validate_region(region)  # an unknown region: a typed error
    result, ambiguous = _normalize(compact, region)
    if ambiguous:
        raise WhatsAppValidationError(field, value, ambiguous)
    if result is None:
        if compact.startswith("+"):
            hint = ""
        elif region:
            hint = f" in region {region} (write an international number with + or 00)"
        else:
            hint = " (a local number needs default_region, or write it with +country code)"
        raise WhatsAppValidationError(field, value, f"not a possible phone number{hint}")
    return E164Digits(result)


@lru_cache(maxsize=4096)
def _normalize(compact: str, region: str | None) -> tuple[str | None, str | None]:
    """(E.164 digits or None when not possible, why the number is ambiguous or None)."""
    import phonenumbers

    if compact.startswith("+") or not region:
        # Clearly international: "+", "00" (made "+" by compact_number), or bare digits with no
        # region to read them in (the API's own format).
        text, reading = "+" + compact.lstrip("+"), None
    else:
        # The region's national reading. phonenumbers strips the region's trunk prefix ("0" in
        # IL, "1" in the US), its international call prefix ("011" in the US) and its own country
        # code when the number carries it ("972501234567" in IL). Never a fallback to another
        # reading: "2025550123" in the US is Washington, not Egypt.
        text, reading = compact, region
    try:
        number = phonenumbers.parse(text, reading)
    except phonenumbers.NumberParseException:
        return None, None
    if not phonenumbers.is_possible_number(number):
        return None, None
    if reading is not None:
        # Digits that hold the region's own country code after any trunk prefix, which
        # phonenumbers kept inside the national number: "0972501234567" in IL reads as the
        # (possible, invalid) Israeli number +972 972501234567 and as +972 50-123-4567. When the
        # national reading is invalid, or the international one is valid too, nobody can tell
        # which was meant: refuse rather than pick one. ("9123456789" in IN stays a valid
        # Indian mobile: +91 23456789 is not a valid number.)
        nsn = phonenumbers.national_significant_number(number)
        own_code = str(number.country_code)
        if nsn.startswith(own_code):
            other = phonenumbers.parse("+" + nsn, None)
            if phonenumbers.is_possible_number(other) and (
                not phonenumbers.is_valid_number(number) or phonenumbers.is_valid_number(other)
            ):
                return None, (
                    f"ambiguous in region {reading}: it reads as +{own_code} {nsn} and as +{nsn}; "
                    "write it with + for an international number"
                )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:], None


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


# Characters no message field may carry: C0 and C1 controls other than tab, new line and carriage
# return, DEL, and lone surrogates (which cannot be encoded as UTF-8 JSON at all).
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_ASCII_VISIBLE = re.compile(r"[!-~]")
# Letters and marks that render as nothing: combining grapheme joiner, Hangul fillers.
_BLANK_GLYPHS = frozenset("\u034f\u115f\u1160\u3164\uffa0")


def _has_visible(text: str) -> bool:
    """Whether a reader would see anything: a character that is not whitespace, not a format
    character (zero-width spaces and joiners, bidi controls, soft hyphen: Unicode category Cf), not
    a control and not a blank glyph."""
    if _ASCII_VISIBLE.search(text):  # nearly every real message: no per-character loop
        return True
    import unicodedata

    return any(
        not ch.isspace() and ch not in _BLANK_GLYPHS and unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
        for ch in text
    )


#: Whitespace or a control character inside an id, a link or a path.
SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def _refuse_forbidden(value: str, field: str, original: Any) -> None:
    bad = _FORBIDDEN_CHARS.search(value)
    if bad is not None:
        raise WhatsAppValidationError(
            field, original, f"holds the character U+{ord(bad.group(0)):04X}, which cannot be sent"
        )


def validate_body(body: Any, *, field: str = "body", limit: int = MAX_BODY_CHARS) -> str:
    """A message text: at most ``limit`` characters with at least one a reader can see, and no
    NUL or other control character (tab and new line are fine)."""
    if not isinstance(body, str):
        raise WhatsAppValidationError(field, body, f"expected text, got {type(body).__name__}")
    if not _has_visible(body):
        raise WhatsAppValidationError(field, body, "the message text is empty (nothing a reader can see)")
    if len(body) > limit:
        raise WhatsAppValidationError(field, body, f"{len(body)} characters, WhatsApp allows at most {limit}")
    _refuse_forbidden(body, field, body)
    return body


def validate_optional_text(value: Any, *, field: str) -> str | None:
    """An optional message id (``reply_to``): None, or 1 to 128 characters without whitespace or
    control characters (the API's ``unique`` ids are 32 hex digits)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise WhatsAppValidationError(field, value, "expected a non-empty string or None")
    return validate_message_id(value.strip(), field=field, original=value)


def validate_message_id(value: str, *, field: str, original: Any = None) -> str:
    """A ``unique`` message id, ours or the API's: 1 to ``MAX_UNIQUE_CHARS`` characters, none of
    them whitespace or a control character."""
    original = value if original is None else original
    if not value or len(value) > MAX_UNIQUE_CHARS:
        raise WhatsAppValidationError(
            field, original, f"a message id has 1 to {MAX_UNIQUE_CHARS} characters, got {len(value)}"
        )
    _refuse_forbidden(value, field, original)
    if SPACE_OR_CONTROL.search(value):
        raise WhatsAppValidationError(field, original, "a message id holds no spaces or line breaks")
    return value


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
        where = f"{field}[{number - 1}]"
        if not _has_visible(text):
            raise WhatsAppValidationError(where, value, f"empty value for {{{{{number}}}}}")
        _refuse_forbidden(text, where, value)
        problem = template_variable_problem(text)
        if problem is not None:
            # The notifier collapses whitespace in its variables for this reason (collapse_whitespace).
            raise WhatsAppValidationError(where, value, f"{problem} (error 132018)")
        result.append(text)
    return tuple(result)


def validate_header(header_type: Any, header_link: Any) -> tuple[int, str | None]:
    """``headerType`` and ``headerLink``: 1 (none, the default) or 3/4/5 (image, video, document)
    with an ``https://`` link to the media. Digit strings (from templated fields) are accepted."""
    if header_type is None or header_type == "":
        header_type = HEADER_NONE
    elif isinstance(header_type, str) and header_type.strip().isascii() and header_type.strip().isdigit():
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
    if SPACE_OR_CONTROL.search(link):
        raise WhatsAppValidationError(
            "header_link", header_link, "a link holds no spaces, line breaks or control characters"
        )
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
