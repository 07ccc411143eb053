"""Injected faults: what one is, the checks of ``fail_next``'s arguments, the queue, the answer.

* :class:`Fault` is one, made of ``fail_next``'s arguments and checking them, so a wrong one
  is an error when the test says it, not when (or whether) the fault fires;
* :class:`FaultQueue` holds them in order and hands out the first that matches a request's path
  and JSON ``to``;
* :func:`fault_response` is the answer a fault gives in place of the real one.

No state beyond the queue, no lock (the model holds its own around every call) and no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from airflow_provider_wa019.api import reason_meaning
from airflow_provider_wa019.testing.checks import (
    check_header_value,
    check_int,
    check_number,
    normalise_number,
)
from airflow_provider_wa019.testing.records import Response, json_or_none, path_matches

#: Longest ``fail_next(delay=...)``: longer than any client timeout, short of hanging a thread forever.
MAX_FAULT_DELAY = 24 * 3600.0


@dataclass
class Fault:
    """One queued fault: the arguments of :meth:`WhatsAppSimulator.fail_next`, checked when it is
    made (so a wrong one is an error when the test says it, not when or whether it fires).

    :raises TypeError: a wrong type (``remaining``, ``reason`` and ``status`` are ints, not
        bools or floats).
    :raises ValueError: a wrong value (no fault at all, ``status`` outside 200-599, a negative or
        endless ``delay``...).
    """

    remaining: int
    reason: int | None = None
    status: int | None = None
    #: Seconds, or an HTTP date / seconds as written.
    retry_after: float | str | None = None
    delay: float | None = None
    #: Kept as bytes (a str is encoded as UTF-8 when the fault is made).
    body: str | bytes | None = None
    content_type: str | None = None
    path: str | None = None
    #: Normalised to the API's digits when the fault is made.
    to: str | int | None = None

    def __post_init__(self) -> None:
        if check_int("n", self.remaining) < 1:
            raise ValueError("n must be at least 1")
        if self.reason is None and self.status is None and self.delay is None and self.body is None:
            raise ValueError("give at least one of reason, status, delay or body")
        if self.reason is not None:
            check_int("reason", self.reason)
        if self.status is not None and not 200 <= check_int("status", self.status) <= 599:
            # 1xx would leave the client waiting for a final answer; 600+ is no HTTP status.
            raise ValueError(f"status must be an HTTP status 200-599, not {self.status}")
        if isinstance(self.retry_after, str):  # an HTTP date, or seconds as written
            check_header_value("retry_after", self.retry_after)
        elif self.retry_after is not None and check_number("retry_after", self.retry_after) < 0:
            raise ValueError(f"retry_after must not be negative: {self.retry_after!r}")
        if self.delay is not None:
            self.delay = check_number("delay", self.delay)
            if not 0 <= self.delay <= MAX_FAULT_DELAY:
                raise ValueError(f"delay must be 0-{MAX_FAULT_DELAY:.0f} seconds, not {self.delay!r}")
        if self.body is not None and not isinstance(self.body, (str, bytes)):
            raise TypeError(f"body must be str or bytes, not {type(self.body).__name__}")
        if self.content_type is not None:
            _check_string("content_type", self.content_type)
            check_header_value("content_type", self.content_type)
        if self.path is not None:
            _check_string("path", self.path)
            if not self.path.startswith("/"):  # request paths always do: the fault would never fire
                raise ValueError(f"path must start with '/': {self.path!r}")
        if isinstance(self.body, str):
            self.body = self.body.encode()  # here: a lone surrogate is an error of the call
        if self.to is not None:
            self.to = normalise_number(self.to, "to")


def _check_string(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")


class FaultQueue:
    """Queued faults, first in first out; a fault of ``n`` requests stays until ``n`` matched.

    Not locked: the caller holds the model's lock around every method.
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def __bool__(self) -> bool:
        """Whether any fault is queued (cheap enough to ask without the lock, as a peek)."""
        return bool(self._faults)

    def append(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> None:
        self._faults.clear()

    @property
    def pending(self) -> int:
        """How many faulted requests are still queued."""
        return sum(f.remaining for f in self._faults)

    def take(self, path: str, raw: bytes = b"") -> Fault | None:
        """The first queued fault for a request to ``path`` with body ``raw``, used up by one."""
        to: Any = None
        if any(f.to is not None for f in self._faults):  # parse the body only when a fault needs it
            data = json_or_none(raw)  # a body that is no JSON object simply matches no ``to``
            to = data.get("to") if isinstance(data, dict) else None
        for i, fault in enumerate(self._faults):
            if path_matches(fault.path, path) and (fault.to is None or fault.to == to):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[i]
                return fault
        return None


def fault_response(fault: Fault) -> Response | None:
    """The answer ``fault`` gives instead of the real one; None for a delay only (answer normally)."""
    headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
    if fault.body is not None:
        body = fault.body if isinstance(fault.body, bytes) else fault.body.encode()
        ctype = fault.content_type
        if ctype is None:
            ctype = "text/html; charset=utf-8" if body.lstrip().startswith(b"<") else "application/json"
        return Response(status=fault.status or 200, body=body, content_type=ctype, headers=headers)
    if fault.reason is not None:
        payload = {"status": "FAIL", "reason": fault.reason, "message": reason_meaning(fault.reason)}
        return Response.json(fault.status or 200, payload, headers)
    if fault.status is not None:
        try:
            phrase = HTTPStatus(fault.status).phrase
        except ValueError:
            phrase = "error"
        return Response.json(fault.status, {"status": "FAIL", "message": phrase}, headers)
    return None  # delay only: answer normally
