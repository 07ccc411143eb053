"""WhatsApp alerts from Airflow callbacks: ``on_failure_callback=send_whatsapp_notification(...)``,
and deadline alerts on the triggerer: ``AsyncCallback(WhatsAppNotifier, kwargs={...})``.

Imported by DAG files at every parse, so it imports only Airflow's task SDK; the hook (with
requests and phonenumbers, or aiohttp for the awaited path) loads when a notification is sent.
"""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseNotifier

from airflow_provider_wa019.constants import DEFAULT_CONN_ID

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_wa019.api import SendResult
    from airflow_provider_wa019.exceptions import WhatsAppError
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
    from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook

#: Used when neither ``body`` nor ``template`` is given. Written to render in any callback
#: context: DAG-level and deadline callbacks have no ``ti``, and Airflow's Jinja is strict about
#: undefined names.
DEFAULT_BODY = (
    "*Airflow*: "
    "{% if ti is defined and ti %}task {{ ti.task_id }} of {% endif %}"
    "DAG {% if dag is defined and dag %}{{ dag.dag_id }}{% elif dag_run is defined and dag_run %}"
    "{{ dag_run.dag_id }}{% else %}?{% endif %}"
    # ti.state is a TaskInstanceState enum, which renders as "TaskInstanceState.FAILED".
    "{% if ti is defined and ti and ti.state %} is *{{ ti.state.value if ti.state.value is defined"
    " else ti.state }}*{% endif %}"
    "{% if run_id is defined and run_id %}\nRun: {{ run_id }}"
    "{% elif dag_run is defined and dag_run and dag_run.run_id is defined %}\nRun: {{ dag_run.run_id }}"
    # A deadline alert's dag_run is the REST API's DAGRunResponse as JSON: its id is dag_run_id.
    "{% elif dag_run is defined and dag_run and dag_run.dag_run_id is defined %}\nRun: {{ dag_run.dag_run_id }}"
    "{% endif %}"
    "{% if ti is defined and ti %} (try {{ ti.try_number }}){% endif %}"
    "{% if exception is defined and exception %}\nError: {{ exception | string | truncate(300) }}{% endif %}"
    "{% if deadline is defined and deadline %}\nDeadline missed: {{ deadline.deadline_time }}{% endif %}"
    "{% if ti is defined and ti %}\nLog: {{ ti.log_url }}{% endif %}"
)

#: What the awaited path imports beyond this module: the async hook (with aiohttp) and the number
#: checks (phonenumbers). A first import of them takes 0.3-0.7 s, which on the triggerer's event
#: loop, shared by every trigger, is a blocked loop ("likely caused by a badly-written trigger",
#: as a real triggerer logged it): ``async_notify`` imports them on a worker thread.
_ASYNC_PATH_MODULES = ("airflow_provider_wa019.hooks.whatsapp_async", "phonenumbers")


async def _import_async_path() -> None:
    import asyncio
    import importlib
    import sys

    missing = [name for name in _ASYNC_PATH_MODULES if name not in sys.modules]
    if missing:
        await asyncio.to_thread(lambda: [importlib.import_module(name) for name in missing])


class WhatsAppNotifier(BaseNotifier):
    """Send a WhatsApp message from an Airflow callback (task or DAG level, deadline alerts).

    ::

        WhatsAppSendOperator(..., on_failure_callback=send_whatsapp_notification(
            to=["+972 50-123-4567", "+972 52-765-4321"],
            body="{{ dag.dag_id }}.{{ ti.task_id }} failed: {{ exception }}\\n{{ ti.log_url }}",
        ))

    ``body`` and ``variables`` are Jinja templates rendered with the callback's context
    (``dag``, ``ti``, ``run_id``, ``logical_date``, ``exception``, ``params`` ...); without
    ``body`` and ``template`` a default text names the DAG, task, state, run, try, error and
    log URL. Which message goes out:

    * ``body`` only: a free-form message (reaches only recipients who wrote in the last 24 h);
    * ``template`` only: that approved template with ``variables`` (reaches anyone);
    * both: the free-form message, and the template to a recipient who refused it with
      reason 7 or 8 (window closed).

    Failures never reach Airflow: each is logged with the API's reason (e.g. ``reason 3
    (wrong API token)``) and the task or DAG run keeps the state it had. One hook, so one HTTP
    session, serves all recipients of one notification; a refusal that concerns the
    connection (reason 3, a missing token or sender) stops the remaining sends.

    As a deadline alert (Airflow 3.1+), it runs on the triggerer, awaited::

        DeadlineAlert(..., callback=AsyncCallback(WhatsAppNotifier, kwargs={"to": "+972 50-123-4567"}))

    Airflow builds it with the kwargs and a simplified ``context`` (``deadline`` and
    ``dag_run``) and awaits it: the same rendering and the same rules, sent through the async
    hook (:meth:`async_notify`) so the triggerer's event loop is never blocked.

    :param to: one recipient number or a list of them (templated; a string rendering to a list
        literal or to comma-separated numbers also means several).
    :param body: the message text (templated), at most 4096 characters once rendered (longer
        text is cut, so that an alert with a long traceback still goes out).
    :param template: name of an approved template (templated).
    :param variables: values for the template's ``{{1}}`` ... ``{{10}}`` (each templated; line
        breaks, tabs and runs of spaces become one space, as WhatsApp requires).
    :param sender: the ``from`` account (templated); defaults to the connection's ``sender``.
    :param wa019_conn_id: the Airflow connection of type ``wa019``.
    """

    template_fields: Sequence[str] = ("to", "body", "template", "variables", "sender", "wa019_conn_id")

    def __init__(
        self,
        *,
        to: str | Sequence[str],
        body: str | None = None,
        template: str | None = None,
        variables: Sequence[str] = (),
        sender: str | None = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        # kwargs carries ``context`` when Airflow builds the notifier itself (deadline alerts,
        # Airflow >= 3.1); older BaseNotifiers take no arguments, hence only when given.
        super().__init__(**kwargs)
        if not isinstance(to, str) and not (
            isinstance(to, Sequence) and to and all(isinstance(n, str) for n in to)
        ):
            raise TypeError("to must be a phone number or a non-empty list of phone numbers")
        self.to = to
        self.body = DEFAULT_BODY if body is None and template is None else body
        self.template = template
        self.variables = variables
        self.sender = sender
        self.wa019_conn_id = wa019_conn_id

    def __call__(self, *args: Any) -> None:
        """Render and send; log, never raise, whatever goes wrong (rendering included)."""
        # BaseNotifier renders template fields in place. One notifier object is often shared by
        # many tasks (default_args) that run in one process (dag.test()): work on a copy so the
        # next callback renders the Jinja source again, not the previous task's text.
        notifier = copy.copy(self)
        try:
            super(WhatsAppNotifier, notifier).__call__(*args)
        except Exception as err:
            self.log.error("WhatsApp notification not sent: %s: %s", type(err).__name__, err)

    def __await__(self) -> Generator[Any, None, None]:
        """Awaited by Airflow (the triggerer's deadline alerts): render with ``self.context``,
        then :meth:`async_notify`; log, never raise, whatever goes wrong (rendering included).

        ``BaseNotifier.__await__`` renders the template fields and hands over the awaitable of
        :meth:`async_notify` (Task SDK 1.1 and 1.3 alike); it runs on a copy, as :meth:`__call__`.
        Cancellation (the triggerer stopping) is not caught.
        """
        notifier = copy.copy(self)
        try:
            yield from super(WhatsAppNotifier, notifier).__await__()
        except Exception as err:
            self.log.error("WhatsApp notification not sent: %s: %s", type(err).__name__, err)

    def get_template_env(self, dag: Any = None) -> Any:
        """The DAG's Jinja environment, or Airflow's default one when the DAG cannot make one."""
        # Airflow 3.3.2's dag.test() hands DAG-level callbacks a SerializedDAG, which has no
        # get_template_env: render with the default environment (no DAG macros) rather than fail.
        if dag is not None and not callable(getattr(dag, "get_template_env", None)):
            dag = None
        return super().get_template_env(dag=dag)

    def notify(self, context: Context) -> None:
        """Send the rendered message to every recipient (called by ``__call__``)."""
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

        recipients = self._recipients()
        if not recipients:
            return
        sent = 0
        try:
            body, variables = self._message()  # the same for every recipient
            with WhatsAppHook(self.wa019_conn_id) as hook:
                for number in recipients:
                    try:
                        result, sent_as = self._send_one(hook, number, body, variables)
                    except WhatsAppError as err:
                        if self._failed(number, err):
                            break
                        continue
                    sent += 1
                    self._sent(number, result, sent_as)
        except Exception as err:  # a bug or an unforeseen failure: still never into Airflow
            self.log.error("WhatsApp notification failed: %s: %s", type(err).__name__, err)
        self._tally(sent, recipients)

    async def async_notify(self, context: Context) -> None:
        """Send the rendered message to every recipient through the async hook (awaited by
        ``__await__``, on the triggerer): the same messages, rules and log lines as
        :meth:`notify`."""
        await _import_async_path()  # off the event loop: nothing below imports anything heavy
        from airflow_provider_wa019.exceptions import WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp_async import WhatsAppAsyncHook

        recipients = self._recipients()
        if not recipients:
            return
        sent = 0
        try:
            body, variables = self._message()  # the same for every recipient
            async with WhatsAppAsyncHook(self.wa019_conn_id) as hook:
                for number in recipients:
                    try:
                        result, sent_as = await self._asend_one(hook, number, body, variables)
                    except WhatsAppError as err:
                        if self._failed(number, err):
                            break
                        continue
                    sent += 1
                    self._sent(number, result, sent_as)
        except Exception as err:  # a bug or an unforeseen failure: still never into Airflow
            self.log.error("WhatsApp notification failed: %s: %s", type(err).__name__, err)
        self._tally(sent, recipients)

    # --- what both paths share -------------------------------------------------------------

    def _recipients(self) -> list[str]:
        from airflow_provider_wa019.templating import recipient_list

        recipients = recipient_list(self.to)
        if not recipients:
            self.log.error("WhatsApp notification not sent: 'to' rendered to no recipient (%r)", self.to)
        return recipients

    def _message(self) -> tuple[str | None, Any]:
        """The rendered body (cut to WhatsApp's limit) and template variables, made to fit."""
        from airflow_provider_wa019.api import MAX_BODY_CHARS, collapse_whitespace
        from airflow_provider_wa019.templating import template_variables

        # WhatsApp refuses a template variable with a line break, a tab or 5 spaces in a row, and
        # a rendered "{{ exception }}" or traceback has all of them: one line each, always.
        variables = template_variables(self.variables)
        if isinstance(variables, (list, tuple)):
            variables = [collapse_whitespace(v) if isinstance(v, str) else v for v in variables]
        if self.body is None:
            return None, variables
        body = str(self.body)
        if len(body) > MAX_BODY_CHARS:
            body = body[: MAX_BODY_CHARS - 1] + "…"
        return body, variables

    def _send_one(
        self, hook: WhatsAppHook, number: str, body: str | None, variables: Any
    ) -> tuple[SendResult, str]:
        if body is None:
            return hook.send_template(number, self.template, variables, sender=self.sender), "template"
        return hook.send_message_or_template(
            number, body, fallback_template=self.template, fallback_variables=variables, sender=self.sender
        )

    async def _asend_one(
        self, hook: WhatsAppAsyncHook, number: str, body: str | None, variables: Any
    ) -> tuple[SendResult, str]:
        if body is None:
            return await hook.send_template(number, self.template, variables, sender=self.sender), "template"
        return await hook.send_message_or_template(
            number, body, fallback_template=self.template, fallback_variables=variables, sender=self.sender
        )

    def _failed(self, number: str, err: WhatsAppError) -> bool:
        """Log a recipient's failure; True when the others would fail alike (stop sending)."""
        from airflow_provider_wa019.masking import mask_number
        from airflow_provider_wa019.outcomes import judge

        self.log.error("WhatsApp notification to %s not sent: %s", mask_number(str(number)), err)
        # A refused token, an unusable connection: every other recipient would get the same
        # answer. (Reason 2 is not: from the template endpoint it may be about the template, and
        # one request per recipient is cheap.)
        if judge(err).connection_at_fault:
            self.log.error("Not trying the other recipients: the connection is at fault")
            return True
        return False

    def _sent(self, number: str, result: SendResult, sent_as: str) -> None:
        from airflow_provider_wa019.masking import mask_number

        self.log.info(
            "WhatsApp notification sent to %s as %s, id %s", mask_number(str(number)), sent_as, result.unique
        )

    def _tally(self, sent: int, recipients: list[str]) -> None:
        if sent < len(recipients):
            self.log.warning("WhatsApp notification reached %d of %d recipient(s)", sent, len(recipients))


#: Snake-case alias, so callbacks read naturally: ``on_failure_callback=send_whatsapp_notification(...)``.
send_whatsapp_notification = WhatsAppNotifier
