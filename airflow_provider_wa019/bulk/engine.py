"""The bulk-send engine, :class:`BulkSender`: sends with at most ``max_concurrency`` requests in
flight over the caller's one HTTP session, classifies every answer with the single send's rules,
writes the ledger in batches and logs a progress line every few seconds.

Thread model: worker threads only call the send function (the hook) and the rate limiter.
Everything that talks to Airflow (rendering templates with the task context, the ledger's
writes, XCom, logging progress) stays on the calling (task's main) thread: the task SDK's channel
to its supervisor is not meant to be used from several threads at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_wa019.bulk.ledger import _CLAIMED, _SENT, _UNKNOWN, CLAIM_BATCH, ProgressLedger
from airflow_provider_wa019.bulk.rate import SlidingWindowRateLimiter
from airflow_provider_wa019.bulk.recipients import Recipient
from airflow_provider_wa019.bulk.report import (
    BulkReport,
    Outcome,
    describe,
    format_progress,
    not_sent,
    scrub,
)
from airflow_provider_wa019.constants import (
    DEFAULT_BULK_CONCURRENCY,
    DEFAULT_SKIP_REASONS,
    MAX_BULK_CONCURRENCY,
)
from airflow_provider_wa019.exceptions import WhatsAppError, WhatsAppValidationError
from airflow_provider_wa019.masking import mask_number
from airflow_provider_wa019.outcomes import judge

__all__ = ["DEFAULT_MAX_CONCURRENCY", "MAX_CONCURRENCY", "BulkSender"]

DEFAULT_MAX_CONCURRENCY = DEFAULT_BULK_CONCURRENCY
#: At most the hook's pool size (``constants.POOL_MAXSIZE``).
MAX_CONCURRENCY = MAX_BULK_CONCURRENCY
DEFAULT_PROGRESS_SECONDS = 5.0
#: Stop the bulk after this many answers in a row that would hit every recipient alike (the API
#: unreachable, reason 2: the sender or template does not exist).
BREAKER_STREAK = 10
#: Failure keys that stop the bulk at once: every further send would get the same answer.
_ABORT_NOW = frozenset({"3", "config"})
_ABORT_ON_STREAK = frozenset({"2", "unreachable"})
#: How many problems are logged one by one before they are only counted.
_LOGGED_PROBLEMS = 20
#: A render error's text is cut to this length: it lands in XCom once per recipient.
_MAX_ERROR_CHARS = 1000
_TICK = 0.25  # seconds between checks for a stop request while waiting on sends


class BulkSender:
    """Send to many recipients with bounded concurrency and rate, recording each outcome.

    :param send: called in a worker thread as ``send(number, payload)``; returns the API's
        :class:`~airflow_provider_wa019.api.SendResult` or raises a ``WhatsAppError`` (a hook's
        ``send_message``/``send_template``, with its own per-message retries).
    :param prepare: called on the calling thread as ``prepare(recipient)`` right before a send;
        returns the payload (e.g. the rendered body). Any ``Exception`` it raises (a validation
        error, a missing value, ``ZeroDivisionError``, a failed XCom read...) makes that recipient
        invalid, with the exception's type and text as its error (``"ZeroDivisionError: division
        by zero"``), and the others are still sent. A ``BaseException`` (Airflow's timeout,
        ``KeyboardInterrupt``) ends the run as any other stop does.
    :param ledger: the progress ledger (use ``ProgressLedger(None)`` for none).
    :param max_concurrency: requests in flight at most (1 to :data:`MAX_CONCURRENCY`).
    :param rate_per_second: sends started per sliding second at most (finite, > 0); None for no
        limit.
    :param skip_on_reasons: API reasons that mean "skipped" rather than "failed".
    :param resend_unknown: send again to recipients an earlier try left ``unknown`` (at least once);
        False reports them and never sends again (at most once), claiming recipients in the ledger
        before sending them.
    :param log: where progress and problems are logged (recipients masked).
    :param secrets: texts (the API token) replaced by ``***`` in the errors of recipients whose
        message could not be prepared: a template may quote any value it read, and those errors
        go to XCom and the log.
    :param progress_seconds: seconds between progress lines.
    :param drain_seconds: when stopped, how long to wait for requests already in flight.
    """

    def __init__(
        self,
        send: Callable[[str, Any], Any],
        *,
        prepare: Callable[[Recipient], Any] = lambda r: None,
        ledger: ProgressLedger | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_per_second: float | None = None,
        skip_on_reasons: Iterable[int] = DEFAULT_SKIP_REASONS,
        resend_unknown: bool = True,
        log: Any = None,
        secrets: Iterable[str] = (),
        progress_seconds: float = DEFAULT_PROGRESS_SECONDS,
        drain_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_concurrency, bool) or not 1 <= int(max_concurrency) <= MAX_CONCURRENCY:
            raise ValueError(f"max_concurrency must be 1 to {MAX_CONCURRENCY}, got {max_concurrency!r}")
        self._send = send
        self._prepare = prepare
        self.ledger = ledger if ledger is not None else ProgressLedger(None)
        self.max_concurrency = int(max_concurrency)
        # "is not None": 0 (or nan) is refused by the limiter, not taken for "no limit".
        self.limiter = (
            SlidingWindowRateLimiter(rate_per_second, clock=clock) if rate_per_second is not None else None
        )
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)
        self.resend_unknown = resend_unknown
        self.log = log if log is not None else logging.getLogger(__name__)
        # Empty texts dropped: replacing "" would put *** between every character.
        self._secrets = tuple(s for s in secrets if s)
        self.progress_seconds = progress_seconds
        self.drain_seconds = drain_seconds
        self._clock = clock
        self._stop = threading.Event()
        self._problems_logged = 0

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop: no new sends start, those in flight are waited for,
        the ledger is written. Safe from a signal handler or another thread."""
        self._stop.set()

    # -- worker side ---------------------------------------------------------------------------

    def _send_one(self, number: str, payload: Any) -> Outcome:
        """Runs in a worker thread: one recipient, start to answer."""
        if self._stop.is_set() or (self.limiter is not None and not self.limiter.acquire(self._stop)):
            return not_sent("the bulk send was stopped before this message")
        try:
            result = self._send(number, payload)
        except WhatsAppError as err:
            return self.classify(err)
        return Outcome("sent", unique=result.unique, reason=int(result.reason), key="1")

    def classify(self, err: WhatsAppError) -> Outcome:
        """The outcome of a send that raised ``err``: the single send's rules (``outcomes.judge``),
        per recipient."""
        text = str(err)
        verdict = judge(err, self.skip_on_reasons)
        if verdict.kind == "invalid":
            return Outcome("invalid", error=text, key="invalid")
        if verdict.kind == "skipped":
            return Outcome("skipped", reason=verdict.reason, error=text, key=str(verdict.reason))
        if verdict.kind == "refused":
            # Reason 6 (after the hook's own retries) is "not sent, try again": retryable.
            return Outcome(
                "failed",
                reason=verdict.reason,
                error=text,
                key=str(verdict.reason),
                retryable=verdict.retryable,
            )
        if verdict.kind == "not_sent":
            return Outcome("failed", error=text, key="unreachable", retryable=True)
        if verdict.kind == "unknown":
            return Outcome("unknown", error=text, key="unknown", retryable=True)
        if verdict.kind == "bad_response":
            # Maybe delivered; the single send does not retry it, and neither does the bulk (only
            # resend_unknown decides later).
            return Outcome("unknown", error=text, key="bad_response")
        return Outcome("failed", error=text, key="config")

    # -- main thread -----------------------------------------------------------------------------

    def run(self, recipients: Sequence[Recipient], *, duplicates: int = 0) -> BulkReport:
        """Send to every recipient that an earlier try did not already settle; return the report.

        Exceptions other than per-recipient ones (the ledger cannot be written, Airflow's timeout)
        propagate after the sends in flight are waited for and the ledger is written.
        """
        self._stop.clear()
        started = self._clock()
        report = BulkReport(results={}, duplicates=duplicates)
        queue = self._settle_earlier(recipients, report)
        progress = _Progress(self, report, len(queue), started)
        run = _Run(queue, ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="wa019-bulk"))
        try:
            self._loop(run, report, progress)
        except BaseException:
            # Airflow's timeout, a ledger write that failed, a bug: stop starting sends, let those in
            # flight finish and record them, so the next try knows whom this one reached.
            self._stop.set()
            with contextlib.suppress(Exception):  # tried again below, after the drain
                self.ledger.flush()  # what is confirmed already, before waiting for the rest
            self._drain(run, report)
            self._finish(run, report, progress, started, raising=True)
            raise
        self._finish(run, report, progress, started, raising=False)
        # Back in the recipients' order (outcomes were stored as they came in).
        report.results = {r.key: report.results[r.key] for r in recipients}
        return report

    def _settle_earlier(self, recipients: Sequence[Recipient], report: BulkReport) -> list[Recipient]:
        """Outcomes known before sending (invalid entries, earlier tries'); returns whom to send to."""
        earlier = self.ledger.load()
        queue: list[Recipient] = []
        carried = 0
        for recipient in recipients:
            if recipient.number is None:
                self._settle(report, recipient, Outcome("invalid", error=recipient.error, key="invalid"))
                continue
            state, unique = earlier.get(recipient.number, (None, None))
            if state == _SENT:
                # Confirmed by an earlier try: sending again would be a duplicate.
                report.results[recipient.key] = Outcome(
                    "sent", unique=unique, reason=1, key="1", earlier=True
                )
                carried += 1
            elif state in (_UNKNOWN, _CLAIMED) and not self.resend_unknown:
                # At most once: the try that died may have delivered it.
                report.results[recipient.key] = Outcome(
                    "unknown",
                    error="delivery unknown in an earlier try; not sent again (resend_unknown=False)",
                    key="unknown",
                    earlier=True,
                )
                carried += 1
            else:
                queue.append(recipient)
        if carried:
            self.log.info(
                "%d recipient(s) settled by an earlier try of this task instance: not sent again", carried
            )
        if report.duplicates:
            self.log.warning(
                "%d duplicate recipient(s) in the list: each number is sent once", report.duplicates
            )
        return queue

    def _loop(self, run: _Run, report: BulkReport, progress: _Progress) -> None:
        streak_key, streak = None, 0
        # Two sends per thread are queued at most, so a worker never waits for this thread, and a
        # stop leaves little to cancel.
        depth = 2 * self.max_concurrency
        while True:
            while not self._stop.is_set() and report.aborted is None and len(run.inflight) < depth:
                if run.position >= len(run.queue):
                    break
                self._dispatch(run, report)
            if not run.inflight:
                return
            done, _ = wait(run.inflight, timeout=_TICK, return_when=FIRST_COMPLETED)
            for future in done:
                recipient = run.inflight.pop(future)
                try:
                    outcome = future.result()  # _send_one turns every WhatsAppError into an outcome
                except BaseException:
                    # A bug below the hook's error handling: the request may have gone out.
                    self._settle(
                        report, recipient, Outcome("unknown", error="unexpected error", key="unknown")
                    )
                    raise
                self._settle(report, recipient, outcome)
                key = outcome.key if outcome.status == "failed" else None
                if key in _ABORT_NOW and report.aborted is None:
                    report.aborted = f"the API answered {describe(outcome)}"
                if key in _ABORT_ON_STREAK:
                    streak = streak + 1 if key == streak_key else 1
                    streak_key = key
                    if streak >= BREAKER_STREAK and report.aborted is None:
                        report.aborted = f"{streak} sends in a row were {describe(outcome)}"
                        report.abort_retryable = key == "unreachable"
                else:
                    streak_key, streak = None, 0
            # On a stop (SIGTERM: Airflow sends SIGKILL 5 s later) write what is confirmed now,
            # before waiting for the requests still in flight.
            if self.ledger.due() or self._stop.is_set():
                self.ledger.flush()
            progress.maybe_log()

    def _dispatch(self, run: _Run, report: BulkReport) -> None:
        """Prepare the next recipient and hand it to a worker (or settle it as invalid)."""
        recipient = run.queue[run.position]
        run.position += 1
        number = recipient.number
        assert number is not None
        try:
            payload = self._prepare(recipient)
        except Exception as err:
            # Whatever rendering this recipient's message raised, it is reported for this
            # recipient alone and the others go on: one bad row must not hold up (or, try after
            # try, block) the whole list. An error that strikes every recipient (an XCom read in
            # the template that fails) makes them all invalid, and max_failure_ratio then fails
            # the task; nothing was sent to them and the ledger holds nothing for them, so
            # clearing the task sends to them.
            self._settle(report, recipient, Outcome("invalid", error=self._render_error(err), key="invalid"))
            return
        except BaseException as err:
            # Airflow's timeout or SIGINT struck mid-render: nothing was sent to this recipient, so
            # settle it as such (releasing its claim) before the try ends.
            self._settle(report, recipient, not_sent(f"not sent: {type(err).__name__}"), quiet=True)
            raise
        if not self.resend_unknown and not self.ledger.is_claimed(number):
            # At most once: the claim is durable before the request can go out, so a try killed
            # mid-request leaves this recipient "unknown" for the next try, never sendable.
            ahead = run.queue[run.position - 1 : run.position - 1 + CLAIM_BATCH]
            self.ledger.claim([r.number for r in ahead if r.number is not None])
        run.inflight[run.executor.submit(self._send_one, number, payload)] = recipient

    def _render_error(self, err: Exception) -> str:
        """The ``error`` of a recipient whose message could not be prepared: the exception's type and
        text (our own validation errors are worded already), without the secrets. The log masks
        phone numbers in it, as in every problem (see :meth:`_log_problem`)."""
        try:
            text = str(err)
        except Exception:  # an exception that cannot even print itself must not end the bulk
            text = ""
        if not isinstance(err, WhatsAppValidationError):
            text = f"{type(err).__name__}: {text}" if text else type(err).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if len(text) > _MAX_ERROR_CHARS:
            text = text[: _MAX_ERROR_CHARS - 3] + "..."
        return text

    def _drain(self, run: _Run, report: BulkReport) -> None:
        for future in list(run.inflight):
            if future.cancel():  # queued, never started: certainly not sent
                self._settle(
                    report, run.inflight.pop(future), not_sent("the bulk send was stopped"), quiet=True
                )
        done, pending = wait(run.inflight, timeout=self.drain_seconds)
        for future in done:
            recipient = run.inflight.pop(future)
            try:
                outcome = future.result()
            except Exception:
                outcome = Outcome("unknown", error="unexpected error", key="unknown")
            self._settle(report, recipient, outcome)
        for future in pending:
            # Still no answer: it may yet be delivered.
            outcome = Outcome(
                "unknown", error="no answer before the bulk send stopped", key="unknown", retryable=True
            )
            self._settle(report, run.inflight.pop(future), outcome)

    def _finish(
        self, run: _Run, report: BulkReport, progress: _Progress, started: float, *, raising: bool
    ) -> None:
        run.executor.shutdown(wait=False, cancel_futures=True)
        report.stopped = self._stop.is_set()
        if report.stopped or report.aborted:
            cause = report.aborted or "the bulk send was stopped"
            for recipient in run.queue[run.position :]:
                # Recorded, so that a claim written for it is released: it was never sent.
                self._settle(report, recipient, not_sent(f"not sent: {cause}"), quiet=True)
            run.position = len(run.queue)
            if report.aborted:
                self.log.error("Bulk send stopped early: %s", report.aborted)
        # Written whatever happened: the next try must see every send this one confirmed.
        try:
            self.ledger.flush()
        except Exception:
            if not raising:
                raise
            self.log.exception("Could not write the bulk send's progress ledger")
        else:
            if raising:
                self.log.warning(
                    "Bulk send interrupted after %d confirmed send(s) in this try; they are in the "
                    "ledger, and the next try sends only to the others",
                    report.sent_now,
                )
        report.elapsed = self._clock() - started
        report.ledger_writes = self.ledger.writes
        progress.log_line()

    def _settle(
        self, report: BulkReport, recipient: Recipient, outcome: Outcome, *, quiet: bool = False
    ) -> None:
        report.results[recipient.key] = outcome
        if outcome.status == "sent":
            report.sent_now += 1
        if recipient.number is not None:
            self.ledger.record(recipient.number, outcome)
        if outcome.status != "sent" and not quiet:
            self._log_problem(recipient, outcome)

    def _log_problem(self, recipient: Recipient, outcome: Outcome) -> None:
        self._problems_logged += 1
        if self._problems_logged > _LOGGED_PROBLEMS:
            if self._problems_logged == _LOGGED_PROBLEMS + 1:
                self.log.warning("More recipients were not sent; XCom 'results' has each one")
            return
        who = mask_number(recipient.number) if recipient.number else scrub(recipient.key)
        self.log.warning("Recipient %s: %s", who, describe(outcome))


@dataclass
class _Run:
    """Mutable state of one :meth:`BulkSender.run`."""

    queue: list[Recipient]
    executor: ThreadPoolExecutor
    position: int = 0
    inflight: dict[Future[Outcome], Recipient] = field(default_factory=dict)


class _Progress:
    """Logs ``sent X/N, failed F, R msg/s, ~T s left`` every ``progress_seconds``."""

    def __init__(self, sender: BulkSender, report: BulkReport, to_send: int, started: float) -> None:
        self._sender = sender
        self._report = report
        self._to_send = to_send
        self._settled_before = len(report.results)  # invalid entries and earlier tries' outcomes
        self._started = started
        self._next = started + sender.progress_seconds

    def maybe_log(self) -> None:
        now = self._sender._clock()
        if now >= self._next:
            self._next = now + self._sender.progress_seconds
            self.log_line(now)

    def log_line(self, now: float | None = None) -> None:
        now = self._sender._clock() if now is None else now
        results = self._report.results
        done = len(results) - self._settled_before
        rate = done / max(now - self._started, 1e-9)
        left = max(self._to_send - done, 0)
        seconds_left = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        statuses = Counter(o.status for o in results.values())
        total = len(results) + left
        line = format_progress(statuses["sent"], total, statuses["failed"], rate, seconds_left)
        self._sender.log.info("%s", line)
