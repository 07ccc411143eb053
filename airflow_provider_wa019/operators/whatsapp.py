"""Operators that send WhatsApp messages through 019sms.

This module is imported by every DAG file that uses it, at every parse, so it imports only
Airflow's task SDK; the hook (and with it requests and phonenumbers) loads when a task runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

# The compat layer resolves to airflow.sdk on every Airflow 3 release we support.
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSkipException,
    BaseOperator,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_wa019.exceptions import WhatsAppError

#: Reasons that skip a send by default: the 24 h window is closed (7) or was never opened (8),
#: so only an approved template can reach the client.
DEFAULT_SKIP_REASONS = (7, 8)


class WhatsAppSendOperator(BaseOperator):
    """Send one free-form WhatsApp message and push its message id to XCom.

    The task's outcome follows the API's answer:

    * sent (reason 1): success; returns the ``unique`` message id (XCom ``return_value``) and
      pushes the whole answer as a dict under XCom key ``response``;
    * a reason in ``skip_on_reasons`` (default 7 and 8: the client's 24 h window is closed, a
      template is needed): skipped;
    * reason 6 ("WhatsApp error, try again") after the hook's own retries, rate limits, an
      unreachable API, or a delivery left unknown (read timeout, HTTP 500): failed with the
      task's ``retries`` applying;
    * any other reason (wrong sender, token, number or body, or a code the vendor does not
      document), invalid arguments, and unexpected answers: failed without retry.

    :param to: recipient number (templated), e.g. ``"+972 50-123-4567"``.
    :param body: message text (templated; may be a ``.txt`` or ``.j2`` template file).
    :param reply_to: ``unique`` id of a client message to quote (templated).
    :param sender: ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the Airflow connection of type ``wa019``.
    :param skip_on_reasons: API reason codes that skip the task instead of failing it.
    """

    template_fields: Sequence[str] = ("to", "body", "reply_to", "sender")
    template_ext: Sequence[str] = (".txt", ".j2")
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        to: str,
        body: str,
        reply_to: str | None = None,
        sender: str | None = None,
        wa019_conn_id: str = "wa019_default",
        skip_on_reasons: Collection[int] = DEFAULT_SKIP_REASONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to = to
        self.body = body
        self.reply_to = reply_to
        self.sender = sender
        self.wa019_conn_id = wa019_conn_id
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)

    def execute(self, context: Context) -> str:
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

        try:
            with WhatsAppHook(self.wa019_conn_id) as hook:
                result = hook.send_message(self.to, self.body, sender=self.sender, reply_to=self.reply_to)
        except WhatsAppError as err:
            raise task_outcome(err, self.skip_on_reasons, log=self.log) from err
        context["ti"].xcom_push(key="response", value=result.to_dict())
        return result.unique


def task_outcome(err: WhatsAppError, skip_on_reasons: Collection[int], *, log: Any) -> Exception:
    """The Airflow exception that ends a task whose send raised ``err``.

    Skip for the reasons the user chose; fail with retries only where the message was not sent
    or its delivery is unknown; fail without retry where trying again cannot help.
    """
    reason = getattr(err, "reason", None)
    if reason is not None and reason in skip_on_reasons:
        message = f"{err}. Skipping this task: send an approved template message to reach this client."
        log.warning("%s", message)
        return AirflowSkipException(message)
    if err.retryable:
        return AirflowException(str(err))
    return AirflowFailException(str(err))
