"""The bulk-send engine, :class:`BulkSender`: sends on an asyncio event loop with at most
``max_concurrency`` requests in flight over one HTTP session, classifies every answer with the
single send's rules, writes the ledger in batches and logs a progress line every few seconds.

Thread model, and why. The requests run on an event loop in one worker thread
(``wa019-bulk-loop``); everything that talks to Airflow stays on the thread that called
:meth:`BulkSender.run` (the task's own): rendering each recipient's message with the task context
(``prepare``), the progress ledger's writes, the progress lines, and (after ``run`` returns) XCom.
The task SDK's channel to its supervisor is not meant for several threads, and a ledger write is
a blocking round trip of about 10 ms (one per 500 outcomes, or one per half ``max_concurrency`` of
claims with ``resend_unknown=False``): on the event loop it would stall every request in flight for those
10 ms; on the task thread it blocks only that thread, the GIL released, while the loop goes on
with the messages already handed to it. (The other way round, the loop on the task thread, puts
each of those stalls into the loop.)

How the two threads meet, cheaply on one core: the task thread renders messages ahead and hands
them to the loop in batches (one ``call_soon_threadsafe`` per batch), at most
``2 * max_concurrency`` handed over and not yet settled, so a loop worker never waits for the
task thread and a stop or a refused token leaves little to cancel. Loop workers send and hand
back only the raw result (the ``SendResult`` or the exception), in batches through a
``queue.SimpleQueue`` at most every 2 ms, so the task thread wakes once per batch, not once per
message. The task thread then judges each result (:func:`~airflow_provider_wa019.outcomes.judge`,
the single send's rules), records it and renders the next ones. The loop thread only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import queue as queue_module
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_provider_wa019.bulk.ledger import _CLAIMED, _SENT, _UNKNOWN, ProgressLedger
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
#: The loop hands results back at most this often: one wake of the task thread per batch.
_HAND_BACK_SECONDS = 0.002
#: How long the task thread waits for the loop thread to end once its work is done.
_JOIN_SECONDS = 10.0

Send = Callable[[str, Any], Any]


class _NotStarted:
    """Handed back for a message the loop did not send: the bulk was stopped first."""

    def __repr__(self) -> str:
        return "<not started>"


_NOT_STARTED = _NotStarted()


class _LoopFailed(Exception):
    """The event loop thread ended by an error of its own (a bug): nothing more comes back."""


class BulkSender:
    """Send to many recipients with bounded concurrency and rate, recording each outcome.

    :param send: ``send(number, payload)``, the message's one send with its own per-message
        retries: a coroutine function (an ``async def``, or a
        :class:`~airflow_provider_wa019.hooks.whatsapp_async.WhatsAppAsyncHook`'s
        ``send_message``/``send_template``), awaited on the engine's event loop; or a plain
        function (a sync hook's method), run in one of ``max_concurrency`` worker threads (an
        awaitable it returns is awaited on the loop). Returns the API's
        :class:`~airflow_provider_wa019.api.SendResult` or raises a ``WhatsAppError``.
    :param prepare: called on the calling thread as ``prepare(recipient)`` before the send;
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
    :param aclose: awaited on the engine's event loop when a run ends, e.g. the async hook's
        ``close``: its HTTP session belongs to that loop.
    """

    def __init__(
        self,
        send: Send,
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
        aclose: Callable[[], Awaitable[Any]] | None = None,
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
        self._aclose = aclose
        # Plain flags, not Events: stop() may run in a signal handler, which must take no lock.
        self._stop_requested = False  # stop() was called
        self._halted = False  # no new send may start (stopped, or aborted): read by the loop
        self._problems_logged = 0

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop: no new sends start, those in flight are waited for,
        the ledger is written. Safe from a signal handler or another thread."""
        self._stop_requested = True
        self._halted = True

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

    # -- the calling (task's) thread ---------------------------------------------------------------

    def run(self, recipients: Sequence[Recipient], *, duplicates: int = 0) -> BulkReport:
        """Send to every recipient that an earlier try did not already settle; return the report.

        Exceptions other than per-recipient ones (the ledger cannot be written, Airflow's timeout)
        propagate after the sends in flight are waited for and the ledger is written.
        """
        self._stop_requested = self._halted = False
        started = self._clock()
        report = BulkReport(results={}, duplicates=duplicates)
        queue = self._settle_earlier(recipients, report)
        progress = _Progress(self, report, len(queue), started)
        # At most once needs the claims only where they outlast the try.
        run = _Run(queue, claims=not self.resend_unknown and self.ledger.durable)
        try:
            if queue:
                run.loop = _LoopThread(self)
            self._loop(run, report, progress)
        except BaseException:
            # Airflow's timeout, a ledger write that failed, a bug: stop starting sends, let those in
            # flight finish and record them, so the next try knows whom this one reached.
            self._stop_requested = self._halted = True
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
        # At most two messages per request in flight are handed over and not settled: the loop
        # always has the next one at hand, and a stop or abort leaves little to give back.
        depth = 2 * self.max_concurrency
        wait = min(_TICK, self.progress_seconds)
        released = False
        if run.loop is None:
            return  # nobody left to send to
        while True:
            self._hand_over(run, report, depth)
            if self._halted and not released:
                run.loop.release_queued()  # what no worker took yet comes back at once, not sent
                released = True
            if not run.inflight:
                return
            run.loop.wait(wait)
            self._take_back(run, report)
            # On a stop (SIGTERM: Airflow sends SIGKILL 5 s later) write what is confirmed now,
            # before waiting for the requests still in flight.
            if self.ledger.due() or self._stop_requested:
                self.ledger.flush()
            progress.maybe_log()

    def _hand_over(self, run: _Run, report: BulkReport, depth: int) -> None:
        """Render the next messages and hand them to the loop: one by one while a worker waits
        for one, in one batch beyond that (the loop's next ones, handed over a call at a time).
        At most once with a durable ledger: see :meth:`_hand_over_claimed`."""
        assert run.loop is not None
        if run.claims:
            self._hand_over_claimed(run, report)
            return
        batch: list[tuple[Recipient, Any]] = []
        try:
            while not self._halted and run.position < len(run.queue) and len(run.inflight) < depth:
                item = self._dispatch(run, report)
                if item is None:
                    continue
                batch.append(item)
                run.inflight[item[0].key] = item[0]
                if len(run.inflight) <= self.max_concurrency:
                    # A worker is free: it gets this one now. When nothing was in flight, wait
                    # until the loop took it, so that what this thread does next (an exception
                    # in the next render) finds it sent, as it would with a worker thread.
                    # Out of ``batch`` first: once handed over, only the loop may settle it.
                    handing, batch = batch, []
                    run.loop.submit(handing, wait_taken=len(run.inflight) == 1)
        except BaseException:
            self._settle_unsent(run, report, batch)
            raise
        if batch:
            run.loop.submit(batch)

    def _hand_over_claimed(self, run: _Run, report: BulkReport) -> None:
        """At most once (``resend_unknown=False``, durable ledger): claim, then hand over.

        A message is handed to the loop only once its recipient's claim is written, and at most
        ``max_concurrency`` are handed over and not settled. Each claim is written together with
        every outcome settled so far (one ledger write, :meth:`ProgressLedger.claim`), so the
        ledger never holds more than ``max_concurrency`` claims without an outcome: a hard kill
        leaves at most that many recipients ``unknown`` (those in flight, or answered after the
        last write). Claims go in batches of at least half the concurrency (one write per
        batch, not per message), or whenever nothing is in flight."""
        assert run.loop is not None
        room = self.max_concurrency - len(run.inflight)
        if room < max(1, self.max_concurrency // 2) and run.inflight:
            return
        was_idle = not run.inflight
        batch: list[tuple[Recipient, Any]] = []
        try:
            while not self._halted and run.position < len(run.queue) and len(batch) < room:
                item = self._dispatch(run, report)
                if item is not None:
                    batch.append(item)
            if not batch:
                return
            self.ledger.claim([recipient.number for recipient, _ in batch if recipient.number])
        except BaseException:
            self._settle_unsent(run, report, batch)  # a claim written for them is released
            raise
        for recipient, _ in batch:
            run.inflight[recipient.key] = recipient
        run.loop.submit(batch, wait_taken=was_idle)

    def _settle_unsent(self, run: _Run, report: BulkReport, batch: list[tuple[Recipient, Any]]) -> None:
        for recipient, _ in batch:  # rendered, never handed over: certainly not sent
            run.inflight.pop(recipient.key, None)
            self._settle(report, recipient, not_sent("the bulk send was stopped"), quiet=True)

    def _take_back(self, run: _Run, report: BulkReport, *, draining: bool = False) -> None:
        """Settle what the loop handed back. Each result stays in the loop's ``handed_back``
        until it is settled, so an exception raised meanwhile (Airflow's timeout) loses none:
        the drain settles the rest."""
        assert run.loop is not None
        handed_back = run.loop.handed_back
        results = report.results
        while handed_back:
            recipient, result = handed_back[0]
            if recipient.key not in results:  # else settled already, just before an exception
                if result is _NOT_STARTED:
                    self._settle(report, recipient, self._not_started(report), quiet=True)
                else:
                    try:
                        outcome = self._outcome_of(result)
                    except BaseException:
                        # A bug below the hook's error handling: the request may have gone out.
                        unexpected = Outcome("unknown", error="unexpected error", key="unknown")
                        self._settle(report, recipient, unexpected)
                        if not draining:
                            handed_back.popleft()
                            run.inflight.pop(recipient.key, None)
                            raise
                    else:
                        self._settle(report, recipient, outcome)
                        if not draining:
                            self._watch(run, report, outcome)
            handed_back.popleft()
            run.inflight.pop(recipient.key, None)

    def _watch(self, run: _Run, report: BulkReport, outcome: Outcome) -> None:
        """The breaker: stop the bulk on an answer that every further send would get too."""
        key = outcome.key if outcome.status == "failed" else None
        if key in _ABORT_NOW and report.aborted is None:
            self._abort(report, f"the API answered {describe(outcome)}")
        if key in _ABORT_ON_STREAK:
            run.streak = run.streak + 1 if key == run.streak_key else 1
            run.streak_key = key
            if run.streak >= BREAKER_STREAK and report.aborted is None:
                self._abort(report, f"{run.streak} sends in a row were {describe(outcome)}")
                report.abort_retryable = key == "unreachable"
        else:
            run.streak_key, run.streak = None, 0

    def _abort(self, report: BulkReport, why: str) -> None:
        report.aborted = why
        self._halted = True  # messages handed over and not started yet come back not sent

    def _not_started(self, report: BulkReport) -> Outcome:
        if report.aborted and not self._stop_requested:
            return not_sent(f"not sent: {report.aborted}")
        return not_sent("the bulk send was stopped before this message")

    def _outcome_of(self, result: Any) -> Outcome:
        """What the loop handed back for a message it sent: that recipient's outcome."""
        if isinstance(result, WhatsAppError):
            return self.classify(result)
        if isinstance(result, BaseException):
            raise result
        return Outcome("sent", unique=result.unique, reason=int(result.reason), key="1")

    def _dispatch(self, run: _Run, report: BulkReport) -> tuple[Recipient, Any] | None:
        """Prepare the next recipient's message for the loop (or settle it as invalid: None)."""
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
            return None
        except BaseException as err:
            # Airflow's timeout or SIGINT struck mid-render: nothing was sent to this recipient, so
            # settle it as such (releasing its claim) before the try ends.
            self._settle(report, recipient, not_sent(f"not sent: {type(err).__name__}"), quiet=True)
            raise
        return recipient, payload

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
        """After an exception: wait up to ``drain_seconds`` for the messages handed to the loop
        (those no worker took yet come back at once, not sent), and record what they did."""
        if run.loop is not None:
            self._take_back(run, report, draining=True)  # handed back before the exception
            if run.inflight:
                run.loop.release_queued()
            deadline = self._clock() + self.drain_seconds
            while run.inflight and (left := deadline - self._clock()) > 0:
                try:
                    run.loop.wait(min(_TICK, left))
                except _LoopFailed:
                    break
                self._take_back(run, report, draining=True)
        for recipient in run.inflight.values():
            if recipient.key in report.results:
                continue
            # Still no answer: it may yet be delivered.
            outcome = Outcome(
                "unknown", error="no answer before the bulk send stopped", key="unknown", retryable=True
            )
            self._settle(report, recipient, outcome)
        run.inflight.clear()

    def _finish(
        self, run: _Run, report: BulkReport, progress: _Progress, started: float, *, raising: bool
    ) -> None:
        if run.loop is not None:
            run.loop.close(self.log)
        report.stopped = self._stop_requested
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


class _Run:
    """Mutable state of one :meth:`BulkSender.run` (on the calling thread)."""

    __slots__ = ("claims", "inflight", "loop", "position", "queue", "streak", "streak_key")

    def __init__(self, queue: list[Recipient], *, claims: bool = False) -> None:
        self.queue = queue
        #: Claim each recipient in the ledger before its send (at most once, durable ledger).
        self.claims = claims
        self.loop: _LoopThread | None = None
        self.position = 0
        #: Handed to the loop and not settled yet, by key.
        self.inflight: dict[str, Recipient] = {}
        #: The breaker's count of like failures in a row, and their key.
        self.streak = 0
        self.streak_key: str | None = None


class _LoopThread:
    """The event loop and its thread, where ``max_concurrency`` workers take the handed-over
    messages in order and send them. The task thread calls only :meth:`submit`,
    :meth:`release_queued`, :meth:`wait` and :meth:`close`, and reads :attr:`handed_back`; the
    rest runs on the loop."""

    def __init__(self, engine: BulkSender) -> None:
        self._engine = engine
        send = engine._send
        # A callable object with an async __call__ counts as async too.
        self._is_async = inspect.iscoroutinefunction(send) or inspect.iscoroutinefunction(
            getattr(send, "__call__", None)  # noqa: B004
        )
        self._pool = (
            None
            if self._is_async
            else ThreadPoolExecutor(engine.max_concurrency, thread_name_prefix="wa019-bulk")
        )
        #: ``(recipient, SendResult | exception | _NOT_STARTED)``, appended by the loop, removed by
        #: the task thread once settled (deque appends and pops are atomic: no lock).
        self.handed_back: deque[tuple[Recipient, Any]] = deque()
        #: Why the loop thread ended on its own (a bug), or None.
        self.failed: BaseException | None = None
        self._wake: queue_module.SimpleQueue[None] = queue_module.SimpleQueue()
        self._wake_timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[tuple[Recipient, Any] | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[Any]] = set()
        self._taken = threading.Event()  # a worker took a message (see submit)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="wa019-bulk-loop", daemon=True)
        self._thread.start()

    # -- task thread ---------------------------------------------------------------------------

    def submit(self, batch: list[tuple[Recipient, Any]], *, wait_taken: bool = False) -> None:
        """Hand messages to the loop (one wake of the loop per batch); with ``wait_taken``, wait
        (up to 1 s) until a worker took the first one."""
        if wait_taken:
            self._taken.clear()
        self._loop.call_soon_threadsafe(self._enqueue, batch)
        if wait_taken:
            self._taken.wait(1.0)

    def release_queued(self) -> None:
        """Messages no worker took yet come back at once as not started (after a stop)."""
        with contextlib.suppress(RuntimeError):  # the loop ended already
            self._loop.call_soon_threadsafe(self._give_back_queued)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the loop to hand something back (see :attr:`handed_back`).

        :raises _LoopFailed: the loop thread ended by an error of its own, with nothing handed
            back (called only while messages are in flight: nothing more would come).
        """
        if not self.handed_back:
            with contextlib.suppress(queue_module.Empty):
                self._wake.get(timeout=timeout)
        with contextlib.suppress(queue_module.Empty):
            while True:  # wakes for what is about to be settled anyway
                self._wake.get_nowait()
        if not self.handed_back and not self._thread.is_alive():
            raise _LoopFailed(f"the bulk send's event loop ended: {self.failed!r}") from self.failed

    def close(self, log: Any) -> None:
        """End the loop: idle workers end, one still sending (a drain that gave up waiting: its
        recipient is settled "unknown" already) is cancelled, ``aclose`` is awaited."""
        with contextlib.suppress(RuntimeError):  # the loop ended already
            self._loop.call_soon_threadsafe(self._shut_down)
        self._thread.join(_JOIN_SECONDS)
        if self._thread.is_alive():
            log.warning("The bulk send's event loop did not end within %.0f s", _JOIN_SECONDS)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- loop thread ---------------------------------------------------------------------------

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as err:  # a bug of the engine's own: the task thread must not wait
            self.failed = err
            self._wake.put(None)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())  # aiohttp's DNS lookups
            loop.close()

    async def _serve(self) -> None:
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._engine.max_concurrency)]
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            self._wake_up()
            if self._engine._aclose is not None:
                with contextlib.suppress(Exception):  # releasing a session must not end the task
                    await self._engine._aclose()

    def _enqueue(self, batch: list[tuple[Recipient, Any]]) -> None:
        put = self._queue.put_nowait
        for item in batch:
            put(item)

    def _give_back_queued(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                self.handed_back.append((item[0], _NOT_STARTED))
        self._wake_up()

    def _shut_down(self) -> None:
        for worker in self._busy:
            worker.cancel()
        for _ in self._workers:
            self._queue.put_nowait(None)

    def _wake_up(self) -> None:
        self._wake_timer = None
        self._wake.put(None)

    async def _worker(self) -> None:
        engine = self._engine
        limiter = engine.limiter
        get = self._queue.get
        handed_back = self.handed_back
        this = asyncio.current_task()
        assert this is not None
        while True:
            item = await get()
            if item is None:
                return
            recipient, payload = item
            self._busy.add(this)
            if not self._taken.is_set():
                self._taken.set()
            try:
                if engine._halted or (
                    limiter is not None and not await limiter.acquire_async(lambda: engine._halted)
                ):
                    result: Any = _NOT_STARTED
                else:
                    result = await self._call(recipient.number, payload)
            except Exception as err:  # a WhatsAppError, or a bug: judged on the task thread
                result = err
            finally:
                self._busy.discard(this)
            handed_back.append((recipient, result))
            # One wake of the task thread per batch of results, not per message.
            if self._wake_timer is None:
                self._wake_timer = self._loop.call_later(_HAND_BACK_SECONDS, self._wake_up)

    async def _call(self, number: str | None, payload: Any) -> Any:
        send = self._engine._send
        if self._is_async:
            return await send(number, payload)
        result = await self._loop.run_in_executor(self._pool, send, number, payload)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result


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
