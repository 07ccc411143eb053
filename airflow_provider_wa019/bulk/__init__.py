"""The bulk-send engine behind ``WhatsAppBulkSendOperator``: many recipients in one task.

Plain Python (no Airflow import at module level), so benchmarks and other callers can drive it
with a hook and an in-memory ledger. One job per module:

* :mod:`.recipients`: :func:`parse_recipients`, a list of numbers or dicts -> distinct
  :class:`Recipient` objects, malformed entries kept as invalid (reported, never sent).
* :mod:`.rate`: :class:`SlidingWindowRateLimiter`, at most N sends *start* in any one-second window.
* :mod:`.ledger`: :class:`ProgressLedger`, the durable record of which recipients this task
  instance already reached, so a retry or a cleared re-run never sends to them again, and the
  in-memory store (benchmarks, engine tests).
* :mod:`.variable_store`: :class:`VariableLedgerStore`, the ledger's store in a task: Airflow
  Variables (which no clear, ``clear_on_success`` or mark-success erases), with a retention.
* :mod:`.report`: :class:`Outcome` of one recipient, :class:`BulkReport` of a try, the progress
  line, log-safe descriptions (phone numbers masked).
* :mod:`.engine`: :class:`BulkSender`, which sends on an asyncio event loop (in a thread of its
  own; the ledger, rendering and progress lines stay on the caller's thread) with at most
  ``max_concurrency`` requests in flight over one HTTP session (a ``WhatsAppAsyncHook``'s),
  classifies every answer with the single send's rules, writes the ledger in batches and logs a
  progress line every few seconds.

Everything public is importable from here (``from airflow_provider_wa019.bulk import BulkSender``).
"""

from __future__ import annotations

from airflow_provider_wa019.bulk.engine import DEFAULT_MAX_CONCURRENCY, MAX_CONCURRENCY, BulkSender
from airflow_provider_wa019.bulk.ledger import (
    LEDGER_BATCH,
    LEDGER_FLUSH_SECONDS,
    LEDGER_KEY_PREFIX,
    LedgerStore,
    MemoryLedgerStore,
    ProgressLedger,
)
from airflow_provider_wa019.bulk.rate import SlidingWindowRateLimiter
from airflow_provider_wa019.bulk.recipients import Recipient, parse_recipients
from airflow_provider_wa019.bulk.report import NOT_SENT, BulkReport, Outcome, format_progress, scrub
from airflow_provider_wa019.bulk.variable_store import (
    DEFAULT_LEDGER_RETENTION,
    LedgerStoreError,
    VariableLedgerStore,
    ledger_id,
)

__all__ = [
    "DEFAULT_LEDGER_RETENTION",
    "DEFAULT_MAX_CONCURRENCY",
    "LEDGER_BATCH",
    "LEDGER_FLUSH_SECONDS",
    "LEDGER_KEY_PREFIX",
    "MAX_CONCURRENCY",
    "NOT_SENT",
    "BulkReport",
    "BulkSender",
    "LedgerStore",
    "LedgerStoreError",
    "MemoryLedgerStore",
    "Outcome",
    "ProgressLedger",
    "Recipient",
    "SlidingWindowRateLimiter",
    "VariableLedgerStore",
    "format_progress",
    "ledger_id",
    "parse_recipients",
    "scrub",
]
