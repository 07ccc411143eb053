"""Property-based tests (hypothesis) of the code that judges input and answers.

Two kinds of property:

* robustness: arbitrary input (any Python value, any bytes, any JSON) never makes number
  normalisation, body validation or response parsing raise anything but the provider's typed
  errors (``WhatsAppValidationError`` for arguments; ``WhatsAppAPIError`` or
  ``WhatsAppResponseError`` for answers);
* round trips: every way people write the same possible number normalises to the same digits;
  valid texts pass unchanged; a well-formed answer parses back to what it said.

Example counts stay small (the whole module runs in a few seconds); ``deadline=None`` because the
first call of a test loads phonenumbers' metadata.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from airflow_provider_wa019.api import MAX_BODY_CHARS, SendResult, parse_send_response
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.validation import (
    normalize_number,
    validate_body,
    validate_optional_text,
    validate_region,
)

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any Python value a templated field or a hand-written call could hand us.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=64),
    st.lists(st.text(max_size=8), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
# What people type into a "phone number" field: digits and decoration, sometimes junk.
PHONE_LIKE = st.text(alphabet="0123456789+-() .\t\u00a0x#*/٠١٢٣٤٥٦٧٨٩²", max_size=24)
JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)


def outcome(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn``'s result, or the provider error it raised. Any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except WhatsAppError as err:
        return err


# --------------------------------------------------------------------------------------------
# Number normalisation


@EXAMPLES
@given(value=st.one_of(ANY_VALUE, PHONE_LIKE), region=st.one_of(st.none(), st.sampled_from(REGIONS)))
@example(value="+972 50-123-4567", region=None)
@example(value="²²²²²²²²²", region="IL")
def test_normalize_number_returns_digits_or_a_validation_error(value, region):
    result = outcome(normalize_number, value, field="to", region=region)
    if isinstance(result, WhatsAppValidationError):
        assert result.field == "to"
        return
    assert result.isascii()
    assert result.isdigit()
    assert 4 <= len(result) <= 17
    # Idempotent for real numbers: the normalised form reads back as itself. (Not for junk such
    # as "+31 000 000 000": phonenumbers strips a trunk "0" after the country code, as in
    # "+44 (0)20 ...", and an all-zero number has one more to strip at every pass.)
    if phonenumbers.is_valid_number(phonenumbers.parse("+" + result, None)):
        assert normalize_number(result) == result


@EXAMPLES
@given(region=st.one_of(st.text(max_size=4), ANY_VALUE))
@example(region="zz")
@example(region="il")
def test_validate_region_accepts_known_codes_only(region):
    result = outcome(validate_region, region)
    if isinstance(result, WhatsAppValidationError):
        assert result.field == "default_region"
    else:
        assert result is None or result in phonenumbers.SUPPORTED_REGIONS


@EXAMPLES
@given(value=PHONE_LIKE, region=st.text(max_size=3))
def test_normalize_number_with_any_region_text_raises_only_validation_errors(value, region):
    # An unknown region must be refused as such, not crash inside phonenumbers.
    outcome(normalize_number, value, region=region)


@st.composite
def possible_numbers(draw):
    """A possible number of some region: (E.164 digits, the PhoneNumber, its region)."""
    region = draw(st.sampled_from(REGIONS))
    sample = phonenumbers.example_number(region)
    assume(sample is not None)
    national = str(sample.national_number)
    digits = national[0] + "".join(draw(st.sampled_from("0123456789")) for _ in national[1:])
    number = phonenumbers.parse(f"+{sample.country_code}{digits}", None)
    assume(phonenumbers.is_possible_number(number))
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)[1:]
    return e164, number, region


def decorate(draw, text: str) -> str:
    """``text`` with what people put between digits: spaces, dashes, dots, parentheses."""
    out = []
    for ch in text:
        out.append(ch)
        out.append(draw(st.sampled_from(["", "", "", " ", "-", ".", " - "])))
    pretty = "".join(out).strip(" -.")
    if draw(st.booleans()) and len(text) > 4:  # an area code in parentheses
        cut = draw(st.integers(min_value=1, max_value=3))
        pretty = f"({text[:cut]}) {text[cut:]}"
    return draw(st.sampled_from(["", " ", "\t"])) + pretty + draw(st.sampled_from(["", " ", "\n"]))


@EXAMPLES
@given(data=st.data(), case=possible_numbers())
def test_every_international_spelling_normalises_to_the_same_digits(data, case):
    e164, _number, _region = case
    prefix = data.draw(st.sampled_from(["+", "00", "", "+ "]))
    written = prefix + decorate(data.draw, e164)
    assert normalize_number(written) == e164
    # The connection's default region does not change a number written internationally.
    if prefix.strip():
        assert normalize_number(written, region=data.draw(st.sampled_from(REGIONS))) == e164


@EXAMPLES
@given(data=st.data(), case=possible_numbers())
def test_the_local_spelling_normalises_with_its_region(data, case):
    # The documented rule: a number without country code is read in the connection's region when
    # it starts with the region's trunk prefix ("050-123-4567" in IL), or when the region has none.
    e164, number, region = case
    assume(phonenumbers.region_code_for_number(number) == region)
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    trunk = meta.national_prefix or ""
    nsn = phonenumbers.national_significant_number(number)
    # Where trunk + number also reads as the region's international call prefix (Turkmenistan:
    # trunk "8", international "810"), the local spelling is ambiguous by that country's rules.
    assume(not (meta.international_prefix and re.match(meta.international_prefix, trunk + nsn)))
    written = decorate(data.draw, trunk + nsn)
    assert normalize_number(written, region=region) == e164


@pytest.mark.parametrize(
    ("written", "region"),
    [("050-123-4567", "IL"), ("+972 (50) 123.4567", None), ("00972501234567", "US"), ("972501234567", "IL")],
)
def test_known_spellings_of_one_israeli_mobile(written, region):
    assert normalize_number(written, region=region) == "972501234567"


# --------------------------------------------------------------------------------------------
# Body validation

# Letters and marks that render as nothing (combining grapheme joiner, Hangul fillers).
BLANK_GLYPHS = "\u034f\u115f\u1160\u3164\uffa0"


@EXAMPLES
@given(body=st.one_of(ANY_VALUE, st.text(min_size=MAX_BODY_CHARS - 2, max_size=MAX_BODY_CHARS + 2)))
def test_validate_body_returns_the_text_unchanged_or_a_validation_error(body):
    result = outcome(validate_body, body)
    valid = (
        isinstance(body, str)
        and len(body) <= MAX_BODY_CHARS
        # Something a reader sees: not whitespace, not a format character (zero-width, bidi).
        and any(
            not c.isspace() and c not in BLANK_GLYPHS and unicodedata.category(c) not in ("Cc", "Cf", "Cs")
            for c in body
        )
        # Nothing that cannot be sent: NUL and other controls (tab and line breaks are text).
        and not any(
            (unicodedata.category(c) == "Cc" and c not in "\t\n\r") or unicodedata.category(c) == "Cs"
            for c in body
        )
    )
    if isinstance(result, WhatsAppValidationError):
        assert result.field == "body"
        assert not valid
    else:
        assert result == body
        assert valid


@EXAMPLES
@given(value=ANY_VALUE)
def test_validate_optional_text_is_none_a_stripped_text_or_a_validation_error(value):
    result = outcome(validate_optional_text, value, field="reply_to")
    if isinstance(result, WhatsAppValidationError):
        assert result.field == "reply_to"
    elif value is None:
        assert result is None
    else:
        assert result == value.strip()
        assert result


# --------------------------------------------------------------------------------------------
# Response parsing


def parse(status: int, content: bytes) -> SendResult | Exception:
    result = outcome(parse_send_response, status, content)
    if isinstance(result, Exception):
        assert isinstance(result, (WhatsAppAPIError, WhatsAppResponseError))
        assert str(result)  # the message builds (quotes status and body) without failing
    return result


@EXAMPLES
@given(status=st.integers(min_value=100, max_value=599), content=st.binary(max_size=300))
@example(status=200, content=b'{"reason": "\xc2\xb2", "unique": "x"}')
@example(status=200, content=b'{"reason": "' + b"9" * 5000 + b'"}')
@example(status=200, content=b"\xff\xfe{")
def test_any_bytes_parse_to_a_result_or_a_typed_error(status, content):
    parse(status, content)


@EXAMPLES
@given(
    body=st.one_of(
        JSON_VALUE,
        st.fixed_dictionaries(
            {},
            optional={
                "status": JSON_VALUE,
                "reason": st.one_of(JSON_SCALAR, st.sampled_from(["1", " 6 ", "07", "1.0", "²", "一"])),
                "unique": JSON_VALUE,
                "message": JSON_VALUE,
                "to": JSON_VALUE,
                "from": JSON_VALUE,
                "body": JSON_VALUE,
                "timestamp": st.one_of(JSON_SCALAR, st.integers(), st.just("1e400"), st.just(1e308)),
                "templateTimeLeft": st.one_of(JSON_SCALAR, st.just(1e308), st.just("inf"), st.just("nan")),
                "conversationTimeLeft": st.one_of(JSON_SCALAR, st.integers()),
            },
        ),
    )
)
def test_any_json_parses_to_a_result_or_a_typed_error(body):
    parsed = parse(200, json.dumps(body).encode())
    if isinstance(parsed, SendResult):
        assert parsed.reason == 1
        assert isinstance(parsed.unique, str)
        assert parsed.unique
        json.dumps(parsed.to_dict())  # what goes to XCom is always serialisable
    elif isinstance(parsed, WhatsAppAPIError):
        assert parsed.reason != 1


@EXAMPLES
@given(
    # A message id: printable ASCII without spaces (it is quoted back as replyTo).
    unique=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=4_102_444_800),
    window=st.integers(min_value=0, max_value=1440),
    as_strings=st.booleans(),
)
def test_a_well_formed_answer_round_trips(unique, timestamp, window, as_strings):
    def num(n: int) -> int | str:
        return str(n) if as_strings else n

    answer = {
        "status": "OK",
        "reason": num(1),
        "unique": unique,
        "to": "972501234567",
        "timestamp": num(timestamp),
        "templateTimeLeft": num(window),
        "conversationTimeLeft": num(1440),
    }
    result = parse_send_response(200, json.dumps(answer).encode())
    assert result.unique == unique
    assert result.timestamp is not None
    assert result.timestamp.int_timestamp == timestamp
    assert result.template_time_left is not None
    assert math.isclose(result.template_time_left.total_seconds(), window * 60)
    assert result.to_dict()["template_time_left_minutes"] == window
    assert dict(result.raw) == answer


@EXAMPLES
@given(reason=st.integers(min_value=2, max_value=10**6), as_string=st.booleans())
def test_any_refusal_keeps_its_reason(reason, as_string):
    answer = {"status": "FAIL", "reason": str(reason) if as_string else reason}
    refusal = parse(200, json.dumps(answer).encode())
    assert isinstance(refusal, WhatsAppAPIError)
    assert refusal.reason == reason
    assert refusal.retryable == (reason == 6)
