"""How a failed send ends an Airflow task: skipped, failed with retries, or failed for good.

Used by every operator of the provider at run time. The meaning of each error is
:func:`airflow_provider_wa019.outcomes.judge`'s; this module only maps it to Airflow's exceptions.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException

if TYPE_CHECKING:
    from airflow_provider_wa019.exceptions import WhatsAppError

__all__ = ["task_outcome"]


def task_outcome(err: WhatsAppError, skip_on_reasons: Collection[int], *, log: Any) -> Exception:
    """The Airflow exception that ends a task whose send raised ``err``.

    Skip for the reasons the user chose; fail with retries only where the message was not sent
    or its delivery is unknown; fail without retry where trying again cannot help.
    """
    from airflow_provider_wa019.outcomes import judge

    verdict = judge(err, skip_on_reasons)
    if verdict.kind == "skipped":
        message = f"{err}. Skipping this task: send an approved template message to reach this client."
        log.warning("%s", message)
        return AirflowSkipException(message)
    if verdict.retryable:
        return AirflowException(str(err))
    return AirflowFailException(str(err))
