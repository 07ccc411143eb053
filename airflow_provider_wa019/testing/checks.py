"""Checks of what the simulator is *told*: numbers, counts, seconds, header values and moments.

The arguments of the set-up methods (``open_window``, ``fail_next``, ``set_time``...), of the
``/__sim__/`` control endpoints and of the command line pass through these, so a mistake is a
``TypeError``/``ValueError`` at once instead of a fault that never fires. Pure functions.

Numbers are spelled as :func:`airflow_provider_wa019.api.compact_number` undoes them; what is left
must then be :data:`NUMBER_RE`, the digits-only form the API takes in ``from``/``to``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import pendulum

from airflow_provider_wa019.api import compact_number

#: A number in the API's spelling: 8-15 digits, no ``+`` (a ``to`` that is not is reason 4).
NUMBER_RE = re.compile(r"[0-9]{8,15}")


def normalise_number(value: str | int, what: str = "number") -> str:
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
    if not NUMBER_RE.fullmatch(digits):
        raise ValueError(
            f"{what} {value!r:.60} is not a phone number: expected 8-15 digits once spaces, dashes, "
            "dots, parentheses and a leading + or 00 are removed"
        )
    return digits


def check_int(name: str, value: object) -> int:
    """``value``, which must be an int: ``int(True)`` and ``int(6.5)`` would quietly become a fault
    nobody asked for."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}: {value!r:.60}")
    return value


def check_number(name: str, value: object) -> float:
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


def check_header_value(name: str, value: str) -> str:
    """``value``, which goes into an answer's header: a new line would end the header and start
    another one (or the body)."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"{name} must not contain a new line: {value!r:.60}")
    return value


def to_utc(value: datetime | str) -> pendulum.DateTime:
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
