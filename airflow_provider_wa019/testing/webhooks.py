"""The simulator's side of the webhook: deliver a client's message as the platform would.

The platform POSTs one JSON message per request to the URL the account configured (the
payload is ``api.inbound_payload``, the same definition the receiver's parser reads) and expects
HTTP 200 within 5 s. Standard library only (urllib), like the rest of the simulator.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pendulum

__all__ = ["DELIVERY_TIMEOUT", "Delivery", "deliver", "mask_secret", "with_secret"]

#: The platform gives up on an answer after 5 s.
DELIVERY_TIMEOUT = 5.0
_SECRET_PARAM = "secret"


@dataclass(frozen=True)
class Delivery:
    """One POST of a client's message to the webhook, and what it answered.

    ``url`` has its ``secret`` shown as ``***``; ``status`` is None when no answer came (refused,
    timed out), with ``error`` saying why.
    """

    unique: str
    url: str
    status: int | None
    answer: str
    error: str | None
    at: pendulum.DateTime

    def to_dict(self) -> dict[str, Any]:
        return {
            "unique": self.unique,
            "url": self.url,
            "status": self.status,
            "answer": self.answer,
            "error": self.error,
            "at": self.at.isoformat(),
        }


def with_secret(url: str, secret: str | None) -> str:
    """``url`` with its ``secret`` query parameter set to ``secret`` (left as is when None)."""
    if secret is None:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != _SECRET_PARAM]
    query.append((_SECRET_PARAM, secret))
    return urlunsplit(parts._replace(query=urlencode(query)))


def mask_secret(url: str) -> str:
    """``url`` with the value of its ``secret`` parameter shown as ``***`` (for the record)."""
    parts = urlsplit(url)
    query = [
        (k, "***" if k == _SECRET_PARAM else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def deliver(url: str, body: bytes, *, unique: str, content_type: str = "application/json") -> Delivery:
    """POST ``body`` to ``url`` once and record the answer (never raises for a failed delivery)."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    status: int | None = None
    answer, error = "", None
    try:
        # No proxies: the webhook of a test is on loopback, whatever the environment says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=DELIVERY_TIMEOUT) as response:
            status = response.status
            answer = response.read(4096).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        status = err.code
        answer = err.read(4096).decode("utf-8", errors="replace")
    except (OSError, ValueError) as err:  # refused, timed out, a malformed URL
        error = f"{type(err).__name__}: {err}"
    return Delivery(unique, mask_secret(url), status, answer, error, pendulum.now("UTC"))


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
