"""Typed errors of the provider.

Plain Python exceptions (no Airflow import) so the hook can be used anywhere; the operators map
them to Airflow task outcomes. Every error says whether retrying could duplicate a message
(``retryable``), and none ever carries the API token: messages are built from our own fields and
the response body, never from request headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_wa019.constants import RETRYABLE_REASONS, reason_meaning

#: How much of an unexpected response body an error quotes.
EXCERPT_CHARS = 200


class WhatsAppError(Exception):
    """Base class of every error this provider raises.

    ``retryable`` is True only when the message is known not to have been delivered, or when the
    outcome is unknown and the caller (Airflow's task ``retries``) decides to try again.
    """

    retryable: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Airflow and users copy and pickle errors (deepcopy of a failed task's context, a
        # process pool): rebuild from the message and the attributes, not from __init__'s
        # keyword arguments, which the default reduce would pass positionally.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[WhatsAppError], args: tuple[Any, ...], state: dict[str, Any]) -> WhatsAppError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class WhatsAppConfigError(WhatsAppError):
    """The connection is unusable: no token, no sender, a malformed extra."""


class WhatsAppValidationError(WhatsAppError, ValueError):
    """A message argument is invalid. Raised before any request is sent."""

    def __init__(self, field: str, value: Any, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"invalid {field} {_short_repr(value)}: {problem}")


class WhatsAppAPIError(WhatsAppError):
    """The API answered with a ``reason`` other than 1 (or refused the token over HTTP).

    :ivar reason: the API's reason code (3 for an HTTP 401/403).
    :ivar meaning: what the vendor documents the code to mean.
    :ivar response: the decoded response body (never contains the token).
    :ivar http_status: the HTTP status of the response.
    """

    def __init__(
        self,
        reason: int,
        *,
        response: Mapping[str, Any] | None = None,
        http_status: int = 200,
        detail: str | None = None,
    ) -> None:
        self.reason = reason
        self.meaning = reason_meaning(reason)
        self.response = dict(response or {})
        self.http_status = http_status
        # Reason 6 is WhatsApp's own "not sent, try again": the only API refusal worth retrying.
        self.retryable = reason in RETRYABLE_REASONS
        text = f"019sms refused the message: reason {reason} ({self.meaning})"
        if detail:
            # The API's own message, quoted briefly: an answer may carry a megabyte of text.
            text += f"; {excerpt(detail)}"
        super().__init__(text)


class WhatsAppTransientError(WhatsAppError):
    """The request was not processed (connection failed, HTTP 429/502/503/504) even after the
    hook's own retries. Nothing was delivered, so trying again later is safe."""

    retryable = True

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        self.http_status = http_status
        super().__init__(message)


class WhatsAppDeliveryUnknownError(WhatsAppError):
    """The request reached the API but no usable answer came back (read timeout, HTTP 500,
    connection dropped mid-response): the message may or may not have been sent.

    The hook never retries this itself. It is ``retryable`` so Airflow's task ``retries`` apply:
    set ``retries=0`` on the task when a duplicate is worse than a missed message.
    """

    retryable = True

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        self.http_status = http_status
        #: What went wrong, without the "may have been sent" conclusion (read-only calls reuse it).
        self.detail = message
        super().__init__(f"delivery unknown: {message}; the message may or may not have been sent")


class WhatsAppResponseError(WhatsAppError):
    """The API answered with something that is not its documented JSON (HTML, empty body, a
    JSON array, a success without a message id...). Not retried: what happened is unclear, and
    a retry could send the message twice."""

    def __init__(self, problem: str, *, http_status: int, body: bytes | str) -> None:
        self.http_status = http_status
        self.body_excerpt = excerpt(body)
        super().__init__(
            f"unexpected response from 019sms (HTTP {http_status}): {problem}; "
            f"body starts with {self.body_excerpt!r}; delivery unknown, not retried"
        )


def excerpt(body: bytes | str, limit: int = EXCERPT_CHARS) -> str:
    """The first ``limit`` characters of a response body, decoded leniently ("..." when cut)."""
    if isinstance(body, bytes):
        text = body[: limit * 4].decode("utf-8", errors="replace")
        cut = len(body) > limit * 4
    else:
        text, cut = body, False
    if len(text) > limit or cut:
        return text[:limit] + "..."
    return text


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
