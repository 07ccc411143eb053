"""WhatsAppReplyOperator: answer the client messages that triggered this run, quoting them.

Imported by DAG files at every parse: only the task SDK and import-free modules at the top; the
hook and the message type load when the task runs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException, BaseOperator

from airflow_provider_wa019.constants import DEFAULT_CONN_ID, DEFAULT_SKIP_REASONS
from airflow_provider_wa019.operators.outcome import task_outcome

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_wa019.api import InboundMessage

__all__ = ["WhatsAppReplyOperator"]


class WhatsAppReplyOperator(BaseOperator):
    """Reply to the client messages that triggered this run, each reply quoting its message.

    For a DAG scheduled on :func:`~airflow_provider_wa019.inbound.whatsapp_inbound`::

        WhatsAppReplyOperator(task_id="answer", body="Thanks {{ message.sender_name or '' }}, we got: {{ message.body }}")

    ``body`` (and ``fallback_variables``) are rendered once per message with the task's context
    plus ``message`` (an :class:`~airflow_provider_wa019.api.InboundMessage`). Each reply goes to
    the message's sender with ``replyTo`` = its ``unique``. By default only each client's newest
    message of the run is answered (``each_message=True`` answers every one).

    The window is known before sending: the client wrote at ``message.timestamp``, so a
    free-form reply is allowed until 24 h later. Past that, ``fallback_template`` goes out
    directly (no refused request first), or the reply is skipped. The API stays the authority: a
    refusal with reason 7/8 still falls back or skips.

    Outcome: success when every reply went out (XCom ``return_value``: the reply ids, key
    ``replies``: ``[{"to", "reply_to", "unique", "sent_as"}]``); skipped when the run has no
    client message or every reply was skipped; otherwise the first failed reply ends the task
    as it would end :class:`~airflow_provider_wa019.operators.whatsapp.WhatsAppSendOperator`,
    after the other replies were tried. See the README, "Receiving messages".

    :param body: the reply text (Jinja, rendered per message).
    :param messages: the messages to answer instead of the triggering ones (templated): a list of
        :meth:`InboundMessage.to_dict` dicts or of webhook payloads, e.g. an upstream XCom.
    :param wa019_conn_id: the connection whose inbound messages to answer (templated).
    :param sender: ``from`` account (templated); defaults to the connection's ``sender``.
    :param fallback_template: an approved template for clients whose window has closed
        (templated).
    :param fallback_variables: its ``{{1}}`` ... values (Jinja, rendered per message; line
        breaks and runs of spaces become one space, as WhatsApp requires).
    :param each_message: answer every triggering message, not only each client's newest.
    :param skip_on_reasons: API reasons that skip a reply instead of failing the task.
    """

    template_fields: Sequence[str] = ("wa019_conn_id", "sender", "fallback_template", "messages")
    ui_color = "#25d366"

    def __init__(
        self,
        *,
        body: str,
        messages: Any = None,
        wa019_conn_id: str = DEFAULT_CONN_ID,
        sender: str | None = None,
        fallback_template: str | None = None,
        fallback_variables: Sequence[str] = (),
        each_message: bool = False,
        skip_on_reasons: Collection[int] = DEFAULT_SKIP_REASONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(body, str) or not body.strip():
            raise ValueError("body must be a non-empty text (a Jinja template)")
        self.body = body
        self.messages = messages
        self.wa019_conn_id = wa019_conn_id
        self.sender = sender
        self.fallback_template = fallback_template
        self.fallback_variables = tuple(fallback_variables)
        self.each_message = bool(each_message)
        self.skip_on_reasons = frozenset(int(r) for r in skip_on_reasons)

    def execute(self, context: Context) -> list[str]:
        from airflow_provider_wa019.api import collapse_whitespace
        from airflow_provider_wa019.exceptions import WhatsAppAPIError, WhatsAppError
        from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook
        from airflow_provider_wa019.inbound import inbound_messages
        from airflow_provider_wa019.masking import mask_number

        if self.messages is None:
            found = inbound_messages(context, self.wa019_conn_id)
        else:
            found = _given_messages(self.messages)
        messages = self._to_answer(found)
        if not messages:
            raise AirflowSkipException(
                f"no client message of connection {self.wa019_conn_id!r} triggered this run"
            )
        env = self.get_template_env()
        body = env.from_string(self.body)
        variables = [env.from_string(v) for v in self.fallback_variables]
        replies: list[dict[str, Any]] = []
        first_error: WhatsAppError | None = None
        skipped = 0
        with WhatsAppHook(self.wa019_conn_id) as hook:
            for message in messages:
                names = {**context, "message": message}
                shown = mask_number(message.sender)
                try:
                    # One line per variable: WhatsApp refuses line breaks in them (132018).
                    values = [collapse_whitespace(v.render(names)) for v in variables]
                    result, sent_as = self._reply(hook, message, body.render(names), values)
                except WhatsAppError as err:
                    if isinstance(err, WhatsAppAPIError) and err.reason in self.skip_on_reasons:
                        skipped += 1
                        self.log.warning("Reply to %s skipped: %s", shown, err)
                        continue
                    self.log.error("Reply to %s failed: %s", shown, err)
                    first_error = first_error or err
                    continue
                if result is None:
                    skipped += 1
                    self.log.warning(
                        "Reply to %s skipped: the client's window closed at %s and there is no "
                        "fallback_template",
                        shown,
                        message.window_closes_at.isoformat(),
                    )
                    continue
                replies.append(
                    {
                        "to": message.sender,
                        "reply_to": message.unique,
                        "unique": result.unique,
                        "sent_as": sent_as,
                    }
                )
                self.log.info("Replied to %s (%s), id %s", shown, sent_as, result.unique)
        if self.do_xcom_push:
            context["ti"].xcom_push(key="replies", value=replies)
        if first_error is not None:
            raise task_outcome(first_error, (), log=self.log) from first_error
        if not replies:
            raise AirflowSkipException(f"every reply was skipped ({skipped})")
        return [r["unique"] for r in replies]

    def _to_answer(self, messages: list[InboundMessage]) -> list[InboundMessage]:
        if self.each_message:
            return messages
        newest: dict[str, InboundMessage] = {}
        for message in messages:  # oldest first: the last one per client wins
            newest[message.sender] = message
        return sorted(newest.values(), key=lambda m: m.timestamp)

    def _reply(self, hook: Any, message: InboundMessage, text: str, values: list[str]) -> tuple[Any, str]:
        if message.window_open():
            return hook.send_message_or_template(
                message.sender,
                text,
                fallback_template=self.fallback_template,
                fallback_variables=values,
                sender=self.sender,
                reply_to=message.unique,
            )
        if self.fallback_template:
            # Known closed: straight to the template, no refused free-form request first.
            return hook.send_template(
                message.sender, self.fallback_template, values, sender=self.sender
            ), "template"
        return None, "none"


def _given_messages(value: Any) -> list[InboundMessage]:
    """``messages=`` as messages: :meth:`InboundMessage.to_dict` dicts or webhook payloads."""
    from airflow_provider_wa019.api import InboundMessage, parse_inbound
    from airflow_provider_wa019.templating import template_variables

    items = template_variables(value) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"messages must be a list of messages, got {type(value).__name__}")
    out = []
    for item in items:
        if isinstance(item, InboundMessage):
            out.append(item)
        elif isinstance(item, dict) and "sender" in item:
            out.append(InboundMessage.from_dict(item))
        else:
            out.append(parse_inbound(item))
    return sorted(out, key=lambda m: m.timestamp)
