"""Where the bulk ledger lives in Airflow: Variables, read and written through the Task SDK.

The ledger exists for one promise: a recipient the API confirmed is never messaged again by the
same task instance (dag, run, task, map index), whether Airflow retries the task or a user
clears it and it runs again. Its store must therefore outlive everything Airflow does to a task
instance short of deleting it. What the installed Airflow offers (checked on 3.1.0 and 3.3.2):

* ``context["task_state_store"]`` (3.3+): scoped to the task instance, kept across retries, but
  deleted when the task succeeds or is marked successful under ``[state_store]
  clear_on_success``, and apache/airflow#72100 discards it when the task instance is cleared
  (unless the clear sets ``keep_task_state``). That is exactly the clear-and-rerun the ledger
  is for. It does not exist on 3.1/3.2.
* XCom: a task instance's XComs are deleted when its next try starts.
* ``asset_state_store`` (3.3+): scoped to an asset the DAG would have to declare, 3.3 only.
* **Variables**: rows in the metadata DB that the Task SDK reads and writes through the
  Execution API (so every worker of a distributed deployment reaches the same ones), on every
  Airflow 3 release. No clear, success, mark-success, ``clear_on_success`` or ``airflow db
  clean`` touches them. What they lack (scope, expiry) is added here.

So the ledger is kept in Variables:

* ``wa019_bulk.<id>.<n>``: chunk ``n`` of the ledger (:class:`ProgressLedger`'s ``wa019_bulk/<n>``),
  rewritten by its try until it is full, then never again.
* ``wa019_bulk.<id>``: the ledger's head: which task instance it belongs to, its chunk count
  (a hint) and when it expires.
* ``wa019_bulk.index``: ``{"v": 1, "ledgers": {id: expires (epoch seconds)}}``, every ledger the
  provider knows of, so that cleanup can find them (the Task SDK cannot list Variables before
  3.3).

``<id>`` is the first 32 hex digits of the SHA-256 of ``[dag_id, run_id, task_id, map_index]``
(plus the clear's first try number with ``resend_confirmed=True``; see :func:`ledger_id`), not the
names themselves: the key stays within Airflow's 250 characters whatever the ids, and a key never
contains words like ``token`` or ``secret`` (a task id might), which would make Airflow add the
whole value to its log masker.

**Retention.** Variables never expire by themselves, so each ledger gets an expiry: its last
try's start plus ``ledger_retention`` (30 days by default, an operator argument). Every try
refreshes it. At the end of every try that ran to its end, the operator deletes up to
:data:`PRUNE_BATCH` expired ledgers found in the index (any task's): their chunks from the last
to the first, then the head, then the index entry. A ledger is deleted only when its own head,
which only its own task instance writes, agrees that it expired: a stale copy of the index
(concurrent bulk tasks read, change and write the same index, and Variables offer no
compare-and-set) can delay cleanup, or leave a ledger unlisted and never cleaned (each try
checks its entry after writing it, and writes it again at its end), but can never delete a
ledger that is still in use. Clearing a task after its ledger expired sends to everyone again.

**Why not ``airflow.sdk.Variable``.** Reads and writes here talk to the task's supervisor
directly (``GetVariable``/``PutVariable``/``DeleteVariable``, the messages ``Variable`` itself
sends), because the public calls lose errors that matter to a ledger: on 3.3
``Variable.get(key, default)`` returns the default when the API server answers with an error
(its Execution API secrets backend treats any error as "not found"), so a chunk that failed to
load would look like the end of the ledger and its recipients would be messaged again; on 3.1
``Variable.set`` logs a failed write and returns as if it had worked. The direct messages tell
"not found" from "failed", and skip the lookup of every chunk key in each configured secrets
backend (Vault, AWS...), which cannot hold them. If a future task SDK moves these messages, the
public ``Variable`` API is used instead, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from airflow_provider_wa019.bulk.ledger import LEDGER_KEY_PREFIX

__all__ = [
    "DEFAULT_LEDGER_RETENTION",
    "INDEX_KEY",
    "PRUNE_BATCH",
    "VARIABLE_PREFIX",
    "LedgerStoreError",
    "VariableLedgerStore",
    "ledger_id",
]

#: Every Variable of the bulk ledgers starts with this.
VARIABLE_PREFIX = "wa019_bulk."
#: The index of all ledgers and their expiry (see the module docstring).
INDEX_KEY = f"{VARIABLE_PREFIX}index"
#: How long a ledger is kept after its last try started (the operator's ``ledger_retention``).
DEFAULT_LEDGER_RETENTION = timedelta(days=30)
#: At most this many expired ledgers are deleted at the end of one try: cleanup never makes a
#: try much longer, and a backlog goes over the next tries.
PRUNE_BATCH = 20
#: Writes of the index that are checked and written again when another task overwrote them.
_INDEX_TRIES = 5


class LedgerStoreError(Exception):
    """The ledger's store could not be read or written."""


class Variables(Protocol):
    """Raw Variable access: ``get`` returns None only when the key does not exist, and raises
    :class:`LedgerStoreError` when it cannot tell."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, description: str | None) -> None: ...

    def delete(self, key: str) -> None: ...


class _SupervisorVariables:
    """Variables through the task's channel to its supervisor (and the Execution API behind it):
    the messages ``airflow.sdk.Variable`` sends, with their errors kept (see the module docstring).
    Same messages and answers on task SDK 1.1 (Airflow 3.1) to 1.3 (3.3)."""

    def __init__(self) -> None:
        from airflow.sdk.exceptions import ErrorType
        from airflow.sdk.execution_time import comms, task_runner

        if getattr(task_runner, "SUPERVISOR_COMMS", None) is None:
            raise LedgerStoreError("not inside a running Airflow task")
        self._runner = task_runner
        self._get, self._put, self._delete = comms.GetVariable, comms.PutVariable, comms.DeleteVariable
        self._result, self._error = comms.VariableResult, comms.ErrorResponse
        self._not_found = ErrorType.VARIABLE_NOT_FOUND

    def _send(self, message: Any, key: str) -> Any:
        try:
            answer = self._runner.SUPERVISOR_COMMS.send(message)
        except Exception as err:  # AirflowRuntimeError: the API server answered with an error
            raise LedgerStoreError(f"Variable {key!r}: {type(err).__name__}: {err}") from err
        if isinstance(answer, self._error) and answer.error != self._not_found:
            raise LedgerStoreError(f"Variable {key!r}: {answer.error}: {answer.detail}")
        return answer

    def get(self, key: str) -> str | None:
        answer = self._send(self._get(key=key), key)
        if isinstance(answer, self._error):
            return None  # VARIABLE_NOT_FOUND: the only error _send lets through
        if not isinstance(answer, self._result):
            raise LedgerStoreError(f"Variable {key!r}: unexpected answer {type(answer).__name__}")
        return answer.value

    def set(self, key: str, value: str, description: str | None) -> None:
        self._send(self._put(key=key, value=value, description=description), key)

    def delete(self, key: str) -> None:
        self._send(self._delete(key=key), key)


class _PublicVariables:
    """``airflow.sdk.Variable``, for a task SDK without the messages above: weaker (see the module
    docstring), so the operator warns when it is used."""

    _MISSING = object()

    def get(self, key: str) -> str | None:
        from airflow.sdk import Variable

        value = Variable.get(key, default=self._MISSING)
        return None if value is self._MISSING else value

    def set(self, key: str, value: str, description: str | None) -> None:
        from airflow.sdk import Variable

        Variable.set(key, value, description=description)

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        Variable.delete(key)


def task_variables(log: Any = None) -> Variables:
    """The Variables of the running task: direct supervisor messages where the task SDK has them."""
    try:
        return _SupervisorVariables()
    except ImportError:
        (log or logging.getLogger(__name__)).warning(
            "This task SDK has no GetVariable/PutVariable messages: the bulk ledger uses "
            "airflow.sdk.Variable, which may take a failed read for a missing chunk"
        )
        return _PublicVariables()


def ledger_id(
    dag_id: str, run_id: str, task_id: str, map_index: int | None, generation: int | None = None
) -> str:
    """The id of a task instance's ledger: 32 hex digits of SHA-256 over its identity.

    ``generation`` (the first try number of the current clear; only with
    ``resend_confirmed=True``) makes each clear of the task instance start a new ledger.
    """
    identity: list[Any] = [dag_id, run_id, task_id, -1 if map_index is None else int(map_index)]
    if generation is not None:
        identity.append(int(generation))
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


class VariableLedgerStore:
    """A task instance's ledger in Airflow Variables, with its retention (see the module docstring).

    It is the :class:`~airflow_provider_wa019.bulk.ledger.LedgerStore` of a
    :class:`ProgressLedger` (``get``/``set`` of the chunks); around the run the operator calls
    :meth:`open` (before the first send: head and index entry written, so even a try killed at
    once leaves a ledger that cleanup knows of) and :meth:`close` (after a try that ran to its
    end: chunk count noted, expired ledgers deleted). Used from the task's main thread only.
    """

    def __init__(
        self,
        variables: Variables,
        *,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int | None = -1,
        generation: int | None = None,
        retention: timedelta = DEFAULT_LEDGER_RETENTION,
        clock: Callable[[], float] = time.time,
        log: Any = None,
    ) -> None:
        self.variables = variables
        self.map_index = -1 if map_index is None else int(map_index)
        self.identity = {
            "dag_id": dag_id,
            "run_id": run_id,
            "task_id": task_id,
            "map_index": self.map_index,
            "generation": generation,
        }
        self.id = ledger_id(dag_id, run_id, task_id, self.map_index, generation)
        self.retention = retention
        self._clock = clock
        self.log = log if log is not None else logging.getLogger(__name__)
        self.expires = 0

    @classmethod
    def for_task(
        cls,
        context: Mapping[str, Any],
        *,
        resend_confirmed: bool = False,
        retention: timedelta = DEFAULT_LEDGER_RETENTION,
        log: Any = None,
    ) -> VariableLedgerStore:
        """The ledger store of the running task instance.

        With ``resend_confirmed``, the ledger belongs to the current clear of the task instance:
        its first try is ``max_tries - retries + 1``, the rule Airflow itself uses for "the first
        try since the last clear" (``get_first_reschedule_date``), since a clear sets
        ``max_tries`` to the try number reached plus ``retries``.
        """
        ti = context["ti"]
        generation = None
        if resend_confirmed:
            retries = getattr(context.get("task"), "retries", 0) or 0
            generation = int(ti.max_tries) - int(retries) + 1
        return cls(
            task_variables(log),
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=getattr(ti, "map_index", -1),
            generation=generation,
            retention=retention,
            log=log,
        )

    # -- names -----------------------------------------------------------------------------

    @property
    def head_key(self) -> str:
        return _head_key(self.id)

    def describe(self) -> str:
        """Which task instance this ledger belongs to, for the log and Variable descriptions."""
        ident = self.identity
        text = (
            f"dag {ident['dag_id']!r}, run {ident['run_id']!r}, task {ident['task_id']!r}, "
            f"map index {ident['map_index']}"
        )
        if ident["generation"] is not None:
            text += f", clear starting at try {ident['generation']}"
        return text

    # -- LedgerStore: the chunks ------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        raw = self.variables.get(self._chunk_key(key))
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except ValueError as err:
            # A chunk edited by hand: refuse to guess whom it held.
            raise LedgerStoreError(f"ledger chunk {self._chunk_key(key)!r} is not JSON: {err}") from err

    def set(self, key: str, value: Any) -> None:
        self.variables.set(
            self._chunk_key(key),
            json.dumps(value, separators=(",", ":")),
            f"wa019 bulk send ledger of {self.describe()}: recipients already reached. Deleted "
            "by the provider when the ledger expires; deleting it by hand lets a cleared task "
            "message them again.",
        )

    def _chunk_key(self, key: str) -> str:
        if not key.startswith(LEDGER_KEY_PREFIX):
            raise ValueError(f"not a ledger chunk key: {key!r}")
        return _chunk_key(self.id, key[len(LEDGER_KEY_PREFIX) :])

    # -- around a try ------------------------------------------------------------------------

    def open(self) -> None:
        """Before the first send of a try: refresh the head's expiry and list it in the index.

        Raises :class:`LedgerStoreError` when the head cannot be read or written (then nothing
        may be sent: this try could not record whom it reached). A failure to update the index
        is only logged: it can delay cleanup, never cause a duplicate.
        """
        head = self._read_head(self.id) or {}
        self.expires = int(self._clock() + self.retention.total_seconds())
        self._write_head(head.get("chunks"))
        try:
            self._update_index(lambda ledgers: ledgers.__setitem__(self.id, self.expires))
        except LedgerStoreError as err:
            self.log.warning("Could not list the bulk ledger in %s (cleanup may miss it): %s", INDEX_KEY, err)

    def close(self, chunks: int) -> int:
        """After a try that ran to its end: note the chunk count, delete expired ledgers.

        Best effort: errors are logged, never raised. Returns how many ledgers were deleted.
        """
        try:
            self._write_head(chunks)
            return self.prune()
        except Exception as err:  # cleanup must never change how the try ends
            self.log.warning("Bulk ledger cleanup skipped: %s: %s", type(err).__name__, err)
            return 0

    def _write_head(self, chunks: int | None) -> None:
        expires_at = datetime.fromtimestamp(self.expires, timezone.utc).isoformat(timespec="seconds")
        head = {"v": 1, **self.identity, "expires": self.expires, "expires_at": expires_at, "chunks": chunks}
        self.variables.set(
            self.head_key,
            json.dumps(head, separators=(",", ":")),
            f"wa019 bulk send ledger of {self.describe()}: kept until {expires_at}, then deleted "
            "by the next bulk send that finishes.",
        )

    # -- retention -------------------------------------------------------------------------

    def prune(self, limit: int = PRUNE_BATCH) -> int:
        """Delete up to ``limit`` expired ledgers listed in the index (see the module docstring)."""
        now = self._clock()
        ledgers = self._read_index()
        expired = sorted(
            (expires, lid) for lid, expires in ledgers.items() if expires <= now and lid != self.id
        )
        removed: set[str] = set()
        refreshed: dict[str, int] = {}
        for _, lid in expired[: 2 * limit]:  # bounded, also when some cannot be judged
            if len(removed) >= limit:
                break
            try:
                head = self._read_head(lid)
            except LedgerStoreError as err:
                self.log.warning("Expired bulk ledger %s kept: %s", lid, err)  # cannot tell: keep it
                continue
            if head is not None and _int(head.get("expires")) > now:
                refreshed[lid] = _int(head.get("expires"))  # the index was stale: still in use
                continue
            self._delete_ledger(lid, head)
            removed.add(lid)

        def apply(current: dict[str, int]) -> None:
            for lid in removed:
                current.pop(lid, None)
            current.update(refreshed)
            if self.expires:  # opened: heals this ledger's entry if another task's write dropped it
                current[self.id] = self.expires

        self._update_index(apply)
        if removed:
            self.log.info("Deleted %d expired bulk ledger(s) from Airflow Variables", len(removed))
        return len(removed)

    def _delete_ledger(self, lid: str, head: Mapping[str, Any] | None) -> None:
        count = _int((head or {}).get("chunks"))
        while self.variables.get(_chunk_key(lid, str(count))) is not None:
            count += 1  # chunks of a try that ended before noting its count
        # Last chunk first and the head last: an interrupted cleanup leaves a shorter ledger
        # that the next cleanup finishes.
        for n in reversed(range(count)):
            self.variables.delete(_chunk_key(lid, str(n)))
        if head is not None:
            self.variables.delete(_head_key(lid))

    def _read_index(self) -> dict[str, int]:
        index = self._read_json(INDEX_KEY, strict=False)
        ledgers = index.get("ledgers") if isinstance(index, Mapping) else None
        if not isinstance(ledgers, Mapping):
            return {}
        return {str(lid): _int(expires) for lid, expires in ledgers.items()}

    def _update_index(self, change: Callable[[dict[str, int]], None]) -> None:
        """Read, change and write the index, then read it back: another bulk task may have
        written its own copy in between (no compare-and-set on Variables); if this ledger's entry
        is not in what was stored, do it again, a few times at most."""
        for attempt in range(_INDEX_TRIES):
            ledgers = self._read_index()
            change(ledgers)
            self.variables.set(
                INDEX_KEY,
                json.dumps({"v": 1, "ledgers": ledgers}, separators=(",", ":")),
                "wa019 bulk send ledgers and when each expires (epoch seconds): read by every "
                "bulk send to delete expired ones. Deleting it only stops that cleanup.",
            )
            if self._read_index().get(self.id) == ledgers.get(self.id):
                return
            time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))
        self.log.warning("Another task kept overwriting %s: this ledger may not be listed there", INDEX_KEY)

    def _read_head(self, lid: str) -> Mapping[str, Any] | None:
        head = self._read_json(_head_key(lid))
        if head is not None and not isinstance(head, Mapping):
            raise LedgerStoreError(f"Variable {_head_key(lid)!r} is not a ledger head")
        return head

    def _read_json(self, key: str, *, strict: bool = True) -> Any:
        raw = self.variables.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            if strict:
                raise LedgerStoreError(f"Variable {key!r} is not JSON: {err}") from err
            self.log.warning("Variable %s is not JSON; starting it afresh", key)
            return None


def _head_key(lid: str) -> str:
    return f"{VARIABLE_PREFIX}{lid}"


def _chunk_key(lid: str, n: str) -> str:
    return f"{VARIABLE_PREFIX}{lid}.{n}"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
