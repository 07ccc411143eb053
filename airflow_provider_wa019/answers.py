"""What an exchange with the API means, whatever carried it: the one policy both transports call.

The sync hook (requests) and the async hook (aiohttp) only move bytes. Everything that decides
an outcome lives here, once:

* which HTTP statuses the transport retries by itself (nothing can have been sent), how long a
  ``Retry-After`` may make it wait, and its backoff;
* which reason codes the hook retries (reason 6), with its backoff;
* what a transport failure means (:class:`Failure`: "nothing was sent" or "delivery unknown"),
  each with its one error text;
* reading an answer's body (:class:`AnswerReader`): the size caps applied after decompression,
  gzip/deflate decoded here and nowhere else, the whole body within the read timeout, the token
  blanked in the bytes;
* what a status and a body mean (:func:`check_status`; the JSON itself is judged by
  :mod:`airflow_provider_wa019.api`).

Plain Python: no Airflow, no HTTP library.
"""

from __future__ import annotations

import email.utils
import enum
import random
import re
import time
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow_provider_wa019.api import Reason, compact_json, decode_json_object
from airflow_provider_wa019.constants import RETRYABLE_REASONS
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    excerpt,
)

if TYPE_CHECKING:
    from airflow_provider_wa019.hooks.base import WhatsAppSettings
    from airflow_provider_wa019.masking import SecretRedactor

__all__ = [
    "GATEWAY_STATUSES",
    "MAX_LISTING_ANSWER_BYTES",
    "MAX_SEND_ANSWER_BYTES",
    "NOT_PROCESSED_STATUSES",
    "READ_CHUNK",
    "AnswerReader",
    "Failure",
    "check_status",
    "failure_error",
    "listing_error",
    "reason_retry_delay",
    "retried_by_transport",
    "retry_after_seconds",
    "transport_backoff",
    "where",
]

# Answers that mean "not processed, come back later": a rate limit, or an overloaded service
# refusing work. Retrying them cannot duplicate a message.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
# Gateway errors: the gateway gave up waiting for the API (504) or lost its answer (502) while the
# API may well have processed the message. "Delivery unknown" for a send (never retried by the
# hook, the task's retries decide); retried only for a read, where a repeat sends nothing.
GATEWAY_STATUSES = frozenset({502, 504})
READ_ONLY_METHODS = frozenset({"GET"})

#: At most this much of an answer is read, after decompression. Documented send answers are a
#: few hundred bytes; a template listing may hold many templates.
MAX_SEND_ANSWER_BYTES = 64 * 1024
MAX_LISTING_ANSWER_BYTES = 1024 * 1024
#: The most a transport reads from the socket at once.
READ_CHUNK = 16 * 1024

# --- retries ----------------------------------------------------------------------------------


def retried_by_transport(method: str, status: int) -> bool:
    """Whether the transport asks again after this status, by itself: 429/503 (not processed),
    and 502/504 only for a read (a POST may have been processed behind the gateway)."""
    if status in NOT_PROCESSED_STATUSES:
        return True
    return status in GATEWAY_STATUSES and method.upper() in READ_ONLY_METHODS


_SECONDS = re.compile(r"^\s*[0-9]+\s*$")


def retry_after_seconds(value: str | None, cap: float) -> float | None:
    """A ``Retry-After`` header as seconds to wait, at most ``cap``: whole seconds or an HTTP date
    (past dates wait 0). None when absent or unusable ("1.5", "-5", "soon"): the answer is still
    the rate limit it is, retried after the usual backoff."""
    if value is None:
        return None
    if _SECONDS.match(value):
        seconds = float(int(value))
    else:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return min(max(seconds, 0.0), cap)


def transport_backoff(errors: int, factor: float, cap: float) -> float:
    """Wait before the transport's next try after ``errors`` failed ones (refused connect,
    429/503 without a usable ``Retry-After``): none after the first, then ``factor * 2**(n-1)``
    plus up to ``factor`` of jitter, at most ``cap`` (urllib3's formula, so both transports
    pace alike)."""
    if errors <= 1:
        return 0.0
    return float(max(0.0, min(cap, factor * 2 ** (errors - 1) + random.random() * factor)))


def reason_retry_delay(err: WhatsAppAPIError, attempt: int, cfg: WhatsAppSettings) -> float | None:
    """Seconds to wait before sending again after refusal ``err`` on try ``attempt``, or None
    when the refusal is final.

    Only reason 6, WhatsApp's own "error, try again", is retried: the message was not sent, so
    sending it again cannot produce a duplicate. Exponential with full jitter, so many tasks
    retrying at once do not arrive together.
    """
    if err.reason not in RETRYABLE_REASONS or attempt >= cfg.max_attempts:
        return None
    return min(cfg.max_retry_wait, cfg.backoff_factor * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


# --- transport failures -------------------------------------------------------------------------


class Failure(enum.Enum):
    """What went wrong below HTTP, as each transport reads its library's exceptions."""

    #: The proxy refused, timed out or failed the tunnel: nothing left for the API. Retried.
    PROXY = "proxy"
    #: The TCP connect timed out: nothing was sent. Retried.
    CONNECT_TIMEOUT = "connect_timeout"
    #: The connect failed (refused, name not resolved): nothing was sent. Retried.
    CONNECT = "connect"
    #: The request went out, no answer within the read timeout: delivery unknown.
    READ_TIMEOUT = "read_timeout"
    #: The answer broke off mid-body or could not be decoded: the request was processed.
    BROKE_OFF = "broke_off"
    #: The connection broke after the request was written: it may have been processed.
    DROPPED = "dropped"
    #: The TLS handshake failed: a setting to fix, nothing was sent.
    TLS = "tls"
    #: The request could not be made at all (a bad URL, a bad proxy setting).
    OTHER = "other"

    @property
    def retried(self) -> bool:
        """Nothing can have been sent: the transport tries again (``max_attempts`` in all)."""
        return self in _RETRIED_FAILURES


_RETRIED_FAILURES = frozenset({Failure.PROXY, Failure.CONNECT_TIMEOUT, Failure.CONNECT})


def failure_error(kind: Failure, url: str, cfg: WhatsAppSettings, detail: str = "") -> WhatsAppError:
    """The provider's error for a transport failure, after the transport's retries.

    ``detail`` names the cause (an exception class, the OS's text); it is redacted here, and
    never holds a header: callers build it from the exception's class and its innermost text.
    """
    at = where(url)
    detail = cfg.redactor.text(detail)
    if kind is Failure.PROXY:
        return WhatsAppTransientError(
            f"could not reach the proxy for {at} on {cfg.max_attempts} tries ({detail}); nothing was sent"
        )
    if kind is Failure.CONNECT_TIMEOUT:
        return WhatsAppTransientError(
            f"could not connect to {at} within {cfg.timeout[0]} s on {cfg.max_attempts} tries; nothing was sent"
        )
    if kind is Failure.CONNECT:
        return WhatsAppTransientError(
            f"could not connect to {at} on {cfg.max_attempts} tries ({detail}); nothing was sent"
        )
    if kind is Failure.READ_TIMEOUT:
        return WhatsAppDeliveryUnknownError(f"no answer from {at} within {cfg.timeout[1]} s")
    if kind is Failure.BROKE_OFF:
        return WhatsAppDeliveryUnknownError(f"the answer from {at} broke off mid-body ({detail})")
    if kind is Failure.DROPPED:
        return WhatsAppDeliveryUnknownError(f"connection to {at} dropped ({detail})")
    if kind is Failure.TLS:
        return WhatsAppConfigError(f"TLS handshake with {at} failed ({detail}); nothing was sent")
    return WhatsAppConfigError(f"request to {at} could not be made: {excerpt(detail)}")


def where(url: str) -> str:
    """Host and port of ``url``: never a user name or password, never a query string."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


# --- the body -----------------------------------------------------------------------------------


class AnswerReader:
    """Reads one answer's body as the transport hands over its raw bytes, keeping it bounded.

    ``limit`` applies after decompression (a gzip bomb inflates no further than the cap); the
    whole body must arrive within ``read_timeout`` of the start (a server trickling a byte a
    second cannot hold a send for minutes). With ``cut`` an answer longer than ``limit`` is cut
    (an error page is only quoted); without, it is refused.

    The transport loops: ``reader.remaining()`` (seconds left, or raises), one read of at most
    :data:`READ_CHUNK` bytes, ``reader.feed(chunk)`` (True: nothing more is wanted), and at the end
    of the stream ``reader.body()``. Failures of the read itself map to :meth:`timed_out` and
    :meth:`broke_off`.

    :raises WhatsAppResponseError: a ``Content-Encoding`` that was not asked for, a body that
        cannot be decompressed, or one over ``limit`` without ``cut``.
    """

    __slots__ = (
        "_cut",
        "_deadline",
        "_decoder",
        "_encoding",
        "_limit",
        "_out",
        "_read_timeout",
        "_redactor",
        "_url",
        "status",
    )

    def __init__(
        self,
        status: int,
        content_encoding: str | None,
        url: str,
        limit: int,
        *,
        cut: bool,
        read_timeout: float,
        redactor: SecretRedactor,
    ) -> None:
        self.status = status
        encoding = (content_encoding or "").strip().lower()
        if encoding in ("", "identity"):
            self._decoder: Any = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # zlib or gzip header
        else:
            raise WhatsAppResponseError(
                f"the answer is compressed with {encoding[:40]!r}, which was not asked for",
                http_status=status,
                body=b"",
            )
        self._encoding = encoding
        self._url = url
        self._limit = limit
        self._cut = cut
        self._read_timeout = read_timeout
        self._redactor = redactor
        self._deadline = time.monotonic() + read_timeout
        self._out = bytearray()

    def remaining(self) -> float:
        """Seconds left for the rest of the body.

        :raises WhatsAppDeliveryUnknownError: the body has taken longer than the read timeout.
        """
        left = self._deadline - time.monotonic()
        if left < 0:
            raise self.too_slow()
        return left

    def feed(self, chunk: bytes) -> bool:
        """Take raw bytes off the wire (as sent: still compressed). True once the answer is cut
        at ``limit`` and no more is wanted."""
        if self._decoder is not None:
            try:
                # max_length: inflate no further than one byte past the cap.
                chunk = self._decoder.decompress(chunk, self._limit + 1 - len(self._out))
            except zlib.error:
                raise self._undecodable() from None
        self._out += chunk
        return self._over_limit()

    def body(self) -> bytes:
        """The whole answer at the end of the stream (or the cut one), with the token blanked."""
        if self._decoder is not None and len(self._out) <= self._limit:
            try:
                self._out += self._decoder.flush()
            except zlib.error:
                raise self._undecodable() from None
            self._over_limit()
        return self._redactor.bytes(bytes(self._out[: self._limit]))

    def too_slow(self) -> WhatsAppDeliveryUnknownError:
        return WhatsAppDeliveryUnknownError(
            f"the answer from {where(self._url)} took more than {self._read_timeout:g} s to arrive",
            http_status=self.status,
        )

    def timed_out(self) -> WhatsAppDeliveryUnknownError:
        """No byte of the body came within the read timeout."""
        return WhatsAppDeliveryUnknownError(
            f"no answer from {where(self._url)} within {self._read_timeout:g} s", http_status=self.status
        )

    def broke_off(self, cause: str) -> WhatsAppDeliveryUnknownError:
        """The connection failed mid-body: the request was processed. ``cause``: a class name."""
        return WhatsAppDeliveryUnknownError(
            f"the answer from {where(self._url)} broke off mid-body ({cause})", http_status=self.status
        )

    def _over_limit(self) -> bool:
        if len(self._out) <= self._limit:
            return False
        if self._cut:
            return True
        raise WhatsAppResponseError(
            f"the answer is larger than {self._limit // 1024} KiB",
            http_status=self.status,
            body=self._redactor.bytes(bytes(self._out[:1024])),
        )

    def _undecodable(self) -> WhatsAppResponseError:
        return WhatsAppResponseError(
            f"the answer could not be decompressed ({self._encoding})", http_status=self.status, body=b""
        )


# --- status and body ----------------------------------------------------------------------------


def check_status(method: str, status: int, body: bytes, cfg: WhatsAppSettings) -> None:
    """Raise what a status other than 200 means (after the transport's own retries); return for a
    200, whose body :mod:`~airflow_provider_wa019.api` then judges.

    ``body`` is the answer as :class:`AnswerReader` returned it (bounded, token blanked).
    """
    if status == 200:
        return
    if status in (401, 403):
        # A refused token: retrying cannot help and would only repeat the refusal.
        raise WhatsAppAPIError(
            Reason.BAD_TOKEN,
            http_status=status,
            response=compact_json(_decode_or_empty(status, body)),
            detail=f"HTTP {status}: check the token in connection {cfg.conn_id!r}",
        )
    if retried_by_transport(method, status):
        raise WhatsAppTransientError(
            f"019sms answered HTTP {status} on all {cfg.max_attempts} tries; nothing was sent",
            http_status=status,
        )
    if status in GATEWAY_STATUSES:
        raise WhatsAppDeliveryUnknownError(
            f"a gateway answered HTTP {status} (the API behind it may have taken the message)",
            http_status=status,
        )
    if status >= 500:
        raise WhatsAppDeliveryUnknownError(f"019sms answered HTTP {status}", http_status=status)
    raise WhatsAppResponseError(
        f"HTTP {status} (check the base URL and endpoint paths of connection {cfg.conn_id!r})",
        http_status=status,
        body=body,
    )


def listing_error(err: WhatsAppDeliveryUnknownError) -> WhatsAppTransientError:
    """A template listing sends nothing: "delivery unknown" would mislead, asking again is safe."""
    return WhatsAppTransientError(
        f"template listing: {err.detail}; nothing was sent", http_status=err.http_status
    )


def _decode_or_empty(status: int, body: bytes) -> dict[str, Any]:
    try:
        return decode_json_object(status, body)
    except WhatsAppResponseError:
        return {}
