"""WhatsAppAsyncHook: the 019sms API over asyncio (aiohttp), for triggers and deadline alerts.

The aiohttp transport only: connection settings and the checks before a request come from
:mod:`airflow_provider_wa019.hooks.base`, what an answer means from
:mod:`airflow_provider_wa019.answers`, exactly as for the sync
:class:`~airflow_provider_wa019.hooks.whatsapp.WhatsAppHook`. aiohttp is imported with this
module, which nothing imports until an async path runs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from airflow_provider_wa019 import __version__
from airflow_provider_wa019.answers import (
    MAX_LISTING_ANSWER_BYTES,
    READ_CHUNK,
    AnswerReader,
    Failure,
    check_status,
    failure_error,
    listing_error,
    retried_by_transport,
    retry_after_seconds,
    transport_backoff,
)
from airflow_provider_wa019.api import SendResult, WhatsAppTemplate, parse_templates_response
from airflow_provider_wa019.constants import POOL_MAXSIZE
from airflow_provider_wa019.exceptions import WhatsAppAPIError, WhatsAppDeliveryUnknownError, WhatsAppError
from airflow_provider_wa019.hooks.base import (
    Exchange,
    WhatsAppHookBase,
    WhatsAppSettings,
    environ_ca_bundle,
    extra_is_an_object,
)

__all__ = ["WhatsAppAsyncHook"]

# aiohttp 3.10 split ServerTimeoutError into a connect and a read kind; 3.9 tells them apart only
# by the message.
_CONNECT_TIMEOUT = getattr(aiohttp, "ConnectionTimeoutError", None)


class WhatsAppAsyncHook(WhatsAppHookBase):
    """Send WhatsApp messages through the 019sms API from asyncio code.

    The same connection (type ``wa019``), checks, retries, errors and results as
    :class:`~airflow_provider_wa019.hooks.whatsapp.WhatsAppHook`, with awaitable methods::

        async with WhatsAppAsyncHook("wa019_default") as hook:
            result = await hook.send_message("+972 50-123-4567", "Deadline missed")

    The connection is read once, with Airflow's async connection lookup where it has one
    (:meth:`aget_settings`). One ``aiohttp.ClientSession`` serves every call of the hook, on
    the event loop that made it; leave the ``async with`` block (or await :meth:`close`) to
    release it.

    :param wa019_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout (seconds, or ``(connect, read)``).
    :param max_attempts: overrides the connection's number of tries of a transient failure.
    """

    def __init__(
        self,
        wa019_conn_id: str = WhatsAppHookBase.default_conn_name,
        *,
        timeout: float | tuple[float, float] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        super().__init__(wa019_conn_id, timeout=timeout, max_attempts=max_attempts)
        self._client: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proxy: str | None = None

    # --- connection ------------------------------------------------------------------------

    async def aget_settings(self) -> WhatsAppSettings:
        """The connection's settings, read and checked once per hook, without blocking the loop.

        Uses Airflow's async connection lookup (``BaseHook.aget_connection``, Task SDK 1.1 /
        Airflow 3.1+) as ``airflow.providers.common.compat`` picks it per version: before 3.3.2
        that lookup masks secrets with a blocking call, so the sync lookup runs in a thread
        there instead. After this, :attr:`settings` holds the same object.

        :raises WhatsAppConfigError: naming the connection and the setting, never the token.
        """
        if "settings" in self.__dict__:
            return self.__dict__["settings"]
        conn = await _aconnection(self)
        # An extra that is no JSON object is refused by read_settings, in its order of checks.
        extra = await _aextra(conn) if extra_is_an_object(conn) else None
        cfg = self._settings_from(conn, lambda: extra)
        self.__dict__.setdefault("settings", cfg)
        return self.__dict__["settings"]

    async def get_conn(self) -> aiohttp.ClientSession:
        """The hook's one HTTP session, made on first use on the running event loop (a hook used
        from another loop later gets a new one: an aiohttp session serves only its own loop)."""
        cfg = await self.aget_settings()
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.closed or self._loop is not loop:
            self._client, self._loop = self._new_client(cfg), loop
        return self._client

    def _new_client(self, cfg: WhatsAppSettings) -> aiohttp.ClientSession:
        scheme = urlsplit(cfg.base_url).scheme
        self._proxy = _proxy_for(cfg)
        tls: ssl.SSLContext | bool = True
        if scheme == "https":
            # As requests verifies: the environment's CA bundle, else certifi's, else the system's.
            tls = ssl.create_default_context(cafile=environ_ca_bundle() or _certifi_bundle())
        connector = aiohttp.TCPConnector(limit=POOL_MAXSIZE, limit_per_host=POOL_MAXSIZE, ssl=tls)
        return aiohttp.ClientSession(
            connector=connector,
            headers={
                "Accept": "application/json",
                # Only what AnswerReader decodes itself, with its size cap applied to the output.
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": f"airflow-provider-wa019/{__version__}",
                "Authorization": f"Bearer {cfg.token}",
            },
            # Bounded decompression happens in AnswerReader, never in aiohttp.
            auto_decompress=False,
            # Proxies and CAs were read once above; a netrc entry never replaces the token.
            trust_env=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=cfg.timeout[0], sock_read=cfg.timeout[1]
            ),
            raise_for_status=False,
        )

    async def close(self) -> None:
        """Release the session's pooled connections (on the loop that made it)."""
        client, self._client = self._client, None
        if client is not None and not client.closed and self._loop is asyncio.get_running_loop():
            await client.close()

    async def __aenter__(self) -> WhatsAppAsyncHook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending ---------------------------------------------------------------------------

    async def send_message(
        self, to: str, body: str, *, sender: str | None = None, reply_to: str | None = None
    ) -> SendResult:
        """Send a free-form text message: :meth:`WhatsAppHook.send_message
        <airflow_provider_wa019.hooks.whatsapp.WhatsAppHook.send_message>`, awaited (same
        arguments, checks, result and errors)."""
        cfg = await self.aget_settings()
        payload = self._message_payload(to, body, sender, reply_to)
        return await self._post_message(cfg.send_path, payload)

    async def send_template(
        self,
        to: str,
        template: str | WhatsAppTemplate,
        variables: Sequence[str] = (),
        *,
        header_type: int | None = None,
        header_link: str | None = None,
        sender: str | None = None,
        check_template: bool = False,
    ) -> SendResult:
        """Send an approved template message: :meth:`WhatsAppHook.send_template
        <airflow_provider_wa019.hooks.whatsapp.WhatsAppHook.send_template>`, awaited (with
        ``check_template=True`` the listing is read once per hook)."""
        cfg = await self.aget_settings()
        plan = self._template_plan(to, template, variables, header_type, header_link, sender)
        if check_template and not plan.known:
            if plan.sender not in self._template_cache:
                self._template_cache[plan.sender] = await self.get_templates(phone=plan.sender)
            self._templates_named(plan, self._template_cache[plan.sender])
        return await self._post_message(cfg.template_path, plan.payload)

    async def send_message_or_template(
        self,
        to: str,
        body: str,
        *,
        fallback_template: str | WhatsAppTemplate | None,
        fallback_variables: Sequence[str] = (),
        sender: str | None = None,
        reply_to: str | None = None,
    ) -> tuple[SendResult, str]:
        """A free-form message, or ``fallback_template`` when the 24 h window is closed (reason
        7 or 8): :meth:`WhatsAppHook.send_message_or_template
        <airflow_provider_wa019.hooks.whatsapp.WhatsAppHook.send_message_or_template>`, awaited.

        :return: the accepted message and what went out: ``"message"`` or ``"template"``.
        """
        try:
            return await self.send_message(to, body, sender=sender, reply_to=reply_to), "message"
        except WhatsAppAPIError as err:
            if not self._falls_back(err, fallback_template):
                raise
        result = await self.send_template(to, fallback_template, fallback_variables, sender=sender)
        return result, "template"

    async def get_templates(
        self, template_id: str | int | None = None, *, phone: str | None = None
    ) -> list[WhatsAppTemplate]:
        """The account's WhatsApp templates (read-only): :meth:`WhatsAppHook.get_templates
        <airflow_provider_wa019.hooks.whatsapp.WhatsAppHook.get_templates>`, awaited."""
        cfg = await self.aget_settings()
        path = self._listing_path(template_id, phone)
        try:
            status, body = await self._request("GET", cfg.base_url + path, limit=MAX_LISTING_ANSWER_BYTES)
        except WhatsAppDeliveryUnknownError as err:
            raise listing_error(err) from err
        return parse_templates_response(status, body, scrub=cfg.redactor.text)

    async def _post_message(self, path: str, payload: dict[str, Any]) -> SendResult:
        """POST a message payload: drive the shared send conversation with aiohttp and sleep."""
        steps = self._send_steps(path, payload)
        step = next(steps)
        try:
            while True:
                if isinstance(step, Exchange):
                    answer = await self._request(step.method, step.url, limit=step.limit, json=step.payload)
                    step = steps.send(answer)
                else:
                    await asyncio.sleep(step)
                    step = steps.send(None)
        except StopIteration as done:
            return done.value

    async def _request(
        self, method: str, url: str, *, limit: int, json: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        """One HTTP exchange, with the retries answers allow (failed connects; the statuses of
        ``answers.retried_by_transport``, after ``Retry-After`` or the backoff), judged by
        ``answers.check_status``.

        Counts as urllib3 does for the sync hook: ``max_attempts - 1`` connect retries and as
        many status retries, one backoff sequence over both.

        :return: the HTTP status (200) and the answer's body, bounded, with the token blanked.
        """
        cfg = self.settings
        client = await self.get_conn()
        connects_left = statuses_left = cfg.max_attempts - 1
        errors = 0
        while True:
            failure: tuple[Failure, str] | None = None
            try:
                response = await client.request(
                    method, url, json=json, allow_redirects=False, proxy=self._proxy
                )
            except (aiohttp.ClientError, OSError, ValueError, asyncio.TimeoutError) as exc:
                failure = self._failure(exc)
            if failure is not None:
                kind, detail = failure
                if not kind.retried or connects_left == 0:
                    # Raised outside the except block: aiohttp's exception (its request_info
                    # holds the headers, token included) is neither cause nor context.
                    raise failure_error(kind, url, cfg, detail)
                connects_left -= 1
                errors += 1
                await asyncio.sleep(transport_backoff(errors, cfg.backoff_factor, cfg.max_retry_wait))
                continue
            status = response.status
            if statuses_left > 0 and retried_by_transport(method, status):
                wait = retry_after_seconds(response.headers.get("Retry-After"), cfg.max_retry_wait)
                response.close()  # its body is not wanted: never reuse a half-read connection
                statuses_left -= 1
                errors += 1
                await asyncio.sleep(wait or transport_backoff(errors, cfg.backoff_factor, cfg.max_retry_wait))
                continue
            try:
                # Anything but a 200 is only quoted in an error: cut it rather than refuse it.
                body = await self._read_answer(response, url, limit, cut=status != 200)
            finally:
                response.release()  # back to the pool after a complete read, else closed
            check_status(method, status, body, cfg)
            return status, body

    async def _read_answer(
        self, response: aiohttp.ClientResponse, url: str, limit: int, *, cut: bool
    ) -> bytes:
        """Hand the raw body to an AnswerReader: what is buffered at once, then one wait at a
        time for more, each no longer than what is left of the read timeout."""
        cfg = self.settings
        reader = AnswerReader(
            response.status,
            response.headers.get("Content-Encoding"),
            url,
            limit,
            cut=cut,
            read_timeout=cfg.timeout[1],
            redactor=cfg.redactor,
        )
        content = response.content
        error: WhatsAppError | None = None
        try:
            while True:
                chunk = content.read_nowait(READ_CHUNK)
                if not chunk:
                    if content.at_eof():
                        break
                    chunk = await asyncio.wait_for(content.readany(), reader.remaining())
                    if not chunk:
                        break
                if reader.feed(chunk):
                    response.close()  # cut: the rest is not read, the connection not reused
                    break
        except asyncio.TimeoutError as exc:  # aiohttp's own read timeouts are TimeoutErrors too
            error = reader.timed_out() if isinstance(exc, aiohttp.ServerTimeoutError) else reader.too_slow()
        except (aiohttp.ClientError, OSError) as exc:
            # The answer broke off mid-body: the request was processed.
            error = reader.broke_off(exc.__class__.__name__)
        if error is not None:
            raise error
        return reader.body()

    def _failure(self, exc: BaseException) -> tuple[Failure, str]:
        """What an aiohttp failure before the answer's body means (answers.Failure)."""
        name = exc.__class__.__name__
        if isinstance(exc, (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)):
            return Failure.PROXY, _os_detail(exc) or name
        if isinstance(exc, aiohttp.ClientSSLError):  # before ClientConnectorError, its base
            return Failure.TLS, name
        if (_CONNECT_TIMEOUT is not None and isinstance(exc, _CONNECT_TIMEOUT)) or (
            _CONNECT_TIMEOUT is None
            and isinstance(exc, aiohttp.ServerTimeoutError)
            and str(exc).startswith("Connection timeout")
        ):
            if self._proxy is not None:
                return Failure.PROXY, "connect timed out"
            return Failure.CONNECT_TIMEOUT, name
        if isinstance(exc, aiohttp.ClientConnectorError):
            return Failure.CONNECT, _os_detail(exc) or name
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's read timeout (sock_read)
            return Failure.READ_TIMEOUT, name
        if isinstance(exc, aiohttp.ClientPayloadError):
            return Failure.BROKE_OFF, name
        if isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, OSError)):
            # Disconnected, reset, or an answer that is not HTTP: after the request was written.
            return Failure.DROPPED, name
        # A bad URL or proxy setting. The text never holds a header; it is redacted anyway.
        return Failure.OTHER, f"{name}: {exc}"


async def _aconnection(hook: WhatsAppAsyncHook) -> Any:
    try:
        from airflow.providers.common.compat.connection import get_async_connection
    except ImportError:  # a common-compat without it: BaseHook's own, else the sync lookup
        get_async_connection = None
    if get_async_connection is not None:
        return await get_async_connection(hook.wa019_conn_id, hook=hook)
    if hasattr(hook, "aget_connection"):
        return await hook.aget_connection(hook.wa019_conn_id)
    return await asyncio.to_thread(hook.get_connection, hook.wa019_conn_id)


async def _aextra(conn: Any) -> Any:
    try:
        from airflow.providers.common.compat.connection import get_async_extra_dejson
    except ImportError:
        get_async_extra_dejson = None
    if get_async_extra_dejson is not None:
        return await get_async_extra_dejson(conn)
    if hasattr(conn, "aextra_dejson"):
        return await conn.aextra_dejson()
    return await asyncio.to_thread(lambda: conn.extra_dejson)


def _proxy_for(cfg: WhatsAppSettings) -> str | None:
    """The proxy for the base URL, chosen as requests does for the sync hook: the environment's
    (unless ``no_proxy`` names the host), overridden by the connection's ``proxies``."""
    parts = urlsplit(cfg.base_url)
    host = parts.hostname or ""
    proxies = {} if urllib.request.proxy_bypass(host) else dict(urllib.request.getproxies())
    proxies.update(cfg.proxies)
    for key in (f"{parts.scheme}://{host}", parts.scheme, f"all://{host}", "all"):
        if proxies.get(key):
            return proxies[key]
    return None


def _certifi_bundle() -> str | None:
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _os_detail(exc: BaseException) -> str:
    # "[Errno 111] Connection refused", as the sync hook words it; never a header.
    # (aiohttp's own text is "Connect call failed (host, port)": the errno says what happened).
    os_error = getattr(exc, "os_error", None)
    if not isinstance(os_error, OSError):
        return ""
    if isinstance(os_error.errno, int) and os_error.errno > 0 and not isinstance(os_error, socket.gaierror):
        return f"[Errno {os_error.errno}] {os.strerror(os_error.errno)}"
    return str(os_error.strerror or "")
