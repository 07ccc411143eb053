"""The progress ledger: which recipients a task instance already reached, so a retry or a
cleared re-run never sends to them again (see :class:`ProgressLedger`), and the in-memory store.
In a task the ledger is kept in Airflow Variables: see :mod:`.variable_store`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from airflow_provider_wa019.bulk.report import Outcome

__all__ = [
    "LEDGER_BATCH",
    "LEDGER_FLUSH_SECONDS",
    "LEDGER_KEY_PREFIX",
    "LedgerStore",
    "MemoryLedgerStore",
    "ProgressLedger",
]

#: The ledger's chunks are the store's keys ``wa019_bulk/0``, ``wa019_bulk/1``... (in Airflow,
#: :mod:`.variable_store` keeps them as Variables).
LEDGER_KEY_PREFIX = "wa019_bulk/"
#: A ledger batch is written when this many outcomes are pending, or ...
LEDGER_BATCH = 500
#: ... when the oldest pending outcome is this old. Bounds what a hard kill can lose (see README).
LEDGER_FLUSH_SECONDS = 1.0

# States of a number in the ledger; in memory a sent one is "sent:<unique>".
_SENT, _UNKNOWN, _CLAIMED, _RELEASED = "sent", "unknown", "claimed", "released"


class LedgerStore(Protocol):
    """Where the ledger is kept: ``get``/``set`` of JSON values. ``get`` returns ``default`` only
    for a key that was never written, and raises when it cannot tell (a ledger that looks shorter
    than it is would send twice). In a task: :class:`~.variable_store.VariableLedgerStore`."""

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


class ProgressLedger:
    """Which recipients a task instance has reached, kept across its tries.

    Stored as numbered chunks (``wa019_bulk/0``, ``/1``, ...) in a :class:`LedgerStore`; each
    chunk holds what changed since the one before: ``{"sent": {number: unique}, "unknown":
    [numbers], "claimed": [numbers], "released": [numbers]}``, each number once, in its latest
    state. The last chunk stays open: each write rewrites it with what it held plus what is new,
    until it holds ``batch_size`` numbers; then it is sealed and the next write starts a new one.
    So a write costs the same at the end of a 100,000-recipient send as at its start, a chunk
    stays small (``batch_size`` numbers at most), and frequent small writes (claims) do not make
    many chunks. A try reads the chunks back in order (later entries override earlier ones,
    except that ``sent`` is final) and writes its own after them.

    What each state means for the next try:

    * ``sent``: confirmed by the API. Never sent again, by any later try of this task instance.
    * ``unknown``: the request went out and no usable answer came back (it may have been
      delivered). Sent again only with ``resend_unknown=True``.
    * ``claimed`` (only with ``resend_unknown=False``): written *before* the send starts, so a try
      killed mid-request leaves a trace; the next try treats it as ``unknown``. The engine claims
      no more than ``max_concurrency`` ahead of the outcomes it wrote (see
      :meth:`claim`), so a hard kill leaves at most that many.
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
        #: The open chunk's content as written (it is chunk ``_next_chunk``), or {} when none is.
        self._open: dict[str, str] = {}
        self._next_chunk = 0
        self.writes = 0

    @property
    def chunks(self) -> int:
        """How many chunks the store holds so far (read by :meth:`load`, or written since)."""
        return self._next_chunk + (1 if self._open else 0)

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
        """Durably mark ``numbers`` as about to be sent, in one write with every outcome still
        pending, before any of them goes out: a try killed mid-request then leaves them
        ``unknown`` instead of sendable.

        Writing the pending outcomes in the same write is what bounds a hard kill: a caller that
        claims only as many as it has requests free (the engine claims at most
        ``max_concurrency`` minus those in flight) never has more than ``max_concurrency``
        numbers claimed without a written outcome.
        """
        # Released (refused earlier) numbers are claimed again: this try may deliver them.
        fresh = [n for n in numbers if self._state.get(n, "") != _CLAIMED and not self._is_sent(n)]
        if not fresh:
            return
        for number in fresh:
            self._note(number, _CLAIMED)
        self.flush()

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
        self._note(number, value)

    def _note(self, number: str, value: str) -> None:
        """Change ``number``'s state; pending until the next write."""
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
        """Write the pending outcomes (nothing when none are pending): the open chunk is rewritten
        with them added, and sealed once it holds ``batch_size`` numbers."""
        if not self._dirty:
            return
        content = {**self._open, **self._dirty}
        chunk: dict[str, Any] = {}
        for number, value in content.items():
            state, unique = self._split(value)
            if state == _SENT:
                chunk.setdefault("sent", {})[number] = unique
            else:
                chunk.setdefault(state, []).append(number)
        self._write(chunk)
        self._dirty.clear()
        self._dirty_since = None
        if len(content) >= self.batch_size:
            self._open = {}
            self._next_chunk += 1  # sealed: the next write starts a new chunk
        else:
            self._open = content

    def _write(self, chunk: dict[str, Any]) -> None:
        if self.store is None:
            return
        # The chunk number only advances once a chunk is sealed after a successful write, so a
        # failed write leaves no gap that would hide later chunks from the next try's read; and a
        # failed rewrite of the open chunk leaves its earlier content, a state this try was in.
        self.store.set(f"{LEDGER_KEY_PREFIX}{self._next_chunk}", {"v": 1, **chunk})
        self.writes += 1
