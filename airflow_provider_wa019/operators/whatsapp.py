"""Operators that send WhatsApp messages through 019sms.

This module is imported by every DAG file that uses it, at every parse, so it imports only
Airflow's task SDK; the hook (and with it requests and phonenumbers) loads when a task runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

# The compat layer resolves to airflow.sdk on every Airflow 3 release we support.
from airflow.providers.common.compat.sdk import BaseOperator

# Import-free modules: nothing more loads at DAG parse time.
from airflow_provider_wa019.constants import DEFAULT_CONN_ID, DEFAULT_SKIP_REASONS
from airflow_provider_wa019.operators.outcome import task_outcome
from airflow_provider_wa019.templating import template_variables

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_wa019.operators.bulk import WhatsAppBulkSendOperator

__all__ = [
    "DEFAULT_SKIP_REASONS",
    "WhatsAppBulkSendOperator",
    "WhatsAppSendOperator",
    "WhatsAppSendTemplateOperator",
    "task_outcome",
    "template_variables",
]


class WhatsAppSendOperator(BaseOperator):
    """Send one free-form WhatsApp message and push its message id to XCom.

    The task's outcome follows the API's answer:

    * sent (reason 1): success; returns the ``unique`` message id (XCom ``return_value``) and
      pushes the whole answer as a dict under XCom key ``response``;
    * a reason in ``skip_on_reasons`` (default 7 and 8: the client's 24 h window is closed, a
      template is needed): skipped;
    * reason 6 ("WhatsApp error, try again") after the hook's own retries, rate limits, an
      unreachable API, or a delivery left unknown (read timeout, HTTP 500/502/504): failed with
      the task's ``retries`` applying;
    * any other reason (wrong sender, token, number or body, or a code the vendor does not
      document), invalid arguments, and unexpected answers: failed without retry.

    The README's "What each answer does to the task" has the whole table.

    With ``fallback_template``, a refusal with reason 7 or 8 sends that approved template to the
    same recipient instead, in the same task try (``skip_on_reasons`` then never sees 7 or 8);
    ``return_value`` is then the template message's id. XCom key ``sent_as`` says what went
    out: ``"message"`` or ``"template"``. A refused template ends the task by its own reason.

    :param to: recipient number (templated), e.g. ``"+972 50-123-4567"``.
    :param body: message text (templated; may be a ``.txt`` or ``.j2`` template file).
    :param reply_to: ``unique`` id of a client message to quote (templated).
    :param sender: ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the Airflow connection of type ``wa019``.
    :param skip_on_reasons: API reason codes that skip the task instead of failing it.
    :param fallback_template: name of an approved template to send when the window is closed
        (templated); None (or empty) for no fallback.
    :param fallback_variables: values for the fallback's ``{{1}}`` ... ``{{10}}`` (templated;
        see :class:`WhatsAppSendTemplateOperator` ``variables``).
    :param check_window: with ``fallback_template``, first ask the webhook whether the client's
        window is open (:meth:`WhatsAppHook.window`): when it is known closed, the template goes
        out directly, without a refused free-form request. Unknown or open: as without.
    """

    template_fields: Sequence[str] = (
        "to",
        "body",
        "reply_to",
        "sender",
        "fallback_template",
        "fallback_variables",
        "wa019_conn_id",
    )
    template_ext: Sequence[str] = (".txt", ".j2")
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        to: str,
        body: str,
        reply_to: str | None = None,
        sender: str | None = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        skip_on_reasons: Collection[int] = DEFAULT_SKIP_REASONS,
        fallback_template: str | None = None,
        fallback_variables: Sequence[str] | str = (),
        check_window: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_window = bool(check_window)
        self.to = to
        self.body = body
        self.reply_to = reply_to
        self.sender = sender
        self.wa019_conn_id = wa019_conn_id
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)
        self.fallback_template = fallback_template
        self.fallback_variables = fallback_variables

    def execute(self, context: Context) -> str:
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

        try:
            with WhatsAppHook(self.wa019_conn_id) as hook:
                variables = template_variables(self.fallback_variables)
                if self.check_window and self.fallback_template and hook.window(self.to).open is False:
                    # Known closed: the template at once, no refused free-form request first.
                    self.log.info("The client's window is closed (webhook): sending the template")
                    result = hook.send_template(
                        self.to, self.fallback_template, variables, sender=self.sender
                    )
                    sent_as = "template"
                else:
                    result, sent_as = hook.send_message_or_template(
                        self.to,
                        self.body,
                        fallback_template=self.fallback_template,
                        fallback_variables=variables,
                        sender=self.sender,
                        reply_to=self.reply_to,
                    )
        except WhatsAppError as err:
            raise task_outcome(err, self.skip_on_reasons, log=self.log) from err
        if self.do_xcom_push:
            ti = context["ti"]
            ti.xcom_push(key="response", value=result.to_dict())
            ti.xcom_push(key="sent_as", value=sent_as)
        return result.unique


class WhatsAppSendTemplateOperator(BaseOperator):
    """Send one approved WhatsApp template message and push its message id to XCom.

    Templates reach a client whether or not the 24-hour window is open. The outcome follows the
    same reason table as :class:`WhatsAppSendOperator` (the vendor documents no separate codes
    for templates), except that by default no reason skips the task.

    ``variables`` may be a list (each item templated), an ``XComArg`` such as
    ``upstream.output`` resolving to a list, or one Jinja string: under
    ``render_template_as_native_obj=True`` it renders to a real list; otherwise a string that
    renders a list literal (``"{{ ti.xcom_pull('upstream') }}"`` gives ``"['Dana', 'A-7']"``)
    is read back as that list, and any other string is one value.

    :param to: recipient number (templated).
    :param template: the approved template's name (templated), or a
        :class:`~airflow_provider_wa019.api.WhatsAppTemplate` (its body is then checked).
    :param variables: values for ``{{1}}`` ... ``{{10}}``, in order (templated).
    :param header_type: 1 (none, the default), 3 image, 4 video, 5 document (templated).
    :param header_link: https URL of the header's media (templated).
    :param sender: ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the Airflow connection of type ``wa019``.
    :param check_template: look the template up in the sender's listing (one read-only GET) and
        check the variables against its body before sending.
    :param skip_on_reasons: API reason codes that skip the task instead of failing it.
    """

    template_fields: Sequence[str] = (
        "to",
        "template",
        "variables",
        "header_type",
        "header_link",
        "sender",
        "wa019_conn_id",
    )
    ui_color = "#128c7e"

    def __init__(
        self,
        *,
        to: str,
        template: Any,
        variables: Sequence[str] | str = (),
        header_type: int | str | None = None,
        header_link: str | None = None,
        sender: str | None = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        check_template: bool = False,
        skip_on_reasons: Collection[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to = to
        self.template = template
        self.variables = variables
        self.header_type = header_type
        self.header_link = header_link
        self.sender = sender
        self.wa019_conn_id = wa019_conn_id
        self.check_template = check_template
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)

    def execute(self, context: Context) -> str:
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

        try:
            with WhatsAppHook(self.wa019_conn_id) as hook:
                result = hook.send_template(
                    self.to,
                    self.template,
                    template_variables(self.variables),
                    header_type=self.header_type,
                    header_link=self.header_link,
                    sender=self.sender,
                    check_template=self.check_template,
                )
        except WhatsAppError as err:
            raise task_outcome(err, self.skip_on_reasons, log=self.log) from err
        if self.do_xcom_push:
            context["ti"].xcom_push(key="response", value=result.to_dict())
        return result.unique


# --- Bulk sends -------------------------------------------------------------------------------
# WhatsAppBulkSendOperator lives in operators/bulk.py; it is importable from here as before.
# Resolved on first use (PEP 562), because operators/bulk.py imports this module's helpers.


def __getattr__(name: str) -> Any:
    if name == "WhatsAppBulkSendOperator":
        from airflow_provider_wa019.operators.bulk import WhatsAppBulkSendOperator

        return WhatsAppBulkSendOperator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
