"""What a failed send means: the one policy that turns a provider error into an outcome.

The single-send operators (task outcome), the bulk engine (per-recipient outcome) and the
notifier (whether to try the next recipient) all ask :func:`judge`. Plain Python: it imports only
the provider's errors and constants, never Airflow or requests.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from airflow_provider_wa019.constants import Reason
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)

__all__ = ["Kind", "Verdict", "judge"]

Kind = Literal["skipped", "refused", "not_sent", "unknown", "bad_response", "invalid", "config"]


@dataclass(frozen=True)
class Verdict:
    """The meaning of one failed send.

    :ivar kind: ``skipped`` (a reason the caller chose to skip on), ``refused`` (any other API
        reason), ``not_sent`` (the API was not reached or did not process the request),
        ``unknown`` (it may have been delivered: read timeout, HTTP 500/502/504), ``bad_response``
        (an answer that is not the API's JSON), ``invalid`` (refused before sending),
        ``config`` (the connection is unusable).
    :ivar reason: the API's reason code, where there is one.
    :ivar retryable: another try may succeed without risking what the caller promised: nothing
        was sent (reason 6, unreachable) or delivery is unknown and Airflow's ``retries`` decide.
    :ivar connection_at_fault: every further send over this connection would fail alike (a
        refused token, an unusable connection): stop sending to others.
    """

    kind: Kind
    reason: int | None = None
    retryable: bool = False
    connection_at_fault: bool = False


def judge(err: WhatsAppError, skip_on_reasons: Collection[int] = ()) -> Verdict:
    """The :class:`Verdict` for a send that raised ``err``."""
    if isinstance(err, WhatsAppValidationError):
        return Verdict("invalid")
    if isinstance(err, WhatsAppAPIError):
        if err.reason in skip_on_reasons:
            return Verdict("skipped", err.reason)
        return Verdict(
            "refused", err.reason, retryable=err.retryable, connection_at_fault=err.reason == Reason.BAD_TOKEN
        )
    if isinstance(err, WhatsAppTransientError):
        return Verdict("not_sent", retryable=True)
    if isinstance(err, WhatsAppDeliveryUnknownError):
        return Verdict("unknown", retryable=True)
    if isinstance(err, WhatsAppResponseError):
        # Maybe delivered, and unclear: a retry could send twice.
        return Verdict("bad_response")
    if isinstance(err, WhatsAppConfigError):
        return Verdict("config", connection_at_fault=True)
    return Verdict("config", retryable=err.retryable)
