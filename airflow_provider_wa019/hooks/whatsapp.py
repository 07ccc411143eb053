"""WhatsAppHook: the 019sms connection, its token, one HTTP session, timeouts and retries."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from airflow.providers.common.compat.sdk import BaseHook
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
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
    decode_json_object,
    parse_send_response,
    parse_templates_response,
    send_payload,
    template_payload,
)
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
    WhatsAppResponseError,
    WhatsAppTransientError,
    WhatsAppValidationError,
)
from airflow_provider_wa019.validation import (
    mask_number,
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

# Answers that mean "not processed, come back later": a rate limit, or a gateway/overload error
# raised in front of the application. Retrying them cannot duplicate a message.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})

#: Refusals after which a template may go out instead: nothing was sent, and a template may be.
FALLBACK_REASONS = frozenset({Reason.WINDOW_CLOSED, Reason.FIRST_CONTACT})

#: Kept-alive connections per host in the session's pool. Callers sending from several threads at
#: once (the bulk operator) stay at or below it, or connections beyond it are opened and dropped.
POOL_MAXSIZE = 32


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
    cannot park a worker slot for an hour."""

    max_retry_after: float = DEFAULT_MAX_RETRY_WAIT

    def new(self, **kw: Any) -> _TransportRetry:
        retry = super().new(**kw)
        retry.max_retry_after = self.max_retry_after
        return retry

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.max_retry_after)


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
    default_conn_name = "wa019_default"
    conn_type = "wa019"
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
        """The connection's settings, read and checked once per hook."""
        conn = self.get_connection(self.wa019_conn_id)
        conn_id = self.wa019_conn_id
        token = (conn.password or "").strip()
        if not token:
            raise WhatsAppConfigError(
                f"connection {conn_id!r} has no API token: put the 019sms bearer token in its password field"
            )
        extra = conn.extra_dejson or {}
        if not isinstance(extra, dict):
            raise WhatsAppConfigError(f"connection {conn_id!r}: extra must be a JSON object")
        opt = _ExtraReader(conn_id, extra)
        sender = opt.get("sender", (str, int))  # URI query values may arrive as numbers
        region = validate_region(opt.get("default_region", str))
        return WhatsAppSettings(
            conn_id=conn_id,
            base_url=_base_url(conn.host, conn.port),
            token=token,
            sender=normalize_number(sender, field="sender", region=region) if sender else None,
            timeout=_timeout(conn_id, self._timeout_override or opt.get("timeout", (int, float, str, list))),
            proxies=opt.get("proxies", dict) or {},
            send_path=_path(opt.get("send_path", str) or SEND_PATH),
            template_path=_path(opt.get("template_path", str) or TEMPLATE_PATH),
            templates_path=_path(opt.get("templates_path", str) or TEMPLATES_PATH),
            default_region=region,
            max_attempts=int(
                self._max_attempts_override or opt.number("max_attempts", DEFAULT_MAX_ATTEMPTS, 1)
            ),
            backoff_factor=opt.number("backoff_factor", DEFAULT_BACKOFF_FACTOR, 0),
            max_retry_wait=opt.number("max_retry_wait", DEFAULT_MAX_RETRY_WAIT, 0),
        )

    @cached_property
    def session(self) -> requests.Session:
        """The one HTTP session of this hook, with auth, retries and proxies set up."""
        cfg = self.settings
        session = requests.Session()
        session.auth = _BearerAuth(cfg.token)
        session.headers.update(
            {"Accept": "application/json", "User-Agent": f"airflow-provider-wa019/{__version__}"}
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
            # 429/502/503/504 are answered before the API processes the request.
            status=cfg.max_attempts - 1,
            status_forcelist=TRANSIENT_STATUSES,
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
            if not fallback_template or err.reason not in FALLBACK_REASONS:
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
            response = self._request("GET", cfg.base_url + path)
        except WhatsAppDeliveryUnknownError as err:
            # A listing sends nothing: "delivery unknown" would mislead, and asking again is safe.
            raise WhatsAppTransientError(
                f"template listing: {err.detail}; nothing was sent", http_status=err.http_status
            ) from err
        return parse_templates_response(response.status_code, response.content)

    def _templates_named(self, name: str, sender: str) -> list[WhatsAppTemplate]:
        if sender not in self._template_cache:
            self._template_cache[sender] = self.get_templates(phone=sender)
        templates = self._template_cache[sender]
        # Several languages may share a name; the send names no language, so check them all.
        matches = [t for t in templates if t.name == name]
        if not matches:
            names = sorted({t.name for t in templates})
            known = ", ".join(names) or "none"
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
            response = self._request("POST", url, json=payload)
            try:
                result = parse_send_response(response.status_code, response.content)
            except WhatsAppAPIError as err:
                if err.reason != Reason.WHATSAPP_ERROR or attempt == cfg.max_attempts:
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

    def _request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP exchange (urllib3 retries connects and 429/502/503/504 inside it), with the
        outcome classified by whether the message could have been delivered."""
        cfg = self.settings
        try:
            response = self.session.request(method, url, timeout=cfg.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise _transport_error(exc, url, cfg) from exc
        if cfg.token.encode() in response.content:
            # An answer that echoes our Authorization header (a gateway's debug page, a "bad
            # request" quoting it) would carry the token into errors, logs and XCom: blank it.
            response._content = response.content.replace(cfg.token.encode(), b"***")
        status = response.status_code
        if status in (401, 403):
            # A refused token: retrying cannot help and would only repeat the refusal.
            raise WhatsAppAPIError(
                Reason.BAD_TOKEN,
                http_status=status,
                response=_json_or_empty(response),
                detail=f"HTTP {status}: check the token in connection {cfg.conn_id!r}",
            )
        if status in TRANSIENT_STATUSES:
            raise WhatsAppTransientError(
                f"019sms answered HTTP {status} on all {cfg.max_attempts} tries; nothing was sent",
                http_status=status,
            )
        if status >= 500:
            raise WhatsAppDeliveryUnknownError(f"019sms answered HTTP {status}", http_status=status)
        if status != 200:
            raise WhatsAppResponseError(
                f"HTTP {status} (check the base URL and endpoint paths of connection {cfg.conn_id!r})",
                http_status=status,
                body=response.content,
            )
        return response

    # --- read-only calls -------------------------------------------------------------------

    def _get_json(self, path: str) -> dict[str, Any]:
        response = self._request("GET", self.settings.base_url + path)
        return decode_json_object(response.status_code, response.content)

    def test_connection(self) -> tuple[bool, str]:
        """Check the token and the sender with a read-only call (the template listing).

        Sends no message. Used by the Test button of Airflow's connection form.
        """
        try:
            cfg = self.settings
            if not cfg.sender:
                return False, f"connection {cfg.conn_id!r} has no 'sender' in its extra"
            data = self._get_json(cfg.templates_path.format(phone=cfg.sender))
        except WhatsAppError as err:
            return False, str(err)
        if data.get("success") is not True:
            message = data.get("message") or "the API did not confirm the sender"
            return False, f"sender {cfg.sender} refused: {message}"
        templates = data.get("templates")
        count = len(templates) if isinstance(templates, list) else 0
        return True, f"token accepted; sender {cfg.sender} has {count} WhatsApp template(s)"


def _connection_form_info() -> dict[str, Any]:
    from airflow_provider_wa019.get_provider_info import get_provider_info

    [info] = [
        c for c in get_provider_info()["connection-types"] if c["connection-type"] == WhatsAppHook.conn_type
    ]
    return info


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
                f"connection {self._conn_id!r}: extra {name!r} has the wrong type ({value!r})"
            )
        return value

    def number(self, name: str, default: float, minimum: float) -> float:
        value = self.get(name, (int, float, str))
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not number >= minimum:
            raise WhatsAppConfigError(
                f"connection {self._conn_id!r}: extra {name!r} must be a number >= {minimum}, got {value!r}"
            )
        return number


def _base_url(host: str | None, port: int | None) -> str:
    host = (host or "").strip().rstrip("/") or DEFAULT_BASE_URL
    if "://" not in host:
        host = "https://" + host  # the API is HTTPS-only; plain http is for the loopback simulator
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WhatsAppConfigError(f"connection host {host!r} is not an http(s) base URL")
    if port and not parts.port:
        host = f"{parts.scheme}://{parts.netloc}:{port}{parts.path}"
    return host


def _path(path: str) -> str:
    return path if path.startswith("/") else "/" + path


def _timeout(conn_id: str, value: Any) -> tuple[float, float]:
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        if isinstance(value, (list, tuple)):
            connect, read = (float(v) for v in value)
        else:
            connect = read = float(value)
    except (TypeError, ValueError):
        connect = read = float("nan")
    if not (connect > 0 and read > 0):
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: 'timeout' must be seconds > 0 or [connect, read], got {value!r}"
        )
    return connect, read


def _json_or_empty(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _transport_error(exc: requests.RequestException, url: str, cfg: WhatsAppSettings) -> WhatsAppError:
    """Map a requests failure to "not sent" (safe to retry) or "delivery unknown"."""
    where = urlsplit(url).netloc
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
    if isinstance(exc, (requests.exceptions.ProxyError, requests.ConnectionError)):
        cause = exc.args[0] if exc.args else None
        if isinstance(getattr(cause, "reason", None), (NewConnectionError, ConnectTimeoutError)):
            return WhatsAppTransientError(
                f"could not connect to {where} on {cfg.max_attempts} tries ({_root(cause.reason)}); nothing was sent"
            )
        # The connection broke after the request was written: it may have been processed.
        return WhatsAppDeliveryUnknownError(f"connection to {where} dropped ({_root(exc)})")
    return WhatsAppConfigError(f"request to {where} could not be made: {exc.__class__.__name__}: {exc}")


def _root(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 wraps the OS error text at the end: "...: [Errno 111] Connection refused".
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") if ": " in text else text
