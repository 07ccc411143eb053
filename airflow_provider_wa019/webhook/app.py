"""The webhook's FastAPI app, mounted by Airflow's api-server at ``/wa019``.

``POST /wa019/webhook/{conn_id}``, checked in this order, each refusal a short JSON
``{"error": "..."}`` and nothing recorded:

1. 404: no connection ``conn_id``, not of type ``wa019``, or without ``webhook_secret``
   (receiving is off unless configured). One body for all three.
2. 403: ``webhook_allowed_ips`` is set and the client is not in it.
3. 401: the secret is missing or wrong (``?secret=`` or header ``X-Wa019-Secret``).
4. 413: the body is larger than :data:`~airflow_provider_wa019.api.MAX_INBOUND_BYTES` (by its
   declared length, and counted while it is read: a chunked or lying body is cut off there).
   415: not ``application/json`` (a ``charset=utf-8`` parameter is fine), or content-encoded.
   400: not JSON, not an object, nested too deep, or not a message
   (:func:`~airflow_provider_wa019.api.parse_inbound`'s reason).
5. 200: ``{"status": "recorded"}``, or ``{"status": "duplicate"}`` for a message already
   recorded (the platform re-delivers; it must see 200 or it tries again). A message that
   answers a human-in-the-loop question asked on WhatsApp is not an asset event:
   ``{"status": "answered"}`` (recorded through Airflow's HITL answer path), ``"refused"``
   (nothing changed) or ``"duplicate"``, with a short reply sent after the response (see
   :mod:`airflow_provider_wa019.webhook.approvals`).

503 when the metadata DB or the connection look-up fails: the platform (with retries on) tries
again later. Built only where it is served: see :mod:`airflow_provider_wa019.webhook.plugin`.

``GET /wa019/window/{conn_id}/{number}``: what the webhook has seen of a client's 24 h window,
for the hook (``WhatsAppHook.window``) on the workers: ``{"number", "last_inbound",
"window_open", "closes_at"}``. The same 404 and 401 (header ``X-Wa019-Secret``) as the webhook;
the IP allow-list is not applied (it names the platform's addresses, and this caller is a
worker). Read-only. Expose only ``/wa019/webhook/`` to the internet, not this.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import TYPE_CHECKING, Any

import pendulum
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from airflow_provider_wa019.api import MAX_INBOUND_BYTES, MAX_JSON_DEPTH, InboundError, parse_inbound
from airflow_provider_wa019.masking import mask_number
from airflow_provider_wa019.webhook.auth import (
    MAX_CONN_ID_CHARS,
    SECRET_HEADER,
    SECRET_PARAM,
    SettingsCache,
    WebhookSettings,
    install_access_log_redactor,
)

if TYPE_CHECKING:
    from starlette.responses import Response

log = logging.getLogger("airflow_provider_wa019.webhook")

WEBHOOK_PATH = "/webhook/{conn_id}"
WINDOW_PATH = "/window/{conn_id}/{number}"
NOT_FOUND = "not found"


def create_app(settings_cache: SettingsCache | None = None) -> FastAPI:
    """A new webhook app with its own connection cache (a fresh app is a restarted server)."""
    # Airflow's HITL answer route (webhook/approvals.py records answers through it): already
    # loaded in the api-server, which serves it; imported here, not at the first answer, where
    # a process without it (a test) would spend seconds importing the Core API mid-request.
    import airflow.api_fastapi.core_api.routes.public.hitl  # noqa: F401

    receiver = WebhookReceiver(settings_cache or SettingsCache())
    app = FastAPI(
        title="019sms WhatsApp webhook",
        # No docs or schema pages: nothing here is for browsing, and less to probe.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.wa019_receiver = receiver
    install_access_log_redactor()

    @app.post(WEBHOOK_PATH)
    async def webhook(conn_id: str, request: Request) -> Response:
        return await receiver.handle(conn_id, request)

    @app.get(WINDOW_PATH)
    async def window(conn_id: str, number: str, request: Request) -> Response:
        return await receiver.window(conn_id, number, request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Unknown paths and methods answer in the same shape as the webhook's own refusals.
        detail = NOT_FOUND if exc.status_code == 404 else str(exc.detail).lower()
        return _error(exc.status_code, detail, headers=getattr(exc, "headers", None))

    return app


class WebhookReceiver:
    """The checks and the recording of one app. Holds the connection settings cache."""

    def __init__(self, settings_cache: SettingsCache) -> None:
        self.settings = settings_cache

    def __repr__(self) -> str:
        return f"<WebhookReceiver {self.settings!r}>"

    async def _settings(self, conn_id: str) -> WebhookSettings | Response:
        """The connection's webhook settings, or the 404/503 answer."""
        if not conn_id or len(conn_id) > MAX_CONN_ID_CHARS or "/" in conn_id:
            return _error(404, NOT_FOUND)
        found, settings = self.settings.cached(conn_id)
        if not found:
            try:  # secrets backends may block: not on the event loop
                settings = await run_in_threadpool(self.settings.get, conn_id)
            except Exception as exc:
                log.error("webhook: looking up connection %r failed: %s", conn_id, type(exc).__name__)
                return _error(503, "the connection could not be read, try again")
        if settings is None:
            log.debug("webhook: connection %r does not exist or does not receive", conn_id)
            return _error(404, NOT_FOUND)
        return settings

    async def window(self, conn_id: str, number: str, request: Request) -> Response:
        from airflow_provider_wa019.api import WINDOW_SECONDS, international_digits
        from airflow_provider_wa019.webhook.store import latest_inbound

        settings = await self._settings(conn_id)
        if not isinstance(settings, WebhookSettings):
            return settings
        if not settings.secret_matches(_presented_secrets(request)):
            return _error(401, "missing or wrong secret")
        digits = international_digits(number)
        if digits is None:
            return _error(400, "not a phone number")
        now = pendulum.now("UTC")
        try:
            found = await run_in_threadpool(
                functools.partial(latest_inbound, conn_id, digits, since=now.subtract(seconds=WINDOW_SECONDS))
            )
        except Exception:
            log.exception("webhook %r: could not read the window of %s", conn_id, mask_number(digits))
            return _error(503, "the window could not be read, try again")
        last = pendulum.parse(found["timestamp"]) if found else None
        closes = last.add(seconds=WINDOW_SECONDS) if last is not None else None  # type: ignore[union-attr]
        return JSONResponse(
            {
                "number": digits,
                "last_inbound": last.isoformat() if last is not None else None,  # type: ignore[union-attr]
                "window_open": closes is not None and now < closes,
                "closes_at": closes.isoformat() if closes is not None else None,
            }
        )

    async def handle(self, conn_id: str, request: Request) -> Response:
        settings = await self._settings(conn_id)
        if not isinstance(settings, WebhookSettings):
            return settings

        peer = request.client.host if request.client else None
        client = settings.client_address(peer, request.headers.getlist("x-forwarded-for"))
        if not settings.address_allowed(client):
            log.warning("webhook %r: refused delivery from %s (not in webhook_allowed_ips)", conn_id, client)
            return _error(403, "this address may not deliver here")

        if not settings.secret_matches(_presented_secrets(request)):
            log.warning("webhook %r: refused delivery from %s (missing or wrong secret)", conn_id, client)
            return _error(401, "missing or wrong secret")

        refusal = _content_refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = await _read_body(request, MAX_INBOUND_BYTES)
        except ClientDisconnect:
            return _error(400, "the body was cut off")
        if body is None:
            return _too_large()
        try:
            data = json.loads(body, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            return _error(400, "the body is not valid JSON")
        if _nested_deeper_than(data, MAX_JSON_DEPTH):
            return _error(400, f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep")
        received_at = pendulum.now("UTC")
        try:
            message = parse_inbound(data, received_at=received_at)
        except InboundError as exc:
            return _error(400, str(exc))

        answer = await self._answer(settings, message)
        if answer is not None:
            return answer
        return await self._record(settings, message, received_at)

    async def _answer(self, settings: WebhookSettings, message: Any) -> Response | None:
        """The response to an answer to a human-in-the-loop question (recorded or refused, with
        the reply sent after the response), or None for an ordinary message."""
        from airflow_provider_wa019.webhook.approvals import consider, send_reply

        try:
            handled = await run_in_threadpool(consider, settings.conn_id, message)
        except Exception:
            log.exception(
                "webhook %r: could not check message %s for an answer", settings.conn_id, message.unique
            )
            return _error(503, "the message could not be recorded, try again")
        if handled is None:
            return None
        reply = (
            BackgroundTask(send_reply, settings.conn_id, message, handled.reply) if handled.reply else None
        )
        return JSONResponse({"status": handled.status}, background=reply)

    async def _record(self, settings: WebhookSettings, message: Any, received_at: Any) -> Response:
        from airflow_provider_wa019.webhook.store import RECORDED, record_message

        try:
            outcome = await run_in_threadpool(
                functools.partial(record_message, settings.conn_id, message, received_at=received_at)
            )
        except Exception:
            log.exception("webhook %r: could not record message %s", settings.conn_id, message.unique)
            return _error(503, "the message could not be recorded, try again")
        if outcome.status == RECORDED:
            log.info(
                "webhook %r: recorded message %s from %s as asset event %s",
                settings.conn_id,
                message.unique,
                mask_number(message.sender),
                outcome.event_id,
            )
        else:
            log.info("webhook %r: message %s was already recorded", settings.conn_id, message.unique)
        return JSONResponse({"status": outcome.status})


def _presented_secrets(request: Request) -> list[bytes]:
    # Header values are Latin-1 on the wire (Starlette decodes them so); query values UTF-8.
    presented = [value.encode("latin-1") for value in request.headers.getlist(SECRET_HEADER)]
    presented += [value.encode("utf-8") for value in request.query_params.getlist(SECRET_PARAM)]
    return presented


def _content_refusal(request: Request) -> Response | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_INBOUND_BYTES:
        return _too_large()
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != "application/json":
        return _error(415, "the body must be application/json")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return _error(415, "the body must be UTF-8 JSON")
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return _error(415, "a content-encoded body is not accepted")
    return None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past ``limit`` bytes (the rest is never read)."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json reads them


def _nested_deeper_than(value: Any, limit: int) -> bool:
    level = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def _too_large() -> Response:
    return _error(413, f"the body is larger than {MAX_INBOUND_BYTES} bytes")


def _error(status: int, error: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": error}, status_code=status, headers=headers)
