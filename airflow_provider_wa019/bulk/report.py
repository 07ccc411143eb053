"""What a bulk send did: one :class:`Outcome` per recipient, the :class:`BulkReport` of a try
(XCom ``return_value`` and ``results``), the progress line, and log-safe descriptions of outcomes
(phone numbers masked)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from airflow_provider_wa019.constants import reason_meaning
from airflow_provider_wa019.masking import scrub

__all__ = ["NOT_SENT", "BulkReport", "Outcome", "Status", "describe", "format_progress", "not_sent", "scrub"]

Status = Literal["sent", "skipped", "failed", "invalid", "unknown"]

#: Failure key of recipients a stopped bulk never sent to.
NOT_SENT = "not_sent"


@dataclass(frozen=True, slots=True)  # slots: one per recipient, 100,000 in a big bulk
class Outcome:
    """What happened to one recipient. ``to_xcom()`` is its entry in XCom ``results``.

    :ivar key: the summary bucket: the API reason as text (``"7"``), or ``"unreachable"``,
        ``"bad_response"``, ``"config"``, ``"not_sent"`` for failures without a reason.
    :ivar retryable: this try's outcome asks for another try, as it would for a single send:
        reason 6, the API unreachable, the bulk stopped, or delivery unknown after a read timeout
        or HTTP 500 (whether that recipient is then sent again is ``resend_unknown``'s call).
    :ivar earlier: the outcome was read from the ledger (an earlier try); nothing was sent now.
    """

    status: Status
    unique: str | None = None
    reason: int | None = None
    error: str | None = None
    key: str | None = None
    retryable: bool = False
    earlier: bool = False

    def to_xcom(self) -> dict[str, Any]:
        return {"status": self.status, "unique": self.unique, "reason": self.reason, "error": self.error}


def format_progress(sent: int, total: int, failed: int, rate: float, seconds_left: float | None) -> str:
    """``sent 1200/5000, failed 3, 180 msg/s, ~21 s left`` (the task log's progress line)."""
    left = "?" if seconds_left is None else f"{math.ceil(seconds_left)}"
    return f"sent {sent}/{total}, failed {failed}, {rate:.0f} msg/s, ~{left} s left"


@dataclass
class BulkReport:
    """The outcome of one try of a bulk send.

    :ivar results: key -> outcome, in the recipients' order (see :class:`Recipient` for keys).
    :ivar stopped: the try was stopped (``BulkSender.stop``, SIGTERM, timeout) before the end.
    :ivar aborted: why the bulk stopped early on its own (a refused token...), or None.
    :ivar abort_retryable: whether that reason could clear up by itself (the API unreachable).
    :ivar sent_now: messages confirmed by this try (not counting earlier tries').
    :ivar elapsed: seconds this try spent sending.
    """

    results: dict[str, Outcome]
    duplicates: int = 0
    stopped: bool = False
    aborted: str | None = None
    abort_retryable: bool = False
    sent_now: int = 0
    elapsed: float = 0.0
    ledger_writes: int = 0

    def summary(self) -> dict[str, Any]:
        """XCom ``return_value``: ``{"total", "sent", "skipped": {reason: n}, "failed": {reason:
        n}, "invalid", "unknown"}`` (reasons as text keys, so the dict survives JSON unchanged)."""
        skipped: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for outcome in self.results.values():
            counts[outcome.status] += 1
            if outcome.status == "skipped":
                skipped[outcome.key or "?"] += 1
            elif outcome.status == "failed":
                failed[outcome.key or "?"] += 1
        return {
            "total": len(self.results),
            "sent": counts["sent"],
            "skipped": dict(sorted(skipped.items())),
            "failed": dict(sorted(failed.items())),
            "invalid": counts["invalid"],
            "unknown": counts["unknown"],
        }

    def results_xcom(self) -> dict[str, dict[str, Any]]:
        """XCom ``results``: full number -> ``{"status", "unique", "reason", "error"}``."""
        return {key: outcome.to_xcom() for key, outcome in self.results.items()}

    def failure_ratio(self) -> float:
        """(failed + invalid) / total; 0 for an empty list."""
        total = len(self.results)
        bad = sum(1 for o in self.results.values() if o.status in ("failed", "invalid"))
        return bad / total if total else 0.0

    def retryable_now(self) -> int:
        """Outcomes of this try that another try could change (reason 6, unreachable, timeouts)."""
        return sum(1 for o in self.results.values() if o.retryable and not o.earlier)

    def unknown_now(self) -> int:
        """Outcomes of this try left unknown for a reason a retry would not clear (bad answers)."""
        return sum(
            1 for o in self.results.values() if o.status == "unknown" and not o.retryable and not o.earlier
        )


def not_sent(error: str) -> Outcome:
    # Nothing went out for this recipient, so a later try may send it.
    return Outcome("failed", error=error, key=NOT_SENT, retryable=True)


def describe(outcome: Outcome) -> str:
    """A log-safe description of an outcome: phone numbers in it are masked."""
    if outcome.reason is not None:
        return f"{outcome.status}, reason {outcome.reason} ({reason_meaning(outcome.reason)})"
    return f"{outcome.status}: {scrub(outcome.error or outcome.key or '')}"
