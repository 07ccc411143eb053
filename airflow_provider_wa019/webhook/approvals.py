"""Answers to human-in-the-loop questions, taken from inbound messages (in the api-server).

For each accepted delivery, :func:`consider` tells an answer from an ordinary message, and
records an answer through Airflow's own HITL answer path: the function behind ``PATCH
/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails``, with
its checks (already answered: 409; not among ``assigned_users``: 403; not an option: 400) and,
on Airflow 3.3, the move of the task out of ``awaiting_input``. On 3.1/3.2 the task's trigger
sees the answer on its next poll (every 5 s). So the task goes on exactly as after an answer in
the UI.

Which messages are answers (the requests are the ones :class:`WhatsAppHITLNotifier` recorded,
asked through this connection in the last :data:`REQUEST_LOOKBACK_DAYS` days):

* a message that quotes a question (``quote_unique`` = the question's ``unique``) is about that
  request: an answer if it comes from one of the numbers asked, names an option, and the request
  still waits; otherwise it is refused (nothing changes) with a short reply saying why;
* an unquoted message from a number with a request still open: about the newest such request,
  when its text reads as an answer (an option's number or text); numbers that name no option
  are refused with a reply; any other text is an ordinary message;
* everything else is an ordinary inbound message (an asset event), as before.

An answer is not also an asset event. Who answered is recorded as the HITL detail's
``responded_by``: id ``wa019:<masked number>``, name ``WhatsApp <masked number>`` (the last 4
digits), shown in the UI and the task's log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.utils.session import create_session

from airflow_provider_wa019.approvals import (
    MAX_OPEN_REQUESTS,
    REQUEST_KEY_PREFIX,
    REQUEST_LOOKBACK_DAYS,
    ApprovalRequest,
    Choice,
    answer_hint,
    read_choice,
    request_key,
)
from airflow_provider_wa019.masking import mask_number, scrub

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from airflow_provider_wa019.api import InboundMessage

log = logging.getLogger("airflow_provider_wa019.webhook")

#: The task instance states in which an unanswered request takes an answer: waiting for it,
#: deferred to the HITL trigger (Airflow 3.1/3.2) or parked in ``awaiting_input`` (3.3), and
#: ``running``: the notifiers run before the task parks, so a quick approver can answer first
#: (Airflow takes such an answer: the trigger's first poll, or 3.3's park, which then resumes
#: the task at once instead of parking it).
WAITING_STATES = frozenset({"running", "deferred", "awaiting_input"})

ANSWERED = "answered"
REFUSED = "refused"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Handled:
    """What became of a message that was about a request: ``answered`` (recorded), ``refused``
    (nothing changed) or ``duplicate`` (a re-delivery of the message that answered). ``reply``:
    the text to send back, if any."""

    status: str
    request: ApprovalRequest
    reply: str | None = None
    chosen: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Open:
    """A recorded request and the state of its task instance."""

    request: ApprovalRequest
    options: tuple[str, ...]
    multiple: bool
    answered: bool
    waiting: bool
    timed_out: bool = False
    params_input: dict[str, Any] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.waiting and not self.answered


class WhatsAppAnswerer(BaseUser):
    """The "user" an answer is recorded as (Airflow's ``BaseUser``: an id and a name)."""

    def __init__(self, number: str) -> None:
        self.masked = mask_number(number)

    def get_id(self) -> str:
        return f"wa019:{self.masked}"

    def get_name(self) -> str:
        return f"WhatsApp {self.masked}"

    def __repr__(self) -> str:
        return f"<WhatsAppAnswerer {self.masked}>"


def consider(conn_id: str, message: InboundMessage) -> Handled | None:
    """Take ``message`` as an answer when it is one (see the module docstring); None when it is
    an ordinary message. Commits what it records. Raises on a DB failure (the delivery gets 503
    and the platform tries again)."""
    text = message.body or message.caption
    with create_session() as session:
        requests = _recent_requests(session, conn_id)
    if not requests:
        return None
    for found in requests:
        if found.request.answered_by == message.unique:
            return Handled(DUPLICATE, found.request)
    if message.quote_unique:
        target = next((r for r in requests if r.request.sent_message(message.quote_unique)), None)
        if target is None:
            return None  # quoting something else: an ordinary reply
        if not target.request.asked_number(message.sender):
            log.warning(
                "webhook %r: %s quoted the question of %s but was not asked it; nothing recorded",
                conn_id, mask_number(message.sender), target.request.label,
            )  # fmt: skip
            return Handled(REFUSED, target.request, "Not recorded: this number was not asked that question.")
        choice = read_choice(text, target.options, target.multiple)
        if not target.open:
            # "Thanks!" under an answered question is an ordinary message; "1" is a late answer.
            return _closed(conn_id, target, message) if choice.attempted else None
        if not choice.valid:
            return _invalid(conn_id, target, choice, message)
        return _record(conn_id, target, choice, message)

    mine = [r for r in requests if r.open and r.request.asked_number(message.sender)]
    if not mine:
        return None
    target = max(mine, key=lambda r: r.request.last_asked(message.sender))
    choice = read_choice(text, target.options, target.multiple)
    if not choice.attempted:
        return None  # an approver writing something else: an ordinary message
    if not choice.valid:
        return _invalid(conn_id, target, choice, message)
    return _record(conn_id, target, choice, message)


def _closed(conn_id: str, target: _Open, message: InboundMessage) -> Handled:
    # A timeout's defaults are recorded as an answer by nobody (responded_by empty).
    answered = target.answered and not target.timed_out
    why = "it was already answered" if answered else "it is no longer waiting for an answer"
    log.info(
        "webhook %r: answer from %s to %s not recorded: %s",
        conn_id, mask_number(message.sender), target.request.label, why,
    )  # fmt: skip
    return Handled(REFUSED, target.request, f"Not recorded: {why} ({target.request.label}).")


def _invalid(conn_id: str, target: _Open, choice: Choice, message: InboundMessage) -> Handled:
    problem = choice.problem or "that is not one of the options"
    log.info(
        "webhook %r: answer from %s to %s not recorded: %s",
        conn_id, mask_number(message.sender), target.request.label, problem,
    )  # fmt: skip
    hint = answer_hint(target.options, target.multiple)
    return Handled(REFUSED, target.request, f"Not recorded: {problem}. {hint}")


def _record(conn_id: str, target: _Open, choice: Choice, message: InboundMessage) -> Handled:
    """Record the answer through Airflow's HITL answer path, once (see the module docstring)."""
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
    from fastapi import HTTPException

    from airflow_provider_wa019.webhook.store import lock_delivery

    request = target.request
    answerer = WhatsAppAnswerer(message.sender)
    with create_session() as session:
        # One answer at a time per request (Airflow 3.1's route takes no row lock itself); the
        # request is read again under the lock, so a concurrent answer is seen.
        lock_delivery(session, session.get_bind().dialect.name, conn_id, f"hitl:{request.ti_id}")
        stored = _stored_request(session, request.ti_id)
        current = _parse(stored) if stored is not None else None
        if current is not None and current.answered_by is not None:
            if current.answered_by == message.unique:
                return Handled(DUPLICATE, request)
            return _closed(conn_id, replace(target, answered=True), message)
        try:
            update_hitl_detail(
                dag_id=request.dag_id,
                dag_run_id=request.run_id,
                task_id=request.task_id,
                update_hitl_detail_payload=UpdateHITLDetailPayload(
                    chosen_options=list(choice.options), params_input=target.params_input
                ),
                user=answerer,
                session=session,
                map_index=request.map_index,
            )
        except HTTPException as err:
            session.rollback()
            why = {
                409: "it was already answered",
                403: "only the task's assigned users may answer it",
                404: "it is no longer waiting for an answer",
            }.get(err.status_code, "that is not one of the options")
            log.info(
                "webhook %r: answer from %s to %s not recorded: %s (%s)",
                conn_id, answerer.masked, request.label, why, err.status_code,
            )  # fmt: skip
            return Handled(REFUSED, request, f"Not recorded: {why} ({request.label}).")
        if stored is not None:
            stored.set_val(request.answered(message.unique).to_json())
            session.add(stored)
    chosen = ", ".join(choice.options)
    log.info(
        "webhook %r: recorded the answer %r of %s to %s (run %s)",
        conn_id, chosen, answerer.masked, request.label, request.run_id,
    )  # fmt: skip
    return Handled(ANSWERED, request, f"Recorded: {chosen} ({request.label})", choice.options)


def send_reply(conn_id: str, message: InboundMessage, text: str) -> None:
    """Answer ``message`` with ``text``, quoting it, from the number it was sent to. Run after the
    delivery was answered 200 (a slow send never makes the platform deliver again); a failure is
    logged with the API's reason, never raised: the answer itself is recorded either way."""
    from airflow.models.connection import Connection

    from airflow_provider_wa019.exceptions import WhatsAppError
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    try:
        with WhatsAppHook(conn_id) as hook:
            # Read server-side, as the webhook reads it (on Airflow 3.1 the task SDK's lookup,
            # the hook's own, fails outside a task).
            hook.use_connection(Connection.get_connection_from_secrets(conn_id))
            hook.send_message(message.sender, text, sender=message.to or None, reply_to=message.unique)
    except WhatsAppError as err:
        log.warning("webhook %r: reply to %s not sent: %s", conn_id, mask_number(message.sender), err)
    except Exception as err:
        log.error(
            "webhook %r: reply to %s failed: %s: %s",
            conn_id, mask_number(message.sender), type(err).__name__, scrub(str(err))[:200],
        )  # fmt: skip


def _recent_requests(session: Session, conn_id: str) -> list[_Open]:
    """The requests asked through ``conn_id`` in the lookback, newest first, with their state."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.variable import Variable

    since = datetime.now(timezone.utc) - timedelta(days=REQUEST_LOOKBACK_DAYS)
    rows = session.execute(
        sa.select(
            HITLDetail.ti_id,
            HITLDetail.options,
            HITLDetail.multiple,
            HITLDetail.responded_at,
            HITLDetail.responded_by,
            HITLDetail.params,
            TaskInstance.state,
        )
        .outerjoin(TaskInstance, TaskInstance.id == HITLDetail.ti_id)
        .where(HITLDetail.created_at >= since)
        .order_by(HITLDetail.created_at.desc())
        .limit(MAX_OPEN_REQUESTS)
    ).all()
    if not rows:
        return []
    by_key = {request_key(str(row.ti_id)): row for row in rows}
    found = []
    for variable in session.scalars(sa.select(Variable).where(Variable.key.in_(list(by_key)))):
        request = _parse(variable)
        row = by_key[variable.key]
        if request is None or request.conn_id != conn_id or request.ti_id != str(row.ti_id):
            continue
        state = getattr(row.state, "value", row.state)
        found.append(
            _Open(
                request=request,
                options=tuple(str(o) for o in (row.options or ())),
                multiple=bool(row.multiple),
                answered=row.responded_at is not None,
                waiting=state in WAITING_STATES,
                timed_out=row.responded_at is not None and not row.responded_by,
                params_input=_defaults_of(row.params),
            )
        )
    return found


def _defaults_of(params: Any) -> dict[str, Any]:
    """The request's form fields (``params``) answered with their defaults: a WhatsApp answer
    chooses options only, and the operator refuses an answer whose fields do not match its
    params (Airflow 3.1 also lists the DAG's params there). Stored as ``{name: value}`` (3.1.0)
    or ``{name: {"value": ..., "schema": ...}}`` (later): read as Airflow's timeout sweep does."""
    if not isinstance(params, dict):
        return {}
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in params.items()}


def _parse(variable: Any) -> ApprovalRequest | None:
    try:
        return ApprovalRequest.from_json(variable.val)
    except (ValueError, TypeError):
        log.warning("Variable %r is not a WhatsApp question record; ignored", variable.key)
        return None


def _stored_request(session: Session, ti_id: str) -> Any:
    """The Variable row of ``ti_id``'s request (None when there is none)."""
    from airflow.models.variable import Variable

    return session.scalar(sa.select(Variable).where(Variable.key == request_key(ti_id)))


__all__ = [
    "ANSWERED",
    "DUPLICATE",
    "REFUSED",
    "REQUEST_KEY_PREFIX",
    "Handled",
    "WhatsAppAnswerer",
    "consider",
    "send_reply",
]
