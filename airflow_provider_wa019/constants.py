"""The API's reason rules and the provider's shared constants, in one place.

Imports nothing (``enum`` is loaded by Python itself): the operators, which DAG files import at
every parse, read it too. Every module that needs one of these names imports it from here.
"""

from __future__ import annotations

from enum import IntEnum

#: The connection type and the connection id used when none is given.
CONN_TYPE = "wa019"
DEFAULT_CONN_ID = "wa019_default"


class Reason(IntEnum):
    """The ``reason`` codes the API answers with (vendor's "Status explanation" table)."""

    OK = 1
    BAD_SENDER_OR_JSON = 2
    BAD_TOKEN = 3
    BAD_RECIPIENT = 4
    EMPTY_BODY = 5
    WHATSAPP_ERROR = 6
    WINDOW_CLOSED = 7
    FIRST_CONTACT = 8


REASON_MEANINGS: dict[int, str] = {
    Reason.OK: "OK",
    Reason.BAD_SENDER_OR_JSON: "the 'from' account does not exist, or the request JSON is malformed",
    Reason.BAD_TOKEN: "wrong API token",
    Reason.BAD_RECIPIENT: "'to' is empty or not a valid number",
    Reason.EMPTY_BODY: "'body' is empty",
    Reason.WHATSAPP_ERROR: "WhatsApp error, try again",
    Reason.WINDOW_CLOSED: (
        "more than 24 hours since the client's last message: send an approved template instead"
    ),
    Reason.FIRST_CONTACT: "first message to this contact: send an approved template instead",
}


def reason_meaning(reason: int) -> str:
    """The API's meaning of a reason code, or a note that the code is undocumented."""
    return REASON_MEANINGS.get(reason, f"undocumented reason code {reason}")


#: WhatsApp's own "not sent, try again": the only API refusal a retry can cure, and safe to retry.
RETRYABLE_REASONS = frozenset({Reason.WHATSAPP_ERROR})
#: The client's 24 h window is closed (7) or was never opened (8): nothing was sent, and only an
#: approved template can reach the client. The fallback sends one; by default they skip a task.
WINDOW_REASONS = frozenset({Reason.WINDOW_CLOSED, Reason.FIRST_CONTACT})
DEFAULT_SKIP_REASONS: tuple[int, ...] = (Reason.WINDOW_CLOSED.value, Reason.FIRST_CONTACT.value)

#: Kept-alive connections per host in a hook's pool, and so the most requests a bulk send keeps
#: in flight: more threads than connections would open and drop a connection per send.
POOL_MAXSIZE = 32
MAX_BULK_CONCURRENCY = POOL_MAXSIZE
DEFAULT_BULK_CONCURRENCY = 4
