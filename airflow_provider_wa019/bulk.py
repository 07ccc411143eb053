"""The bulk-send engine behind ``WhatsAppBulkSendOperator``: many recipients in one task.

Plain Python (no Airflow import at module level), so benchmarks and other callers can drive it
with a hook and an in-memory ledger. The pieces:

* :func:`parse_recipients`: a list of numbers or dicts -> distinct :class:`Recipient` objects,
  malformed entries kept as invalid (reported, never sent).
* :class:`SlidingWindowRateLimiter`: at most N sends *start* in any one-second window.
* :class:`ProgressLedger`: the durable record of which recipients this task instance already
  reached, so a retry or a cleared re-run never sends to them again (see its docstring).
* :class:`BulkSender`: sends with at most ``max_concurrency`` requests in flight over the caller's
  one HTTP session, classifies every answer with the single send's rules, writes the ledger in
  batches and logs a progress line every few seconds.

Thread model: worker threads only call the send function (the hook) and the rate limiter. Everything
that talks to Airflow (rendering templates with the task context, the ledger's
``task_state_store`` writes, XCom, logging progress) stays on the calling (task's main) thread:
the task SDK's channel to its supervisor is not meant to be used from several threads at once.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal, Protocol

from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.validation import mask_number, normalize_number

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "LEDGER_KEY_PREFIX",
    "MAX_CONCURRENCY",
    "BulkReport",
    "BulkSender",
    "LedgerStore",
    "MemoryLedgerStore",
    "Outcome",
    "ProgressLedger",
    "Recipient",
    "SlidingWindowRateLimiter",
    "format_progress",
    "parse_recipients",
    "task_state_store_of",
]

Status = Literal["sent", "skipped", "failed", "invalid", "unknown"]

DEFAULT_MAX_CONCURRENCY = 4
#: The hook's connection pool keeps this many connections per host (``POOL_MAXSIZE``); more
#: threads than that would open and drop connections on every send. Literal here so this module
#: does not import the hook (and requests); a test checks that the two agree.
MAX_CONCURRENCY = 32
#: The ledger lives under these ``task_state_store`` keys: ``wa019_bulk/0``, ``wa019_bulk/1``...
LEDGER_KEY_PREFIX = "wa019_bulk/"
#: A ledger batch is written when this many outcomes are pending, or ...
LEDGER_BATCH = 500
#: ... when the oldest pending outcome is this old. Bounds what a hard kill can lose (see README).
LEDGER_FLUSH_SECONDS = 1.0
#: With ``resend_unknown=False``, recipients are claimed in the ledger this many at a time before
#: they are sent; a hard kill turns at most this many never-sent claims into "unknown".
CLAIM_BATCH = 100
DEFAULT_PROGRESS_SECONDS = 5.0
#: Stop the bulk after this many answers in a row that would hit every recipient alike (the API
#: unreachable, reason 2: the sender or template does not exist).
BREAKER_STREAK = 10
#: Failure keys that stop the bulk at once: every further send would get the same answer.
_ABORT_NOW = frozenset({"3", "config"})
_ABORT_ON_STREAK = frozenset({"2", "unreachable"})
#: Failure key of recipients a stopped bulk never sent to.
NOT_SENT = "not_sent"
#: How many problems are logged one by one before they are only counted.
_LOGGED_PROBLEMS = 20
#: A render error's text is cut to this length: it lands in XCom once per recipient.
_MAX_ERROR_CHARS = 1000
_TICK = 0.25  # seconds between checks for a stop request while waiting on sends


# --------------------------------------------------------------------------------------------
# Recipients and outcomes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """One distinct recipient of a bulk send.

    :ivar key: what XCom ``results`` is keyed by: the normalized number (``972501234567``), or for
        an invalid entry its raw ``to`` (or ``recipients[i]`` when it has none).
    :ivar number: the normalized number; None when the entry is invalid.
    :ivar values: the entry's own values (``to`` included), top-level names in the body template.
    :ivar error: why the entry is invalid (None when valid).
    """

    key: str
    number: str | None
    values: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
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


def parse_recipients(raw: Any, *, region: str | None = None) -> tuple[list[Recipient], int]:
    """Turn the operator's ``recipients`` into distinct recipients, in order.

    ``raw`` is a list (or tuple) whose items are numbers (``"+972 50-123-4567"``) or dicts with a
    ``to`` and any other values. A text of such a list is accepted too, as JSON or as a Python
    literal: without ``render_template_as_native_obj``, Jinja renders ``"{{ params.lst }}"`` or an
    ``xcom_pull`` to the list's repr (``"['972501234567', {'to': '972...', 'name': 'Dana'}]"``).
    Entries whose number cannot be read become invalid recipients. A number listed twice is sent
    once (the first entry wins).

    :return: the recipients and how many duplicate entries were dropped.
    :raises ValueError: ``raw`` is not a list of recipients at all.
    """
    if isinstance(raw, str):
        raw = _list_from_text(raw)
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise ValueError(f"recipients must be a list of numbers or dicts, got {type(raw).__name__}")
    recipients: dict[str, Recipient] = {}
    duplicates = 0
    for index, item in enumerate(raw):
        recipient = _parse_one(index, item, region)
        if recipient.key in recipients:
            duplicates += 1
            continue
        recipients[recipient.key] = recipient
    return list(recipients.values()), duplicates


def _list_from_text(text: str) -> list[Any] | tuple[Any, ...]:
    """The list a rendered ``recipients`` text holds: JSON first, then a Python literal (never
    evaluated as code: ``ast.literal_eval`` builds only literals)."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        parsed = None
    if parsed is None and text.strip().startswith(("[", "(")):
        try:
            parsed = ast.literal_eval(text.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: a literal that cannot be built, such as a dict keyed by a list.
            parsed = None
    if isinstance(parsed, (list, tuple)):
        return parsed
    raise ValueError(
        "recipients is a string, not a list: pass the upstream XComArg itself "
        "(recipients=my_task()), or a text of a list (JSON, or a Python literal as Jinja renders one)"
    )


def _parse_one(index: int, item: Any, region: str | None) -> Recipient:
    if isinstance(item, Mapping):
        values = dict(item)
        to = values.get("to")
        if to is None or to == "":
            return Recipient(f"recipients[{index}]", None, values, "a recipient dict needs a 'to' number")
    else:
        to = item
        values = {"to": item}
    try:
        number = normalize_number(to, field="to", region=region)
    except WhatsAppValidationError as err:
        readable = isinstance(to, (str, int)) and not isinstance(to, bool) and str(to).strip()
        return Recipient(str(to) if readable else f"recipients[{index}]", None, values, str(err))
    return Recipient(number, number, values)


# --------------------------------------------------------------------------------------------
# Rate limit
# --------------------------------------------------------------------------------------------


class SlidingWindowRateLimiter:
    """At most ``rate_per_second`` starts in any window of one second (sliding, not per calendar
    second). Thread-safe.

    A rate of 1 or more allows ``floor(rate)`` starts per second; a rate below 1 allows one start
    per ``1 / rate`` seconds.
    """

    def __init__(self, rate_per_second: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        # inf would overflow int() below and nan never compares: neither is a rate.
        if not _is_positive_number(rate_per_second):
            raise ValueError(f"rate_per_second must be a finite number > 0, got {rate_per_second!r}")
        if rate_per_second >= 1:
            self.limit, self.window = int(rate_per_second), 1.0
        else:
            self.limit, self.window = 1, 1.0 / rate_per_second
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a start is allowed and book it; False if ``stop`` was set meanwhile."""
        while True:
            with self._lock:
                now = self._clock()
                while self._starts and now - self._starts[0] >= self.window:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    return True
                delay = self._starts[0] + self.window - now
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                return False


def _is_positive_number(value: Any) -> bool:
    # bool is an int to Python, but True is no meant rate.
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# --------------------------------------------------------------------------------------------
# Ledger
# --------------------------------------------------------------------------------------------


class LedgerStore(Protocol):
    """Where the ledger is kept: ``get``/``set`` of JSON values, as Airflow's
    ``context["task_state_store"]`` offers them (see :func:`task_state_store_of`)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


class MemoryLedgerStore:
    """A :class:`LedgerStore` in a dict (benchmarks, or a caller with no Airflow). ``writes``
    counts ``set`` calls; ``write_delay`` makes each write cost that long, like a round trip."""

    def __init__(self, write_delay: float = 0.0) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0
        self.write_delay = write_delay

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any) -> None:
        if self.write_delay:
            time.sleep(self.write_delay)
        self.data[key] = json.dumps(value)  # stored as JSON text, like Airflow does
        self.writes += 1


class _TaskStateStore:
    """``context["task_state_store"]`` with every key written to never expire.

    The rows still go when their dag run is deleted (``airflow db clean``); a retention would let
    a cleared re-run weeks later forget whom the task already messaged.
    """

    def __init__(self, accessor: Any) -> None:
        from airflow.sdk import NEVER_EXPIRE

        self._accessor = accessor
        self._never = NEVER_EXPIRE

    def get(self, key: str, default: Any = None) -> Any:
        return self._accessor.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self._accessor.set(key, value, retention=self._never)


def task_state_store_of(context: Mapping[str, Any]) -> LedgerStore | None:
    """The task instance's durable store, or None on Airflow older than 3.3.

    ``context["task_state_store"]`` arrived in Airflow 3.3 (task SDK 1.3): key/value pairs scoped
    to (dag, run, task, map index), kept in the metadata DB through the Execution API, so every
    worker of a distributed deployment reads what an earlier try wrote, and kept when the task is
    cleared (they go with the dag run). Airflow 3.0-3.2 have nothing equivalent that survives a
    retry (XComs of a task instance are cleared when a new try starts), so there the bulk send has
    no ledger and the operator never lets Airflow retry it (see ``WhatsAppBulkSendOperator``).
    """
    accessor = context.get("task_state_store")
    return None if accessor is None else _TaskStateStore(accessor)


def clear_on_success_configured() -> bool:
    """True when ``[state_store] clear_on_success`` (Airflow 3.3+) wipes the ledger on success, so a
    cleared re-run of a successful bulk would not know whom it reached."""
    try:
        from airflow.sdk.configuration import conf

        return conf.getboolean("state_store", "clear_on_success", fallback=False)
    except Exception:  # an older Airflow without the section or the SDK's conf
        return False


# States of a number in the ledger; in memory a sent one is "sent:<unique>".
_SENT, _UNKNOWN, _CLAIMED, _RELEASED = "sent", "unknown", "claimed", "released"


class ProgressLedger:
    """Which recipients a task instance has reached, kept across its tries.

    Stored as numbered chunks (``wa019_bulk/0``, ``/1``, ...) in a :class:`LedgerStore`; each
    chunk holds what changed since the one before: ``{"sent": {number: unique}, "unknown":
    [numbers], "claimed": [numbers], "released": [numbers]}``. Chunks are only ever added, never
    rewritten, so a write costs the same at the end of a 100,000-recipient send as at its start,
    and a chunk stays small (about ``batch_size`` entries at most). A try reads the chunks back in order
    (later entries override earlier ones, except that ``sent`` is final) and writes its own after
    them.

    What each state means for the next try:

    * ``sent``: confirmed by the API. Never sent again, by any later try of this task instance.
    * ``unknown``: the request went out and no usable answer came back (it may have been
      delivered). Sent again only with ``resend_unknown=True``.
    * ``claimed`` (only with ``resend_unknown=False``): written *before* the send starts, so a try
      killed mid-request leaves a trace; the next try treats it as ``unknown``.
    * ``released``: a claimed recipient that was definitely not sent (refused, invalid, stopped).

    Writes happen in batches (``batch_size`` outcomes, or ``flush_seconds`` after the oldest
    unwritten one) and when the try ends for any reason that lets Python run (an error, Airflow's
    timeout, SIGTERM). Only a hard kill (SIGKILL, lost node) loses the unwritten batch: see the
    README for what that means per mode.
    """

    def __init__(
        self,
        store: LedgerStore | None,
        *,
        batch_size: int = LEDGER_BATCH,
        flush_seconds: float = LEDGER_FLUSH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._state: dict[str, str] = {}  # number -> state, or "sent:<unique>"
        self._dirty: dict[str, str] = {}
        self._dirty_since: float | None = None
        self._next_chunk = 0
        self.writes = 0

    @property
    def durable(self) -> bool:
        """False when there is no store: the ledger then only lasts as long as this try."""
        return self.store is not None

    def load(self) -> dict[str, tuple[str, str | None]]:
        """Read every chunk an earlier try wrote: number -> (state, unique or None)."""
        if self.store is None:
            return {}
        while True:
            chunk = self.store.get(f"{LEDGER_KEY_PREFIX}{self._next_chunk}")
            if chunk is None:
                break
            self._apply(chunk)
            self._next_chunk += 1
        return {number: self._split(value) for number, value in self._state.items()}

    def _apply(self, chunk: Mapping[str, Any]) -> None:
        for number in chunk.get("claimed", ()):
            self._merge(number, _CLAIMED)
        for number in chunk.get("released", ()):
            self._merge(number, _RELEASED)
        for number in chunk.get("unknown", ()):
            self._merge(number, _UNKNOWN)
        for number, unique in (chunk.get("sent") or {}).items():
            self._merge(number, f"{_SENT}:{unique}")

    def _merge(self, number: str, value: str) -> None:
        # A confirmed send is final: nothing a later try records can make it sendable again.
        if not self._is_sent(number):
            self._state[number] = value

    @staticmethod
    def _split(value: str) -> tuple[str, str | None]:
        state, _, unique = value.partition(":")
        return state, unique or None

    def claim(self, numbers: Sequence[str]) -> None:
        """Durably mark ``numbers`` as about to be sent (written at once, before any of them goes
        out): a try killed mid-request then leaves them ``unknown`` instead of sendable."""
        # Released (refused earlier) numbers are claimed again: this try may deliver them.
        fresh = [n for n in numbers if self._state.get(n, "") != _CLAIMED and not self._is_sent(n)]
        if not fresh:
            return
        for number in fresh:
            self._state[number] = _CLAIMED
        self._write({"claimed": fresh})

    def is_claimed(self, number: str) -> bool:
        return self._state.get(number) == _CLAIMED

    def _is_sent(self, number: str) -> bool:
        return self._state.get(number, "").startswith(_SENT)

    def record(self, number: str, outcome: Outcome) -> None:
        """Note an outcome of this try; written with the next batch."""
        if outcome.status == "sent":
            value = f"{_SENT}:{outcome.unique}"
        elif outcome.status == "unknown":
            value = _UNKNOWN
        elif self._state.get(number) in (_CLAIMED, _UNKNOWN):
            value = _RELEASED  # definitely not delivered now: a later try may send it
        else:
            return  # nothing sent and nothing claimed: nothing a later try needs to know
        self._merge(number, value)
        self._dirty[number] = self._state[number]
        if self._dirty_since is None:
            self._dirty_since = self._clock()

    def due(self) -> bool:
        """Whether a batch should be written now."""
        return bool(self._dirty) and (
            len(self._dirty) >= self.batch_size
            or self._clock() - (self._dirty_since or 0) >= self.flush_seconds
        )

    def flush(self) -> None:
        """Write the pending outcomes as one chunk (nothing when none are pending)."""
        if not self._dirty:
            return
        chunk: dict[str, Any] = {}
        for number, value in self._dirty.items():
            state, unique = self._split(value)
            if state == _SENT:
                chunk.setdefault("sent", {})[number] = unique
            else:
                chunk.setdefault(state, []).append(number)
        self._write(chunk)
        self._dirty.clear()
        self._dirty_since = None

    def _write(self, chunk: dict[str, Any]) -> None:
        if self.store is None:
            return
        # Chunk numbers only advance after a successful write, so a failed write leaves no gap
        # that would hide later chunks from the next try's read.
        self.store.set(f"{LEDGER_KEY_PREFIX}{self._next_chunk}", {"v": 1, **chunk})
        self._next_chunk += 1
        self.writes += 1


# --------------------------------------------------------------------------------------------
# Progress and report
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


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
        skip_on_reasons: Iterable[int] = (7, 8),
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
            return _not_sent("the bulk send was stopped before this message")
        try:
            result = self._send(number, payload)
        except WhatsAppError as err:
            return self.classify(err)
        return Outcome("sent", unique=result.unique, reason=int(result.reason), key="1")

    def classify(self, err: WhatsAppError) -> Outcome:
        """The outcome of a send that raised ``err``: the single send's rules, per recipient."""
        text = str(err)
        if isinstance(err, WhatsAppValidationError):
            return Outcome("invalid", error=text, key="invalid")
        if isinstance(err, WhatsAppAPIError):
            key = str(err.reason)
            if err.reason in self.skip_on_reasons:
                return Outcome("skipped", reason=err.reason, error=text, key=key)
            # Reason 6 (after the hook's own retries) is "not sent, try again": retryable.
            return Outcome("failed", reason=err.reason, error=text, key=key, retryable=err.retryable)
        if isinstance(err, WhatsAppTransientError):
            # Connection refused, 429/502/503/504 after the hook's retries: nothing was sent.
            return Outcome("failed", error=text, key="unreachable", retryable=True)
        if isinstance(err, WhatsAppDeliveryUnknownError):
            # Read timeout, HTTP 500, connection dropped mid-answer: maybe delivered.
            return Outcome("unknown", error=text, key="unknown", retryable=True)
        if isinstance(err, WhatsAppConfigError):
            return Outcome("failed", error=text, key="config")
        # WhatsAppResponseError: an answer that is not the API's JSON. Maybe delivered; the single
        # send does not retry it, and neither does the bulk (only resend_unknown decides later).
        return Outcome("unknown", error=text, key="bad_response")

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
                    report.aborted = f"the API answered {_describe(outcome)}"
                if key in _ABORT_ON_STREAK:
                    streak = streak + 1 if key == streak_key else 1
                    streak_key = key
                    if streak >= BREAKER_STREAK and report.aborted is None:
                        report.aborted = f"{streak} sends in a row were {_describe(outcome)}"
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
            self._settle(report, recipient, _not_sent(f"not sent: {type(err).__name__}"), quiet=True)
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
                    report, run.inflight.pop(future), _not_sent("the bulk send was stopped"), quiet=True
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
                self._settle(report, recipient, _not_sent(f"not sent: {cause}"), quiet=True)
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
        self.log.warning("Recipient %s: %s", who, _describe(outcome))


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


def _not_sent(error: str) -> Outcome:
    # Nothing went out for this recipient, so a later try may send it.
    return Outcome("failed", error=error, key=NOT_SENT, retryable=True)


def _describe(outcome: Outcome) -> str:
    """A log-safe description of an outcome: phone numbers in it are masked."""
    if outcome.reason is not None:
        from airflow_provider_wa019.api import reason_meaning

        return f"{outcome.status}, reason {outcome.reason} ({reason_meaning(outcome.reason)})"
    return f"{outcome.status}: {scrub(outcome.error or outcome.key or '')}"


# A run of digits as people write numbers: "+972 50-123-4567", "972501234567", "(050) 123.4567".
_NUMBER_LIKE = re.compile(r"\+?\d[\d\s\-().]{4,}\d")
_IPV4 = re.compile(r"\d{1,3}(\.\d{1,3}){3}")


def scrub(text: str) -> str:
    """``text`` with every phone-number-like run (8 or more digits) masked to its last 4 digits.

    Error texts quote the value they refused (``invalid to '050-123-456': ...``) and the API's
    messages may quote the recipient: neither reaches the task log in full.
    """

    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if len(digits) < 8 or _IPV4.fullmatch(match.group(0)):
            return match.group(0)  # a short number, an address: not a phone number
        return mask_number(digits)

    return _NUMBER_LIKE.sub(mask, text)
