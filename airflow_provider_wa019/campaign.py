"""Campaigns: one recipient list split across mapped bulk tasks, with one rate for the whole run.

::

    from airflow_provider_wa019.campaign import whatsapp_campaign

    send = whatsapp_campaign(
        task_id="send_offer",
        recipients=audience(),            # an upstream task's list, a literal list or a Jinja string
        chunk_size=1000,                  # recipients per mapped task at most (default 1000)
        total_rate_per_second=200,        # messages started per second by the whole run, at most
        max_parallel=4,                   # mapped tasks sending at once, at most (default 4)
        template="spring_offer",          # everything else: WhatsAppBulkSendOperator's arguments
        variables=["{{ name | default('there') }}"],
        retries=2,
    )

This adds two tasks: ``<task_id>_split``, which reads the list when the run starts, drops every
number listed twice (by its normalized number, as the bulk operator reads it, with the
connection's ``default_region``) and cuts the rest into chunks of at most ``chunk_size``; and
``<task_id>``, a :class:`~airflow_provider_wa019.operators.bulk.WhatsAppBulkSendOperator` mapped
over those chunks. :func:`whatsapp_campaign` returns that mapped task (``send.output`` is the list
of per-chunk summaries).

**A recipient is in one chunk only**, so the split makes a second message in the same run
impossible: each mapped task keeps its own progress ledger (per dag run and map index), and no
number is in two of them. Clearing the whole run re-runs the split; the same list (in the same
order) gives the same chunks, so the ledgers still hold. A list that changed in between can move
a number to another chunk, whose ledger does not know it: to resume a campaign, clear the mapped
send tasks, not the split.

**The total rate** is held without any shared store: each mapped task gets a static share,
``rate_per_second = floor(total_rate_per_second / max_parallel)``, and Airflow's scheduler lets
at most ``max_parallel`` of them be queued or running at once (``max_active_tis_per_dag`` and
``max_active_tis_per_dagrun``, checked in the metadata DB whatever the executor and the number
of workers: a task on a lost worker counts as running until Airflow's heartbeat check fails it).
Each mapped task also waits one second (the limiter's window) between starting and its first
send, so a task that takes a finished one's place never sends in the same second as it did.
Together: in any one-second window, at most ``max_parallel * floor(total / max_parallel)``
messages start (never more than the total; the rounding can cost up to ``max_parallel - 1``
messages per second). That holds at the client; what the API sees adds the network's jitter.

The bound assumes Airflow never runs two tries of one task instance at once, i.e. that its
heartbeat timeout (``[scheduler] task_instance_heartbeat_timeout``) does not fail tasks that are
still alive, and it is per campaign task: other DAGs sending from the same number add to it.

**Defaults that differ from the bulk operator's:** ``resend_unknown=False`` (at most once: a
recipient whose delivery is unknown after a worker was lost is reported ``unknown``, never sent
a second time; see the README for what a hard kill leaves unknown). Pass ``resend_unknown=True``
to send them again instead (at least once). ``max_concurrency=16`` (:data:`CAMPAIGN_CONCURRENCY`):
in at-most-once mode a killed task leaves up to ``max_concurrency`` recipients ``unknown``, and
each task writes its ledger once per ``max_concurrency / 2`` messages; 4 (the bulk default) made
those writes the ceiling of a campaign on a 2-core deployment.

Importing this module costs what importing the bulk operator costs (the task SDK only): the
engine, ``phonenumbers`` and the HTTP stack load when the split or a send runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from airflow.sdk import task

from airflow_provider_wa019.constants import DEFAULT_CONN_ID
from airflow_provider_wa019.operators.bulk import WhatsAppBulkSendOperator

__all__ = [
    "CAMPAIGN_CONCURRENCY",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_PARALLEL",
    "split_recipients",
    "whatsapp_campaign",
]

#: Recipients per mapped task: large enough that the per-task cost (a few seconds to start a task
#: on a worker, the ledger's head and index writes) is small against the sending time; small
#: enough that a retried chunk, its XCom ``results`` and its share of a lost worker stay small.
#: With Airflow's default ``[core] max_map_length`` (1024) that covers about a million recipients.
DEFAULT_CHUNK_SIZE = 1000
#: Mapped tasks sending at once (a Celery worker runs 16 tasks at once by default).
DEFAULT_MAX_PARALLEL = 4
#: Each campaign task's ``max_concurrency`` unless given: what a killed task may leave ``unknown``
#: in at-most-once mode, and twice the messages per ledger write (see the module docstring).
CAMPAIGN_CONCURRENCY = 16
#: ``split_recipients``'s default region: the connection's, as the bulk operator uses.
_FROM_CONNECTION: Any = object()
#: The bulk operator's arguments the campaign sets itself.
_RESERVED = frozenset(
    {"recipients", "rate_per_second", "max_active_tis_per_dag", "max_active_tis_per_dagrun", "task_id"}
)


def whatsapp_campaign(
    *,
    task_id: str,
    recipients: Any,
    chunk_size: int | str = DEFAULT_CHUNK_SIZE,
    total_rate_per_second: float | str | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    wa019_conn_id: str = DEFAULT_CONN_ID,
    **bulk_kwargs: Any,
) -> Any:
    """Send one message to ``recipients`` from mapped bulk tasks: see the module docstring.

    :param task_id: the mapped send task's id; the split task is ``<task_id>_split``.
    :param recipients: numbers, or dicts with ``to`` and values, as for the bulk operator: an
        upstream task's XComArg, a literal list, or a Jinja string rendering to a list.
    :param chunk_size: recipients per mapped task at most (an int >= 1, or a Jinja string such as
        ``"{{ params.chunk_size }}"`` rendered when the run starts). Chunks are as even as
        possible: 1001 recipients at 1000 make two chunks of 501 and 500.
    :param total_rate_per_second: messages started per second by all mapped tasks together, at
        most (a number >= ``max_parallel``, a Jinja string, or None for no limit).
    :param max_parallel: mapped tasks queued or running at once, at most (an int >= 1; fixed when
        the DAG is parsed, as Airflow's scheduler reads it from the DAG).
    :param wa019_conn_id: the connection the sends use; the split reads its ``default_region``.
    :param bulk_kwargs: any other argument of ``WhatsAppBulkSendOperator`` (``body`` or
        ``template``, ``max_concurrency``, ``retries``...), the same for every chunk. Not
        ``rate_per_second`` (the campaign sets each chunk's share of the total).
    :return: the mapped send task.
    :raises ValueError: an argument that cannot work (checked when the DAG file is parsed, for
        values given as literals; Jinja strings are checked when the split runs).
    """
    reserved = sorted(_RESERVED & bulk_kwargs.keys())
    if reserved:
        raise ValueError(
            f"whatsapp_campaign sets {', '.join(reserved)} itself: use total_rate_per_second for the "
            "rate of the whole campaign and max_parallel for the tasks sending at once"
        )
    if not (_is_int(max_parallel) and max_parallel >= 1):
        raise ValueError(f"max_parallel must be an int >= 1, got {max_parallel!r}")
    # Literals are checked now, so a typo is an import error of the DAG file, not a failed run.
    if not isinstance(chunk_size, str):
        _chunk_size(chunk_size)
    if total_rate_per_second is not None and not isinstance(total_rate_per_second, str):
        _share(total_rate_per_second, max_parallel)
    bulk_kwargs.setdefault("resend_unknown", False)
    bulk_kwargs.setdefault("max_concurrency", CAMPAIGN_CONCURRENCY)
    pre_execute = _HandoverPause(bulk_kwargs.pop("pre_execute", None))

    split = task(task_id=f"{task_id}_split")(split_recipients)(
        recipients,
        chunk_size=chunk_size,
        total_rate_per_second=total_rate_per_second,
        max_parallel=max_parallel,
        wa019_conn_id=wa019_conn_id,
    )
    return WhatsAppBulkSendOperator.partial(
        task_id=task_id,
        wa019_conn_id=wa019_conn_id,
        # Per dag run, and per DAG as well: two runs of the same campaign at once then share the
        # sender's rate instead of doubling it.
        max_active_tis_per_dagrun=max_parallel,
        max_active_tis_per_dag=max_parallel,
        pre_execute=pre_execute,
        **bulk_kwargs,
    ).expand_kwargs(split)


def split_recipients(
    recipients: Any,
    *,
    chunk_size: int | str = DEFAULT_CHUNK_SIZE,
    total_rate_per_second: float | str | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    wa019_conn_id: str = DEFAULT_CONN_ID,
    region: str | object | None = _FROM_CONNECTION,
) -> list[dict[str, Any]]:
    """The split task's work: ``recipients`` -> one ``{"recipients": [...], "rate_per_second":
    share}`` per chunk (``rate_per_second`` only with a total rate), each number in one chunk.

    Numbers are compared as the bulk operator reads them (normalized, with ``region``, or the
    connection's ``default_region`` unless ``region`` is given; None reads digits without ``+``
    as international), and
    the first entry of a number wins, as in one bulk task. Entries that are not numbers at all
    stay in the chunks: their chunk's summary reports them invalid, so the summaries of all chunks
    add up to the distinct entries of the list. An empty list gives no chunk (Airflow then skips
    the mapped task).
    """
    from airflow_provider_wa019.bulk.recipients import parse_recipients  # runtime only: phonenumbers

    size = _chunk_size(chunk_size)
    share = _share(total_rate_per_second, max_parallel) if total_rate_per_second not in (None, "") else None
    if region is _FROM_CONNECTION:
        region = _connection_region(wa019_conn_id)
    distinct, duplicates = parse_recipients(recipients, region=region)
    entries = [dict(r.values) for r in distinct]
    count = math.ceil(len(entries) / size)
    chunks = [entries[i * len(entries) // count : (i + 1) * len(entries) // count] for i in range(count)]
    _log_split(len(entries), duplicates, chunks, share, max_parallel)
    return [{"recipients": chunk, **({"rate_per_second": share} if share else {})} for chunk in chunks]


class _HandoverPause:
    """``pre_execute`` of every mapped send task: wait one second before the first send.

    The scheduler starts a queued task only once a running one has left its slot, and that one
    may have sent its last messages a moment earlier; each task's limiter counts only its own
    sends. Waiting out the limiter's one-second window means no second holds sends of both, so
    the static shares add up to the total in every window. A user's own ``pre_execute`` runs
    first.
    """

    #: The sliding window of ``SlidingWindowRateLimiter`` for a share of 1/s or more.
    seconds = 1.0

    def __init__(self, user_hook: Callable[[Mapping[str, Any]], Any] | None) -> None:
        self.user_hook = user_hook

    def __call__(self, context: Mapping[str, Any]) -> None:
        if self.user_hook is not None:
            self.user_hook(context)
        time.sleep(self.seconds)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _chunk_size(value: Any) -> int:
    """``chunk_size`` as an int >= 1 (a rendered Jinja string such as ``"1000"`` included)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not (_is_int(value) and value >= 1):
        raise ValueError(f"chunk_size must be an int >= 1 (recipients per mapped task), got {value!r}")
    return value


def _share(total: Any, max_parallel: int) -> int:
    """Each mapped task's rate: ``floor(total / max_parallel)``, which must be at least 1/s."""
    if isinstance(total, str):
        try:
            total = float(total)
        except ValueError:
            raise ValueError(f"total_rate_per_second must be a number, got {total!r}") from None
    if (
        isinstance(total, bool)
        or not isinstance(total, (int, float))
        or not math.isfinite(total)
        or total <= 0
    ):
        raise ValueError(f"total_rate_per_second must be a finite number > 0 or None, got {total!r}")
    share = math.floor(total / max_parallel)
    if share < 1:
        # Below 1/s a task's limiter allows one send per 1/share seconds: max_parallel tasks could
        # then start max_parallel sends in one second, above the total.
        raise ValueError(
            f"total_rate_per_second ({total:g}) is below max_parallel ({max_parallel}): each mapped "
            "task needs at least one message per second; lower max_parallel"
        )
    return share


def _connection_region(conn_id: str) -> str | None:
    """The connection's ``default_region``, which the bulk operator reads numbers with."""
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    return WhatsAppHook(conn_id).settings.default_region


def _log_split(
    count: int, duplicates: int, chunks: list[list[dict[str, Any]]], share: int | None, max_parallel: int
) -> None:
    import logging

    log = logging.getLogger(__name__)
    sizes = sorted({len(c) for c in chunks})
    log.info(
        "Campaign: %d distinct recipient(s)%s in %d chunk(s) of %s, at most %d sending at once%s",
        count,
        f" ({duplicates} duplicate(s) dropped)" if duplicates else "",
        len(chunks),
        "/".join(map(str, sizes)) or "0",
        max_parallel,
        f", {share}/s each: at most {share * max_parallel}/s in all" if share else ", no rate limit",
    )
