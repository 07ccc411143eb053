"""WhatsAppHook: the 019sms connection, its token, one HTTP session, timeouts and retries."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import string
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util.retry import Retry

from airflow_provider_wa019 import __version__
from airflow_provider_wa019.api import (
    DEFAULT_BASE_URL,
    SEND_PATH,
    TEMPLATE_PATH,
    TEMPLATES_PATH,
    Reason,
    SendResult,
    WhatsAppTemplate,
    compact_json,
    decode_json_object,
    parse_send_response,
    parse_templates_response,
    send_payload,
    template_payload,
)
from airflow_provider_wa019.constants import (
    CONN_TYPE,
    DEFAULT_CONN_ID,
    POOL_MAXSIZE,
    RETRYABLE_REASONS,
    WINDOW_REASONS,
)
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
    excerpt,
)
from airflow_provider_wa019.masking import SecretRedactor, mask_number
from airflow_provider_wa019.validation import (
    SPACE_OR_CONTROL,
    normalize_number,
    validate_body,
    validate_header,
    validate_optional_text,
    validate_region,
    validate_template_fit,
    validate_template_name,
    validate_template_variables,
)

DEFAULT_TIMEOUT = (5.0, 30.0)
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_FACTOR = 0.5
DEFAULT_MAX_RETRY_WAIT = 30.0

# Answers that mean "not processed, come back later": a rate limit, or an overloaded service
# refusing work. Retrying them cannot duplicate a message.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
# Gateway errors: the gateway gave up waiting for the API (504) or lost its answer (502) while the
# API may well have processed the message. "Delivery unknown" for a send (never retried by the
# hook, the task's retries decide); retried only for a read, where a repeat sends nothing.
GATEWAY_STATUSES = frozenset({502, 504})
_READ_ONLY_METHODS = frozenset({"GET"})

#: At most this much of an answer is read, after decompression. Documented send answers are a
#: few hundred bytes; a template listing may hold many templates.
MAX_SEND_ANSWER_BYTES = 64 * 1024
MAX_LISTING_ANSWER_BYTES = 1024 * 1024
_READ_CHUNK = 16 * 1024
#: Limits of the connection's numeric extras: beyond them a value is a typo, not a setting.
MAX_TIMEOUT_SECONDS = 3600.0
_NAMED_TEMPLATES = 10
MAX_ATTEMPTS_LIMIT = 10



@dataclass(frozen=True)
class WhatsAppSettings:
    """Everything the hook reads from its Airflow connection, validated once."""

    conn_id: str
    base_url: str
    token: str = field(repr=False)
    sender: str | None
    timeout: tuple[float, float]
    proxies: Mapping[str, str]
    send_path: str
    template_path: str
    templates_path: str
    default_region: str | None
    max_attempts: int
    backoff_factor: float
    max_retry_wait: float
    #: Blanks the token in answers (every spelling); built once with the settings.
    redactor: SecretRedactor = field(repr=False)


class _BearerAuth(requests.auth.AuthBase):
    """Adds the bearer token per request; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<BearerAuth ***>"


class _TransportRetry(Retry):
    """urllib3's retry policy with the server's ``Retry-After`` capped, so one rate-limit answer
    cannot park a worker slot for an hour, and gateway errors retried only for reads."""

    max_retry_after: float = DEFAULT_MAX_RETRY_WAIT

    def new(self, **kw: Any) -> _TransportRetry:
        retry = super().new(**kw)
        retry.max_retry_after = self.max_retry_after
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        # A 502/504 to a POST may come after the API took the message: never sent again here.
        if status_code in GATEWAY_STATUSES and method.upper() not in _READ_ONLY_METHODS:
            return False
        return super().is_retry(method, status_code, has_retry_after)

    def get_retry_after(self, response: Any) -> float | None:
        try:
            seconds = super().get_retry_after(response)
        except InvalidHeader:
            # "1.5", "-5", "soon": unusable, so absent. The answer is still the rate limit it is,
            # retried after the usual backoff.
            return None
        return None if seconds is None else min(max(seconds, 0.0), self.max_retry_after)


class WhatsAppHook(BaseHook):
    """Send WhatsApp messages through the 019sms API.

    The connection (type ``wa019``) holds the API bearer token in its password, the API base URL
    in its host (default ``https://019sms.co.il``; ``http://127.0.0.1:PORT`` for the simulator),
    and in its extra: ``sender`` (the default ``from`` number), ``timeout`` (seconds, one number
    or ``[connect, read]``), ``proxies``, ``default_region`` (e.g. ``"IL"`` so ``050-123-4567``
    is understood), ``send_path``/``template_path``/``templates_path`` (endpoint overrides) and
    ``max_attempts``/``backoff_factor``/``max_retry_wait`` (retry tuning).

    One ``requests.Session`` is built per hook and reused for every call; use the hook as a
    context manager, or call :meth:`close`, to release its connections.

    Retries happen only where a message cannot have gone out: reason 6, HTTP 429/502/503/504
    and failures to connect. A read timeout or HTTP 500 leaves delivery unknown and raises
    :class:`~airflow_provider_wa019.exceptions.WhatsAppDeliveryUnknownError` without a retry.

    :param wa019_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout (seconds, or ``(connect, read)``).
    :param max_attempts: overrides the connection's number of tries of a transient failure.
    """

    conn_name_attr = "wa019_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "019sms WhatsApp"

    #: Level of the two per-message lines ("Sending ...", "... accepted"). The bulk operator lowers
    #: it to DEBUG on its own hook: thousands of recipients would flood the task log, which gets
    #: periodic progress lines instead. Warnings (reason 6 retries) keep their level.
    message_log_level: int = logging.INFO

    def __init__(
        self,
        wa019_conn_id: str = default_conn_name,
        *,
        timeout: float | tuple[float, float] | None = None,
        max_attempts: int | None = None,
    ) -> None:
        super().__init__()
        self.wa019_conn_id = wa019_conn_id
        self._timeout_override = timeout
        self._max_attempts_override = max_attempts
        # Template listings by sender phone, read at most once per hook (send_template's
        # check_template=True): a bulk send checks thousands of messages against one GET.
        self._template_cache: dict[str, list[WhatsAppTemplate]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} conn_id={self.wa019_conn_id!r}>"

    # --- connection ------------------------------------------------------------------------

    @cached_property
    def settings(self) -> WhatsAppSettings:
        """The connection's settings, read and checked once per hook.

        :raises WhatsAppConfigError: naming the connection and the setting, never the token.
        """
        conn = self.get_connection(self.wa019_conn_id)
        conn_id = self.wa019_conn_id
        token = _token(conn_id, conn.password)
        extra = _extra(conn_id, conn)
        opt = _ExtraReader(conn_id, extra)
        sender = opt.get("sender", (str, int))  # URI query values may arrive as numbers
        region = validate_region(opt.get("default_region", str))
        try:
            sender_number = normalize_number(sender, field="sender", region=region) if sender else None
        except WhatsAppValidationError as err:
            raise WhatsAppConfigError(f"connection {conn_id!r}: extra 'sender' is unusable: {err}") from None
        max_attempts = self._max_attempts_override or opt.number(
            "max_attempts", DEFAULT_MAX_ATTEMPTS, 1, MAX_ATTEMPTS_LIMIT
        )
        if isinstance(max_attempts, bool) or max_attempts != int(max_attempts):
            raise WhatsAppConfigError(
                f"connection {conn_id!r}: 'max_attempts' must be a whole number from 1 to "
                f"{MAX_ATTEMPTS_LIMIT}, got {max_attempts!r}"
            )
        return WhatsAppSettings(
            conn_id=conn_id,
            base_url=_base_url(conn_id, conn.host, conn.port),
            token=token,
            sender=sender_number,
            timeout=_timeout(conn_id, self._timeout_override or opt.get("timeout", (int, float, str, list))),
            proxies=_proxies(conn_id, opt.get("proxies", dict) or {}),
            send_path=_path(conn_id, "send_path", opt.get("send_path", str) or SEND_PATH),
            template_path=_path(conn_id, "template_path", opt.get("template_path", str) or TEMPLATE_PATH),
            templates_path=_path(
                conn_id, "templates_path", opt.get("templates_path", str) or TEMPLATES_PATH, fields={"phone"}
            ),
            default_region=region,
            max_attempts=int(max_attempts),
            backoff_factor=opt.number("backoff_factor", DEFAULT_BACKOFF_FACTOR, 0, MAX_TIMEOUT_SECONDS),
            max_retry_wait=opt.number("max_retry_wait", DEFAULT_MAX_RETRY_WAIT, 0, MAX_TIMEOUT_SECONDS),
            redactor=SecretRedactor(token),
        )

    @cached_property
    def session(self) -> requests.Session:
        """The one HTTP session of this hook, with auth, retries and proxies set up."""
        cfg = self.settings
        session = requests.Session()
        session.auth = _BearerAuth(cfg.token)
        session.headers.update(
            {
                "Accept": "application/json",
                # Only what _read_answer decodes itself, with its size cap applied to the output.
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": f"airflow-provider-wa019/{__version__}",
            }
        )
        # Read the environment's proxy and CA settings once, here. With trust_env on, requests
        # re-reads the whole environment and ~/.netrc on every send (a sixth of a send's cost),
        # and a netrc entry would silently replace our bearer token.
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(cfg.base_url))
        session.proxies.update(cfg.proxies)
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
        retry = _TransportRetry(
            total=None,
            # Failing to connect means nothing was sent: safe to try again.
            connect=cfg.max_attempts - 1,
            # A read error happens after the request went out: the message may have been sent.
            # Never retried; re-raised as it is so it can be reported as "delivery unknown".
            read=False,
            other=0,
            redirect=False,
            # 429/503 are answered before the API processes the request; 502/504 only for reads
            # (_TransportRetry.is_retry).
            status=cfg.max_attempts - 1,
            status_forcelist=NOT_PROCESSED_STATUSES | GATEWAY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=cfg.backoff_factor,
            backoff_jitter=cfg.backoff_factor,
            backoff_max=cfg.max_retry_wait,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        retry.max_retry_after = cfg.max_retry_wait
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=POOL_MAXSIZE)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Release the session's pooled connections."""
        if "session" in self.__dict__:
            self.__dict__.pop("session").close()

    def __enter__(self) -> WhatsAppHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form's standard fields, for Airflow before 3.2.

        Airflow 3.2+ builds the form from provider info alone and never calls this; older
        releases only ask the hook. Both read the one declaration in ``get_provider_info``.
        """
        behaviour = _connection_form_info()["ui-field-behaviour"]
        return {
            "hidden_fields": list(behaviour["hidden-fields"]),
            "relabeling": dict(behaviour["relabeling"]),
            "placeholders": dict(behaviour["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The connection form's extra fields, for Airflow before 3.2 (see above).

        Text inputs: the hook reads numbers given as text, so one widget type serves all.
        """
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import StringField

        return {
            name: StringField(
                lazy_gettext(spec["label"]),
                widget=BS3TextFieldWidget(),
                description=spec.get("description", ""),
            )
            for name, spec in _connection_form_info()["conn-fields"].items()
        }

    def get_conn(self) -> requests.Session:
        """The hook's HTTP session (Airflow's generic hook interface)."""
        return self.session

    # --- sending ---------------------------------------------------------------------------

    def send_message(
        self, to: str, body: str, *, sender: str | None = None, reply_to: str | None = None
    ) -> SendResult:
        """Send a free-form text message.

        Free-form messages reach a client only within 24 hours of the client's last message;
        outside it the API refuses with reason 7 (or 8 for a first contact) and an approved
        template must be sent instead.

        :param to: the recipient, in international form (``+972 50-123-4567``,
            ``972501234567``) or local form when the connection sets ``default_region``.
        :param body: the text, 1 to 4096 characters (``*bold*``, ``_italic_``, ``~strike~``).
        :param sender: the ``from`` account; defaults to the connection's ``sender``.
        :param reply_to: the ``unique`` id of a client message to quote.
        :return: the accepted message, with its ``unique`` id.
        :raises WhatsAppValidationError: bad input; nothing was sent.
        :raises WhatsAppAPIError: the API refused the message (``.reason``).
        :raises WhatsAppTransientError: the API could not be reached or was overloaded, after
            the retries; nothing was sent.
        :raises WhatsAppDeliveryUnknownError: the request went out but no answer came back.
        :raises WhatsAppResponseError: the answer was not the documented JSON.
        """
        cfg = self.settings
        payload = send_payload(
            sender=self._sender(sender),
            to=normalize_number(to, field="to", region=cfg.default_region),
            body=validate_body(body),
            reply_to=validate_optional_text(reply_to, field="reply_to"),
        )
        return self._post_message(cfg.send_path, payload)

    def send_template(
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
        """Send an approved template message; allowed whether the 24 h window is open or not.

        Checked before any request: ``to`` and ``sender`` numbers, at most 10 non-blank
        ``variables``, a known ``header_type`` and an https ``header_link`` for a media header.
        When the template's body is known, also: one value per ``{{n}}`` placeholder, the
        filled-in text within 1024 characters, and a sendable status. The body is known when

        * ``template`` is a :class:`~airflow_provider_wa019.api.WhatsAppTemplate` (from
          :meth:`get_templates`): no extra request; or
        * ``check_template=True``: the sender's templates are listed once per hook (cached;
          one read-only GET, however many sends follow) and ``template`` looked up by name.
          A name the listing does not hold is refused before sending.

        With a bare name and ``check_template=False`` (the default) the API itself judges the
        count and length: no listing request is made on every send.

        :param to: the recipient (same forms as :meth:`send_message`).
        :param template: the template's name, or a template object.
        :param variables: values for ``{{1}}`` ... ``{{10}}``, in order (numbers become text).
        :param header_type: 1 (none, the default), 3 image, 4 video, 5 document.
        :param header_link: https URL of the header's media (with ``header_type`` 3, 4 or 5).
        :param sender: the ``from`` account; defaults to the connection's ``sender``.
        :param check_template: look the name up in the sender's template listing first.
        :return: the accepted message, with its ``unique`` id.
        :raises: the same errors as :meth:`send_message`.
        """
        cfg = self.settings
        sender_number = self._sender(sender)
        to_number = normalize_number(to, field="to", region=cfg.default_region)
        if isinstance(template, WhatsAppTemplate):
            name = validate_template_name(template.name)
            known: list[WhatsAppTemplate] = [template]
        else:
            name = validate_template_name(template)
            known = []
        values = validate_template_variables(variables)
        header, link = validate_header(header_type, header_link)
        if check_template and not known:
            known = self._templates_named(name, sender_number)
        for candidate in known:
            validate_template_fit(candidate, values)
        payload = template_payload(sender_number, to_number, name, values, header, link)
        return self._post_message(cfg.template_path, payload)

    def send_message_or_template(
        self,
        to: str,
        body: str,
        *,
        fallback_template: str | WhatsAppTemplate | None,
        fallback_variables: Sequence[str] = (),
        sender: str | None = None,
        reply_to: str | None = None,
    ) -> tuple[SendResult, str]:
        """Send a free-form message; if it is refused because the 24 h window is closed (reason
        7 or 8) and ``fallback_template`` is given, send that template instead.

        :return: the accepted message and what went out: ``"message"`` or ``"template"``.
        :raises: as :meth:`send_message` (any other refusal) or :meth:`send_template`.
        """
        try:
            return self.send_message(to, body, sender=sender, reply_to=reply_to), "message"
        except WhatsAppAPIError as err:
            # Only 7 and 8 say "not sent, but a template would be"; any other refusal would
            # refuse the template too, or must end the caller by its own rule.
            if not fallback_template or err.reason not in WINDOW_REASONS:
                raise
            self.log.warning(
                "%s. Sending template %r instead.", err, getattr(fallback_template, "name", fallback_template)
            )
        result = self.send_template(to, fallback_template, fallback_variables, sender=sender)
        return result, "template"

    def get_templates(
        self, template_id: str | int | None = None, *, phone: str | None = None
    ) -> list[WhatsAppTemplate]:
        """The account's WhatsApp templates (read-only; sends nothing).

        :param template_id: only this template (the list then holds one or none).
        :param phone: the account whose templates to list; defaults to the connection's sender.
        :return: typed, immutable templates, in the API's order.
        :raises WhatsAppAPIError: token refused (3) or the phone is not an account (2).
        :raises WhatsAppTransientError: the API could not be reached, after the retries.
        :raises WhatsAppResponseError: the answer was not the documented JSON.
        """
        cfg = self.settings
        number = (
            self._sender(None)
            if phone is None
            else normalize_number(phone, field="phone", region=cfg.default_region)
        )
        path = cfg.templates_path.format(phone=number)
        if template_id is not None:
            if isinstance(template_id, bool) or not str(template_id).strip():
                raise WhatsAppValidationError("template_id", template_id, "expected a non-empty id")
            path = f"{path.rstrip('/')}/{quote(str(template_id).strip(), safe='')}"
        try:
            status, body = self._request("GET", cfg.base_url + path, limit=MAX_LISTING_ANSWER_BYTES)
        except WhatsAppDeliveryUnknownError as err:
            # A listing sends nothing: "delivery unknown" would mislead, and asking again is safe.
            raise WhatsAppTransientError(
                f"template listing: {err.detail}; nothing was sent", http_status=err.http_status
            ) from err
        return parse_templates_response(status, body, scrub=cfg.redactor.text)

    def _templates_named(self, name: str, sender: str) -> list[WhatsAppTemplate]:
        if sender not in self._template_cache:
            self._template_cache[sender] = self.get_templates(phone=sender)
        templates = self._template_cache[sender]
        # Several languages may share a name; the send names no language, so check them all.
        matches = [t for t in templates if t.name == name]
        if not matches:
            names = sorted({t.name for t in templates})
            # An account may hold hundreds: name a few, count the rest.
            known = ", ".join(names[:_NAMED_TEMPLATES]) or "none"
            if len(names) > _NAMED_TEMPLATES:
                known += f" and {len(names) - _NAMED_TEMPLATES} more"
            raise WhatsAppValidationError(
                "template", name, f"sender {sender} has no such template (it has: {known})"
            )
        return matches

    def _sender(self, sender: str | None) -> str:
        if sender is not None:
            return normalize_number(sender, field="sender", region=self.settings.default_region)
        if not self.settings.sender:
            raise WhatsAppConfigError(
                f"no sender: pass sender= or set 'sender' in the extra of connection {self.wa019_conn_id!r}"
            )
        return self.settings.sender

    def _post_message(self, path: str, payload: dict[str, Any]) -> SendResult:
        """POST a message payload, retrying only the API's own "not sent, try again"."""
        cfg = self.settings
        url = cfg.base_url + path
        masked = mask_number(payload["to"])
        for attempt in range(1, cfg.max_attempts + 1):
            self.log.log(
                self.message_log_level,
                "Sending WhatsApp message to %s (try %d of %d)",
                masked,
                attempt,
                cfg.max_attempts,
            )
            status, body = self._request("POST", url, limit=MAX_SEND_ANSWER_BYTES, json=payload)
            try:
                result = parse_send_response(status, body, scrub=cfg.redactor.text)
            except WhatsAppAPIError as err:
                if err.reason not in RETRYABLE_REASONS or attempt == cfg.max_attempts:
                    raise
                # Reason 6 is WhatsApp's own "error, try again": the message was not sent, so
                # sending it again cannot produce a duplicate.
                delay = self._backoff(attempt)
                self.log.warning("019sms answered reason 6 (%s); trying again in %.2f s", err.meaning, delay)
                time.sleep(delay)
                continue
            self.log.log(
                self.message_log_level, "WhatsApp message to %s accepted, id %s", masked, result.unique
            )
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _backoff(self, attempt: int) -> float:
        # Exponential with full jitter, so many tasks retrying at once do not arrive together.
        cfg = self.settings
        return min(cfg.max_retry_wait, cfg.backoff_factor * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _request(self, method: str, url: str, *, limit: int, **kwargs: Any) -> tuple[int, bytes]:
        """One HTTP exchange (urllib3 retries connects, 429 and 503 inside it, and 502/504 for a
        GET), with the outcome classified by whether the message could have been delivered.

        :return: the HTTP status (200) and the answer's body, at most ``limit`` bytes once
            decompressed, with the token blanked in it.
        """
        cfg = self.settings
        try:
            response = self.session.request(
                method, url, timeout=cfg.timeout, allow_redirects=False, stream=True, **kwargs
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, url, cfg) from exc
        status = response.status_code
        try:
            # Anything but a 200 is only quoted in an error: cut it rather than refuse it.
            body = cfg.redactor.bytes(self._read_answer(response, url, limit, cut=status != 200))
        finally:
            response.close()  # a no-op after a complete read (the connection is back in the pool)
        if status in (401, 403):
            # A refused token: retrying cannot help and would only repeat the refusal.
            raise WhatsAppAPIError(
                Reason.BAD_TOKEN,
                http_status=status,
                response=compact_json(self._decode_or_empty(status, body)),
                detail=f"HTTP {status}: check the token in connection {cfg.conn_id!r}",
            )
        if status in NOT_PROCESSED_STATUSES or (status in GATEWAY_STATUSES and method in _READ_ONLY_METHODS):
            raise WhatsAppTransientError(
                f"019sms answered HTTP {status} on all {cfg.max_attempts} tries; nothing was sent",
                http_status=status,
            )
        if status in GATEWAY_STATUSES:
            raise WhatsAppDeliveryUnknownError(
                f"a gateway answered HTTP {status} (the API behind it may have taken the message)",
                http_status=status,
            )
        if status >= 500:
            raise WhatsAppDeliveryUnknownError(f"019sms answered HTTP {status}", http_status=status)
        if status != 200:
            raise WhatsAppResponseError(
                f"HTTP {status} (check the base URL and endpoint paths of connection {cfg.conn_id!r})",
                http_status=status,
                body=body,
            )
        return status, body

    def _read_answer(self, response: requests.Response, url: str, limit: int, *, cut: bool) -> bytes:
        """Read the body: at most ``limit`` bytes after decompression, all of it within the read
        timeout (a server trickling a byte a second cannot hold a send for minutes)."""
        cfg = self.settings
        status = response.status_code
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("", "identity"):
            decoder = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # zlib or gzip header
        else:
            raise WhatsAppResponseError(
                f"the answer is compressed with {encoding[:40]!r}, which was not asked for",
                http_status=status,
                body=b"",
            )
        deadline = time.monotonic() + cfg.timeout[1]
        out = bytearray()
        try:
            while True:
                if time.monotonic() > deadline:
                    raise WhatsAppDeliveryUnknownError(
                        f"the answer from {_where(url)} took more than {cfg.timeout[1]:g} s to arrive",
                        http_status=status,
                    )
                # read1: one socket read at most, so the deadline is checked between reads.
                chunk = response.raw.read1(_READ_CHUNK, decode_content=False)
                if decoder is not None:
                    # max_length: a gzip bomb inflates no further than the cap.
                    chunk = decoder.decompress(chunk, limit + 1 - len(out)) if chunk else decoder.flush()
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    if cut:
                        return bytes(out[:limit])
                    raise WhatsAppResponseError(
                        f"the answer is larger than {limit // 1024} KiB", http_status=status, body=bytes(out[:1024])
                    )
        except zlib.error:
            raise WhatsAppResponseError(
                f"the answer could not be decompressed ({encoding})", http_status=status, body=b""
            ) from None
        except ReadTimeoutError:
            raise WhatsAppDeliveryUnknownError(
                f"no answer from {_where(url)} within {cfg.timeout[1]:g} s", http_status=status
            ) from None
        except (Urllib3Error, OSError) as exc:
            # The answer broke off mid-body: the request was processed.
            raise WhatsAppDeliveryUnknownError(
                f"the answer from {_where(url)} broke off mid-body ({exc.__class__.__name__})",
                http_status=status,
            ) from None
        response._content = bytes(out)  # what response.content would have been
        response._content_consumed = True
        return response._content

    @staticmethod
    def _decode_or_empty(status: int, body: bytes) -> dict[str, Any]:
        try:
            return decode_json_object(status, body)
        except WhatsAppResponseError:
            return {}

    # --- read-only calls -------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """Check the token and the sender with a read-only call (the template listing).

        Sends no message. Used by the Test button of Airflow's connection form. It reads the
        listing exactly as :meth:`get_templates` does, so it passes only when that would.
        """
        try:
            cfg = self.settings
            if not cfg.sender:
                return False, f"connection {cfg.conn_id!r} has no 'sender' in its extra"
            templates = self.get_templates()
        except WhatsAppAPIError as err:
            if err.reason == Reason.BAD_SENDER_OR_JSON and err.http_status == 200:
                return False, f"sender {cfg.sender} refused: {err}"
            return False, str(err)
        except WhatsAppError as err:
            return False, str(err)
        return True, f"token accepted; sender {cfg.sender} has {len(templates)} WhatsApp template(s)"


def _connection_form_info() -> dict[str, Any]:
    from airflow_provider_wa019.get_provider_info import get_provider_info

    [info] = [
        c for c in get_provider_info()["connection-types"] if c["connection-type"] == WhatsAppHook.conn_type
    ]
    return info


# A character an HTTP header value cannot carry, or that no bearer token holds: controls (CR and
# LF would split the header), whitespace, anything outside Latin-1.
_BAD_TOKEN_CHAR = re.compile(r"[^\x21-\x7e\xa1-\xff]")


def _token(conn_id: str, password: Any) -> str:
    token = (password or "").strip() if isinstance(password, str) or password is None else None
    if token is None:
        raise WhatsAppConfigError(f"connection {conn_id!r}: the password (API token) must be text")
    if not token:
        raise WhatsAppConfigError(
            f"connection {conn_id!r} has no API token: put the 019sms bearer token in its password field"
        )
    if _BAD_TOKEN_CHAR.search(token):
        # requests would fail mid-send with an error quoting the header, token and all.
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: the API token holds a character an HTTP header cannot carry "
            "(a space, a line break, a control or non-Latin-1 character); paste the token again"
        )
    return token


def _extra(conn_id: str, conn: Any) -> dict[str, Any]:
    raw = getattr(conn, "extra", None)
    if isinstance(raw, str) and raw.strip():
        # extra_dejson would log a parse error and return {}: then "no sender" hides the cause.
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise WhatsAppConfigError(f"connection {conn_id!r}: extra is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise WhatsAppConfigError(f"connection {conn_id!r}: extra must be a JSON object")
    extra = conn.extra_dejson or {}
    if not isinstance(extra, dict):
        raise WhatsAppConfigError(f"connection {conn_id!r}: extra must be a JSON object")
    return extra


class _ExtraReader:
    """Typed access to connection extras. A ``null`` or empty value means "not set": Airflow's
    connection form saves empty extra fields as ``null``."""

    def __init__(self, conn_id: str, extra: dict[str, Any]) -> None:
        self._conn_id = conn_id
        self._extra = extra

    def get(self, name: str, types: type | tuple[type, ...]) -> Any:
        value = self._extra.get(name)
        if value is None or value == "":
            # Forms of Airflow before 3.2 may store extra fields under a prefixed name.
            value = self._extra.get(f"extra__wa019__{name}")
        if value is None or value == "":
            return None
        if not isinstance(value, types) or isinstance(value, bool):
            raise WhatsAppConfigError(
                f"connection {self._conn_id!r}: extra {name!r} has the wrong type ({type(value).__name__})"
            )
        return value

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.get(name, (int, float, str))
        if value is None:
            return default
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = math.nan
        # NaN fails both comparisons; inf fails the maximum.
        if not minimum <= number <= maximum:
            raise WhatsAppConfigError(
                f"connection {self._conn_id!r}: extra {name!r} must be a number from {minimum:g} to "
                f"{maximum:g}, got {_short(value)}"
            )
        return number


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _base_url(conn_id: str, host: str | None, port: int | None) -> str:
    """``scheme://host[:port]`` from the connection's host and port, or a typed error.

    Error texts never quote the host: it may hold a user name and password.
    """
    host = (host or "").strip().rstrip("/") or DEFAULT_BASE_URL
    if "://" not in host:
        host = "https://" + host  # the API is HTTPS-only; plain http is for the loopback simulator
    where = f"connection {conn_id!r}: host"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WhatsAppConfigError(f"{where} is not an http(s) base URL such as https://019sms.co.il")
    if "@" in parts.netloc:
        raise WhatsAppConfigError(
            f"{where} holds a user name or password: remove it (the token goes in the password field)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise WhatsAppConfigError(
            f"{where} must be a base URL without a path, query or fragment (e.g. https://019sms.co.il); "
            "set send_path, template_path or templates_path in the extra for other endpoints"
        )
    try:
        host_port = parts.port
    except ValueError:
        raise WhatsAppConfigError(f"{where} has a port that is not a number from 1 to 65535") from None
    if port:  # 0 from some forms means "none"
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise WhatsAppConfigError(f"connection {conn_id!r}: port must be a number from 1 to 65535")
        if host_port is not None and host_port != port:
            raise WhatsAppConfigError(
                f"connection {conn_id!r}: the host names port {host_port} and the port field {port}; "
                "keep one"
            )
        if host_port is None:
            return f"{parts.scheme}://{parts.netloc}:{port}"
    return f"{parts.scheme}://{parts.netloc}"


def _path(conn_id: str, name: str, path: str, fields: frozenset[str] | set[str] = frozenset()) -> str:
    """An endpoint path, checked: it is formatted with ``fields`` (``{phone}``) and nothing else."""
    if SPACE_OR_CONTROL.search(path) or "?" in path or "#" in path:
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: extra {name!r} must be a URL path without spaces, query or fragment"
        )
    if fields:
        try:
            used = {f for _, f, spec, conv in string.Formatter().parse(path) if f is not None}
            bad = [f for _, f, spec, conv in string.Formatter().parse(path) if f is not None and (spec or conv)]
        except ValueError:
            used, bad = {"?"}, []
        if used - set(fields) or bad:
            allowed = ", ".join("{" + f + "}" for f in sorted(fields))
            raise WhatsAppConfigError(
                f"connection {conn_id!r}: extra {name!r} may hold only the placeholder {allowed} "
                "(and no other braces)"
            )
    return path if path.startswith("/") else "/" + path


def _timeout(conn_id: str, value: Any) -> tuple[float, float]:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        if isinstance(value, (list, tuple)):
            connect, read = (float(v) for v in value)
        else:
            connect = read = float(value)
    except (TypeError, ValueError, OverflowError):
        connect = read = math.nan
    if not (0 < connect <= MAX_TIMEOUT_SECONDS and 0 < read <= MAX_TIMEOUT_SECONDS):
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: 'timeout' must be seconds (more than 0, at most "
            f"{MAX_TIMEOUT_SECONDS:g}) or [connect, read], got {_short(value)}"
        )
    return connect, read


def _proxies(conn_id: str, value: dict[str, Any]) -> dict[str, str]:
    for scheme, url in value.items():
        if not isinstance(scheme, str) or not isinstance(url, str) or not url.strip():
            raise WhatsAppConfigError(
                f"connection {conn_id!r}: extra 'proxies' maps a scheme to a proxy URL, e.g. "
                '{"https": "http://proxy:3128"}'
            )
    return dict(value)


def _where(url: str) -> str:
    # Host and port only: never a user name or password, never a query string.
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _transport_error(exc: requests.RequestException, url: str, cfg: WhatsAppSettings) -> WhatsAppError:
    """Map a requests failure to "not sent" (safe to retry) or "delivery unknown"."""
    where = _where(url)
    if isinstance(exc, requests.exceptions.ProxyError):
        # urllib3 raises ProxyError only while it has not connected through the proxy yet (the
        # proxy refused, timed out or failed the tunnel): the request never left for the API.
        cause = getattr(exc.args[0], "reason", None) if exc.args else None
        detail = _root(cause.original_error) if isinstance(cause, ProxyError) else exc.__class__.__name__
        return WhatsAppTransientError(
            f"could not reach the proxy for {where} on {cfg.max_attempts} tries ({detail}); nothing was sent"
        )
    if isinstance(exc, requests.ConnectTimeout):
        return WhatsAppTransientError(
            f"could not connect to {where} within {cfg.timeout[0]} s on {cfg.max_attempts} tries; nothing was sent"
        )
    if isinstance(exc, requests.ReadTimeout):
        return WhatsAppDeliveryUnknownError(f"no answer from {where} within {cfg.timeout[1]} s")
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        # The answer broke off mid-body (or could not be decoded): the request was processed.
        return WhatsAppDeliveryUnknownError(
            f"the answer from {where} broke off mid-body ({exc.__class__.__name__})"
        )
    if isinstance(exc, requests.exceptions.SSLError):
        return WhatsAppConfigError(
            f"TLS handshake with {where} failed ({exc.__class__.__name__}); nothing was sent"
        )
    if isinstance(exc, requests.ConnectionError):
        cause = exc.args[0] if exc.args else None
        if isinstance(getattr(cause, "reason", None), (NewConnectionError, ConnectTimeoutError)):
            return WhatsAppTransientError(
                f"could not connect to {where} on {cfg.max_attempts} tries ({_root(cause.reason)}); nothing was sent"
            )
        # The connection broke after the request was written: it may have been processed.
        return WhatsAppDeliveryUnknownError(f"connection to {where} dropped ({_root(exc)})")
    text = cfg.redactor.text(str(exc))
    return WhatsAppConfigError(
        f"request to {where} could not be made: {exc.__class__.__name__}: {excerpt(text)}"
    )


def _root(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 wraps the OS error text at the end: "...: [Errno 111] Connection refused".
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") if ": " in text else text
