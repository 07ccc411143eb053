"""Human-in-the-loop requests asked on WhatsApp: the one home of their rules.

Read by the notifier that asks (``notifications/hitl.py``, on the worker) and by the webhook
that takes the answers (``webhook/approvals.py``, in the api-server):

* how a question reads: the subject, the body, the options numbered ("Reply 1 to Approve, 2 to
  Reject"), the link to the task's page in the UI (:func:`question_text`);
* what a reply means: an option's number or an option's text, case and spaces ignored, several
  of them when the request allows ``multiple`` (:func:`read_choice`);
* the record of a request: which messages went to which numbers for which task instance, kept in
  an Airflow Variable named after the task instance's id (:class:`ApprovalRequest`).

Imports nothing beyond the standard library: DAG files import the notifier at every parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

#: Every Variable of a request asked on WhatsApp starts with this; the rest is the task
#: instance's id (a UUID, new for every try), so one Variable per asked try.
REQUEST_KEY_PREFIX = "wa019_hitl."
#: Requests asked longer ago than this are not looked at by the webhook (an answer to one gets
#: no reply and is an ordinary inbound message).
REQUEST_LOOKBACK_DAYS = 14
#: The most recent requests the webhook looks at per delivery (newest first).
MAX_OPEN_REQUESTS = 500

#: "1", "2, 3", "1 3", "1,2 and 3": a reply made of option numbers.
_NUMBERS_RE = re.compile(r"^\s*\d+(\s*(,|;|\s|\band\b|&)\s*\d+)*\s*$", re.IGNORECASE)
_SEPARATORS_RE = re.compile(r"\s*(?:,|;|&|\band\b)\s*|\s+", re.IGNORECASE)
#: What people add around a one-word answer: "Approve.", "*Approve*", "1!".
_DECORATION = " \t\r\n.!?*_~\"'"


def request_key(ti_id: str) -> str:
    """The Variable holding the request of task instance (try) ``ti_id``."""
    return f"{REQUEST_KEY_PREFIX}{ti_id}"


def answer_hint(options: Sequence[str], multiple: bool) -> str:
    """How to answer: ``Reply 1 to Approve, 2 to Reject.`` (with ``multiple``, several numbers)."""
    numbered = ", ".join(f"{n} to {option}" for n, option in enumerate(options, 1))
    if multiple and len(options) > 1:
        return f"Reply with one or more numbers, e.g. 1,2: {numbered}."
    return f"Reply {numbered}."


def question_text(
    subject: str, body: str | None, options: Sequence[str], multiple: bool, link: str | None
) -> str:
    """The free-form question: subject (bold), body, how to answer, and the UI link."""
    parts = [f"*{subject.strip()}*"] if subject and subject.strip() else []
    if body and body.strip():
        parts.append(body.strip())
    parts.append(answer_hint(options, multiple))
    if link:
        parts.append(f"Or answer in Airflow: {link}")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Choice:
    """What a reply's text means for one request.

    ``options``: the options it names (in the request's order), empty when it names none.
    ``problem``: why it is not a valid answer, None when it is. ``attempted``: it reads as an
    answer (numbers, or an option's text) even if it is not a valid one; a text that is not
    attempted is an ordinary message.
    """

    options: tuple[str, ...] = ()
    problem: str | None = None
    attempted: bool = False

    @property
    def valid(self) -> bool:
        return self.attempted and self.problem is None and bool(self.options)


def _normal(text: str) -> str:
    return " ".join(text.split()).strip(_DECORATION).casefold()


def read_choice(text: str | None, options: Sequence[str], multiple: bool) -> Choice:
    """Read a reply's text as an answer to a request with ``options``.

    An option's number (1-based) or its text, case and spaces ignored (``"approve"``,
    ``" APPROVE "``, ``"*Approve*."``); with ``multiple``, several of either separated by
    commas, semicolons, "and" or spaces (numbers). Anything else is not an answer
    (``attempted`` False), except numbers that name no option or several numbers where one is
    asked for, which are an answer with a ``problem``.
    """
    if not text or not text.strip():
        return Choice()
    wanted = _normal(text)
    by_text = {_normal(option): option for option in options}
    if wanted in by_text:
        return Choice((by_text[wanted],), attempted=True)
    if _NUMBERS_RE.match(text.strip(_DECORATION)):
        numbers = [int(part) for part in _SEPARATORS_RE.split(text.strip(_DECORATION)) if part]
        return _by_numbers(numbers, options, multiple)
    if multiple:
        parts = [_normal(part) for part in _SEPARATORS_RE.split(text) if _normal(part)]
        # Several option texts ("approve, publish"); spaces inside an option's text are kept
        # by trying the comma-separated parts first.
        comma_parts = [_normal(part) for part in re.split(r"[,;]", text) if _normal(part)]
        for candidate in (comma_parts, parts):
            if len(candidate) > 1 and all(part in by_text for part in candidate):
                chosen = {by_text[part] for part in candidate}
                return Choice(tuple(o for o in options if o in chosen), attempted=True)
    return Choice()


def _by_numbers(numbers: list[int], options: Sequence[str], multiple: bool) -> Choice:
    bad = [n for n in numbers if not 1 <= n <= len(options)]
    if bad:
        return Choice(problem=f"{bad[0]} is not an option", attempted=True)
    if len(set(numbers)) > 1 and not multiple:
        return Choice(problem="choose one option", attempted=True)
    chosen = {options[n - 1] for n in numbers}
    return Choice(tuple(o for o in options if o in chosen), attempted=True)


@dataclass(frozen=True)
class Asked:
    """One question sent: to ``number`` (international digits), message ``unique``, at ``sent_at``
    (ISO 8601, UTC), as a free-form ``message`` or a ``template``."""

    number: str
    unique: str
    sent_at: str
    sent_as: str = "message"


@dataclass(frozen=True)
class ApprovalRequest:
    """A human-in-the-loop request of one task instance try, as asked on WhatsApp.

    Written by the notifier (one Variable per try, :func:`request_key`); read by the webhook to
    tell an answer (a message from one of ``asked``'s numbers) from an ordinary message.
    ``answered_by`` is the ``unique`` of the message that answered it, once one did (so a
    re-delivery of that message is known for what it is).
    """

    ti_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    conn_id: str
    asked: tuple[Asked, ...] = ()
    answered_by: str | None = None

    @property
    def label(self) -> str:
        """``dag / task`` (with the map index of a mapped task), as replies name the request."""
        task = self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"
        return f"{self.dag_id} / {task}"

    def asked_number(self, number: str) -> bool:
        return any(a.number == number for a in self.asked)

    def sent_message(self, unique: str) -> bool:
        return any(a.unique == unique for a in self.asked)

    def last_asked(self, number: str) -> str:
        """When ``number`` was last asked (ISO text, sorts by time), "" when never."""
        return max((a.sent_at for a in self.asked if a.number == number), default="")

    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "ti_id": self.ti_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "task_id": self.task_id,
                "map_index": self.map_index,
                "try_number": self.try_number,
                "conn_id": self.conn_id,
                "asked": [a.__dict__ for a in self.asked],
                "answered_by": self.answered_by,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ApprovalRequest:
        """Parse :meth:`to_json`'s text; ValueError when it is not a request record."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a request record")
        try:
            return cls(
                ti_id=str(data["ti_id"]),
                dag_id=str(data["dag_id"]),
                run_id=str(data["run_id"]),
                task_id=str(data["task_id"]),
                map_index=int(data["map_index"]),
                try_number=int(data["try_number"]),
                conn_id=str(data["conn_id"]),
                asked=tuple(Asked(**a) for a in data["asked"]),
                answered_by=data.get("answered_by"),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a request record: {err}") from err

    def answered(self, unique: str) -> ApprovalRequest:
        return replace(self, answered_by=unique)
