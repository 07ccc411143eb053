"""Ask a human-in-the-loop question on WhatsApp: ``ApprovalOperator(..., notifiers=[WhatsAppHITLNotifier(to=...)])``.

The answer comes back as a WhatsApp reply through the provider's webhook
(:mod:`airflow_provider_wa019.webhook.approvals`), which records it through Airflow's own HITL
answer path: the task goes on exactly as after an answer in the UI.

Imported by DAG files at every parse: only Airflow's task SDK and the provider's import-free
modules at the top; the hook, the standard provider and the Variable access load when a
question is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_wa019.constants import DEFAULT_CONN_ID
from airflow_provider_wa019.notifications.whatsapp import WhatsAppNotifier

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_wa019.api import SendResult
    from airflow_provider_wa019.approvals import ApprovalRequest, Asked
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook


class WhatsAppHITLNotifier(WhatsAppNotifier):
    """Send a human-in-the-loop task's question to approvers on WhatsApp, and let them answer there.

    ::

        ApprovalOperator(
            task_id="approve_publish",
            subject="Publish the {{ ds }} report?",
            body="{{ ti.xcom_pull('build') }} rows, 3 new columns.",
            notifiers=[WhatsAppHITLNotifier(to=["+972 50-123-4567"], template="approval_request")],
        )

    For ``HITLOperator``, ``ApprovalOperator``, ``HITLBranchOperator`` and ``HITLEntryOperator``
    (Airflow 3.1+). Each recipient gets the task's subject and body, the options numbered with
    how to answer ("Reply 1 to Approve, 2 to Reject."; several numbers with ``multiple=True``)
    and the link to the task's page in the Airflow UI. A reply naming an option (its number or
    its text) from one of these numbers is the answer (see the README, "Approvals on WhatsApp").

    An approver who has not written to the account in the last 24 h cannot get a free-form
    message: give ``template`` (an approved template) and they get that instead, with
    ``variables`` (default: the subject, how to answer, and the link when there is one).

    What was sent to whom is kept for the webhook in the Airflow Variable
    ``wa019_hitl.<task instance id>`` (the approvers' numbers, the messages' ids). A send that
    fails is logged with the API's reason and does not fail the task: it waits for an answer
    all the same (from the UI, or from the approvers who got the question).

    :param to: the approvers: one number or a list (templated). Only they can answer on WhatsApp.
    :param body: replaces the task's subject and body in the message (templated); how to answer
        and the link are always added.
    :param template: an approved template for approvers outside the 24 h window (templated).
    :param variables: the template's values (templated); see above for the default.
    :param sender: the ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the ``wa019`` connection; its webhook must be set up to receive answers.
    :param base_url: the Airflow UI's address for the link; default ``[api] base_url``. No link
        when neither is set.
    """

    template_fields: Sequence[str] = (*WhatsAppNotifier.template_fields, "base_url")

    def __init__(
        self,
        *,
        to: str | Sequence[str],
        body: str | None = None,
        template: str | None = None,
        variables: Sequence[str] = (),
        sender: str | None = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        base_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            to=to,
            body=body,
            template=template,
            variables=variables,
            sender=sender,
            wa019_conn_id=wa019_conn_id,
            **kwargs,
        )
        self.body = body  # None: the task's own subject and body (the parent has a default text)
        self.base_url = base_url
        self._asked: list[Asked] = []
        self._ti: Any = None
        self._remembered = True

    def notify(self, context: Context) -> None:
        """Send the question to every approver, then record what was sent (called by ``__call__``,
        on a copy of the notifier, so the per-call state below is this call's own)."""
        from airflow_provider_wa019.approvals import answer_hint, question_text

        ti = context.get("task_instance") or context.get("ti")
        # The task instance's task: the one whose subject and body were rendered. (On Airflow 3.1
        # context["task"] is the copy from before rendering: its body would still be Jinja.)
        task = getattr(ti, "task", None)
        if not hasattr(task, "options"):
            task = context.get("task")
        options = getattr(task, "options", None)
        if not options or ti is None or not isinstance(options, (list, tuple)):
            self.log.error(
                "WhatsApp question not sent: WhatsAppHITLNotifier is for human-in-the-loop operators "
                "(HITLOperator, ApprovalOperator, ...), not %s",
                type(task).__name__,
            )
            return
        self._skip_stale_supervisor_answer()
        multiple = bool(getattr(task, "multiple", False))
        link = self._link(context)
        hint = answer_hint(options, multiple)
        if self.body is None:
            self.body = question_text(
                getattr(task, "subject", ""), getattr(task, "body", None), options, multiple, link
            )
        else:
            self.body = "\n\n".join(
                part
                for part in (str(self.body).strip(), hint, link and f"Or answer in Airflow: {link}")
                if part
            )
        if self.template and not self.variables:
            self.variables = [
                str(getattr(task, "subject", "") or "Approval"),
                hint,
                *([link] if link else []),
            ]
        self._asked = []
        self._ti = ti
        self._remembered = True
        super().notify(context)
        if self._asked and self._remembered:
            self.log.info(
                "WhatsApp question of %s sent to %d approver(s); their answer is taken by the "
                "webhook of connection %r",
                self._request().label,
                len({a.number for a in self._asked}),
                self.wa019_conn_id,
            )

    def _skip_stale_supervisor_answer(self) -> None:
        """Airflow 3.1.0's task supervisor answers the HITL operator's request (storing the
        question, just before the notifiers run) twice, so the task's next request to it reads
        that stale answer: the hook's connection lookup fails with "Connection.__init__() got an
        unexpected keyword argument 'ti_id'". Before 3.2, ask for the connection once here and,
        when the answer is that stale one, read off the real one, so the channel is in step again
        (a supervisor that answers once gives the connection: nothing to do)."""
        try:
            from airflow import __version__ as airflow_version
            from airflow.sdk.execution_time import comms, task_runner

            if tuple(int(p) for p in airflow_version.split(".")[:2] if p.isdigit()) >= (3, 2):
                return
            channel = getattr(task_runner, "SUPERVISOR_COMMS", None)
            stale = getattr(comms, "HITLDetailRequestResult", None)
            if channel is None or stale is None:
                return
            answer = channel.send(comms.GetConnection(conn_id=self.wa019_conn_id))
            if isinstance(answer, stale):
                channel._get_response()  # the connection's own answer, one frame behind
        except Exception as err:  # the lookup proper reports any real problem
            self.log.debug("supervisor channel check: %s: %s", type(err).__name__, err)

    def _link(self, context: Context) -> str | None:
        try:
            from airflow.providers.standard.operators.hitl import HITLOperator

            return HITLOperator.generate_link_to_ui_from_context(
                context=context, base_url=self.base_url or None
            )
        except Exception as err:  # no base URL configured, or not a HITLOperator
            self.log.info("WhatsApp question without a link to the Airflow UI: %s", err)
            return None

    def _send_one(
        self, hook: WhatsAppHook, number: str, body: str | None, variables: Any
    ) -> tuple[SendResult, str]:
        import pendulum

        from airflow_provider_wa019.approvals import Asked
        from airflow_provider_wa019.validation import normalize_number

        result, sent_as = super()._send_one(hook, number, body, variables)
        # The number as the platform writes a client's number in its webhooks: international
        # digits, so an answer's sender compares equal.
        digits = normalize_number(number, field="to", region=hook.settings.default_region).lstrip("+")
        self._asked.append(Asked(digits, result.unique, pendulum.now("UTC").isoformat(), sent_as))
        # Recorded after each send, not once at the end: an approver who answers at once must
        # find the question known to the webhook, however many approvers come after them.
        self._remember()
        return result, sent_as

    def _request(self) -> ApprovalRequest:
        from airflow_provider_wa019.approvals import ApprovalRequest

        ti = self._ti
        return ApprovalRequest(
            ti_id=str(ti.id),
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=ti.map_index if ti.map_index is not None else -1,
            try_number=ti.try_number,
            conn_id=self.wa019_conn_id,
            asked=tuple(self._asked),
        )

    def _remember(self) -> None:
        """Keep what was sent so far for the webhook (the Variable of this try); log, never raise."""
        from airflow_provider_wa019.approvals import request_key
        from airflow_provider_wa019.bulk.variable_store import task_variables

        request = self._request()
        try:
            task_variables(self.log).set(
                request_key(request.ti_id),
                request.to_json(),
                f"WhatsApp question of {request.label}, run {request.run_id}, try {request.try_number}",
            )
        except Exception as err:
            if self._remembered:
                self.log.error(
                    "WhatsApp question sent, but not recorded for the webhook (%s: %s): answers on "
                    "WhatsApp will not be recognised; answer in the Airflow UI",
                    type(err).__name__,
                    err,
                )
            self._remembered = False


#: Snake-case alias, as for :func:`send_whatsapp_notification`.
send_whatsapp_hitl_request = WhatsAppHITLNotifier
