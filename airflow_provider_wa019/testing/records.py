"""What passes between the simulator's layers: answers, refusals and the record of a request.

* :class:`Response`: one answer (status, JSON payload or raw body, extra headers), decided by the
  model or the control endpoints and written by ``server.py``.
* :class:`Refusal`: a send refused with a reason code (answered as HTTP 200 FAIL, like 019 does).
* :class:`RecordedRequest` and :func:`record`: one answered API request as ``sim.requests`` lists
  it, the token masked wherever it appears.
* :func:`json_or_none` and :func:`path_matches`: reading a body and matching a path, the one way
  every layer does it.

No state and no sockets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pendulum

from airflow_provider_wa019.api import reason_meaning


@dataclass
class Response:
    status: int
    payload: Any = None  # JSON answer, or None when ``body`` is raw
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
        data = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status=status, payload=payload, body=data, headers=headers or [])


class Refusal(Exception):
    """A send refused with a reason code (answered as HTTP 200 FAIL, like 019 does)."""

    def __init__(self, reason: int, message: str | None = None) -> None:
        super().__init__(message or reason_meaning(reason))
        self.reason = int(reason)  # plain int in recorded JSON, not the enum
        self.message = message or reason_meaning(reason)

    def response(self) -> Response:
        return Response.json(200, {"status": "FAIL", "reason": self.reason, "message": self.message})


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the simulator answered (control requests are not recorded).

    ``headers`` never hold the token: ``Authorization`` reads ``"Bearer ***"`` when it carried the
    right token and ``"Bearer <wrong>"`` otherwise, and the token is masked anywhere else too.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw: bytes
    received_at: pendulum.DateTime
    response_status: int
    response_json: Any
    #: The query string without ``?`` ("" when none); ``path`` never includes it.
    query: str = ""
    #: The client's TCP port: requests sharing it came over one kept-alive connection.
    client_port: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (what ``GET /__sim__/requests`` returns)."""
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "client_port": self.client_port,
            "headers": dict(self.headers),
            "json": self.json,
            "raw": self.raw.decode("utf-8", errors="replace"),
            "received_at": self.received_at.isoformat(),
            "response_status": self.response_status,
            "response_json": self.response_json,
        }


def record(
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    raw: bytes,
    received_at: pendulum.DateTime,
    response: Response,
    client_port: int,
    *,
    token: str,
    authorized: Callable[[str], bool],
) -> RecordedRequest:
    """The record of one answered request, with ``token`` masked in headers, body and answer.

    :param headers: the request's (name, value) pairs.
    :param authorized: whether an ``Authorization`` value carries the right token.
    """
    safe_headers: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == "authorization":
            value = "Bearer ***" if authorized(value) else "Bearer <wrong>"
        elif token in value:
            value = value.replace(token, "***")
        safe_headers[name] = value
    if token.encode() in raw:  # a client that leaks the token into the body: never store it
        raw = raw.replace(token.encode(), b"***")
    return RecordedRequest(
        method=method,
        path=path,
        headers=safe_headers,
        json=json_or_none(raw),
        raw=raw,
        received_at=received_at,
        response_status=response.status,
        response_json=_mask(response.payload, token),  # a send echoes the body, leaked token included
        query=query,
        client_port=client_port,
    )


def json_or_none(raw: bytes) -> Any:
    """``raw`` decoded as JSON, or None when it is empty or not JSON (at any depth: a body
    thousands of levels deep raises RecursionError in the decoder, and is not JSON here either)."""
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None


def path_matches(pattern: str | None, path: str) -> bool:
    """Whether ``path`` is ``pattern`` or below it (any path when ``pattern`` is None):
    "/whatsapp-api/get-phone-templates" also matches ".../get-phone-templates/<phone>"."""
    if pattern is None:
        return True
    pattern = pattern.rstrip("/") or "/"
    return path == pattern or path.startswith(pattern + "/")


def _mask(value: Any, token: str) -> Any:
    """``value`` (parsed JSON) with every occurrence of ``token`` in its strings replaced by ``***``."""
    if isinstance(value, str):
        return value.replace(token, "***") if token in value else value
    if isinstance(value, dict):
        return {_mask(k, token): _mask(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, token) for v in value]
    return value
