"""What the sync and the async WhatsApp hook share: the connection's settings, read and checked in
one place, and every check made before a request (numbers, texts, templates, paths).

Neither transport lives here: :class:`~airflow_provider_wa019.hooks.whatsapp.WhatsAppHook` moves
bytes with requests, :class:`~airflow_provider_wa019.hooks.whatsapp_async.WhatsAppAsyncHook` with
aiohttp, and both judge answers through :mod:`airflow_provider_wa019.answers`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_wa019.answers import MAX_SEND_ANSWER_BYTES, reason_retry_delay
from airflow_provider_wa019.api import (
    DEFAULT_BASE_URL,
    SEND_PATH,
    TEMPLATE_PATH,
    TEMPLATES_PATH,
    SendResult,
    WhatsAppTemplate,
    parse_send_response,
    send_payload,
    template_payload,
)
from airflow_provider_wa019.constants import CONN_TYPE, DEFAULT_CONN_ID, WINDOW_REASONS
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppConfigError,
    WhatsAppValidationError,
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
#: Limits of the connection's numeric extras: beyond them a value is a typo, not a setting.
MAX_TIMEOUT_SECONDS = 3600.0
MAX_ATTEMPTS_LIMIT = 10
_NAMED_TEMPLATES = 10


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
    #: The receiving side (``webhook_secret``, ``airflow_api_url``), for ``WhatsAppHook.window``;
    #: None when unset. Not checked here: sending never depends on them.
    webhook_secret: Any = field(repr=False, default=None)
    airflow_api_url: Any = None


def read_settings(
    conn_id: str,
    conn: Any,
    extra_of: Callable[[], Any],
    *,
    timeout: float | tuple[float, float] | None = None,
    max_attempts: int | None = None,
) -> WhatsAppSettings:
    """The settings of connection ``conn_id``, checked.

    :param conn: the Airflow connection (its ``password``, ``host``, ``port`` and raw ``extra``).
    :param extra_of: returns its extra as Airflow decodes it (``extra_dejson``, or what the async
        counterpart returned); called only once the raw extra is known to be a JSON object, so
        Airflow logs no parse error of its own first.
    :param timeout: overrides the connection's timeout.
    :param max_attempts: overrides the connection's number of tries.
    :raises WhatsAppConfigError: naming the connection and the setting, never the token.
    """
    token = _token(conn_id, conn.password)
    opt = _ExtraReader(conn_id, _extra(conn_id, conn, extra_of))
    sender = opt.get("sender", (str, int))  # URI query values may arrive as numbers
    region = validate_region(opt.get("default_region", str))
    try:
        sender_number = normalize_number(sender, field="sender", region=region) if sender else None
    except WhatsAppValidationError as err:
        raise WhatsAppConfigError(f"connection {conn_id!r}: extra 'sender' is unusable: {err}") from None
    attempts = max_attempts or opt.number("max_attempts", DEFAULT_MAX_ATTEMPTS, 1, MAX_ATTEMPTS_LIMIT)
    if isinstance(attempts, bool) or attempts != int(attempts):
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: 'max_attempts' must be a whole number from 1 to "
            f"{MAX_ATTEMPTS_LIMIT}, got {attempts!r}"
        )
    return WhatsAppSettings(
        conn_id=conn_id,
        base_url=_base_url(conn_id, conn.host, conn.port),
        token=token,
        sender=sender_number,
        timeout=_timeout(conn_id, timeout or opt.get("timeout", (int, float, str, list))),
        proxies=_proxies(conn_id, opt.get("proxies", dict) or {}),
        send_path=_path(conn_id, "send_path", opt.get("send_path", str) or SEND_PATH),
        template_path=_path(conn_id, "template_path", opt.get("template_path", str) or TEMPLATE_PATH),
        templates_path=_path(
            conn_id, "templates_path", opt.get("templates_path", str) or TEMPLATES_PATH, fields={"phone"}
        ),
        default_region=region,
        max_attempts=int(attempts),
        backoff_factor=opt.number("backoff_factor", DEFAULT_BACKOFF_FACTOR, 0, MAX_TIMEOUT_SECONDS),
        max_retry_wait=opt.number("max_retry_wait", DEFAULT_MAX_RETRY_WAIT, 0, MAX_TIMEOUT_SECONDS),
        redactor=SecretRedactor(token),
        webhook_secret=opt.get("webhook_secret", object),
        airflow_api_url=opt.get("airflow_api_url", object),
    )


@dataclass(frozen=True)
class TemplatePlan:
    """A template send, checked as far as it can be without the sender's template listing."""

    sender: str
    name: str
    values: tuple[str, ...]
    #: Templates the values must fit (the one passed as an object); empty for a bare name.
    known: list[WhatsAppTemplate]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Exchange:
    """One HTTP request a send needs; the transport makes it and hands back (status, body)."""

    method: str
    url: str
    limit: int
    payload: dict[str, Any]


#: What :meth:`WhatsAppHookBase._send_steps` yields: a request to make, or seconds to wait.
SendStep = Exchange | float


class WhatsAppHookBase(BaseHook):
    """The connection and the checks before sending, for both transports (not used directly)."""

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

    @cached_property
    def settings(self) -> WhatsAppSettings:
        """The connection's settings, read and checked once per hook (a sync lookup).

        :raises WhatsAppConfigError: naming the connection and the setting, never the token.
        """
        conn = self.get_connection(self.wa019_conn_id)
        return self._settings_from(conn, lambda: conn.extra_dejson)

    def use_connection(self, conn: Any) -> None:
        """Use ``conn``, an Airflow connection already looked up, instead of looking it up by
        ``wa019_conn_id`` (the task SDK's lookup works only in tasks on some Airflow versions:
        the webhook's replies in the api-server read it server-side). Checked as a lookup is.

        :raises WhatsAppConfigError: naming the connection and the setting, never the token.
        """
        self.settings = self._settings_from(conn, lambda: conn.extra_dejson)

    def _settings_from(self, conn: Any, extra_of: Callable[[], Any]) -> WhatsAppSettings:
        return read_settings(
            self.wa019_conn_id,
            conn,
            extra_of,
            timeout=self._timeout_override,
            max_attempts=self._max_attempts_override,
        )

    # --- checks before a request ---------------------------------------------------------

    def _sender(self, sender: str | None) -> str:
        if sender is not None:
            return normalize_number(sender, field="sender", region=self.settings.default_region)
        if not self.settings.sender:
            raise WhatsAppConfigError(
                f"no sender: pass sender= or set 'sender' in the extra of connection {self.wa019_conn_id!r}"
            )
        return self.settings.sender

    def _message_payload(
        self, to: str, body: str, sender: str | None, reply_to: str | None
    ) -> dict[str, str]:
        """A free-form send's JSON, every argument checked (raises before any request)."""
        return send_payload(
            sender=self._sender(sender),
            to=normalize_number(to, field="to", region=self.settings.default_region),
            body=validate_body(body),
            reply_to=validate_optional_text(reply_to, field="reply_to"),
        )

    def _template_plan(
        self,
        to: str,
        template: str | WhatsAppTemplate,
        variables: Sequence[str],
        header_type: int | None,
        header_link: str | None,
        sender: str | None,
    ) -> TemplatePlan:
        """A template send's JSON, every argument checked; the values checked against the
        template's body when it is known (a template object)."""
        sender_number = self._sender(sender)
        to_number = normalize_number(to, field="to", region=self.settings.default_region)
        if isinstance(template, WhatsAppTemplate):
            name = validate_template_name(template.name)
            known: list[WhatsAppTemplate] = [template]
        else:
            name = validate_template_name(template)
            known = []
        values = validate_template_variables(variables)
        header, link = validate_header(header_type, header_link)
        for candidate in known:
            validate_template_fit(candidate, values)
        payload = template_payload(sender_number, to_number, name, values, header, link)
        return TemplatePlan(sender_number, name, values, known, payload)

    def _templates_named(self, plan: TemplatePlan, templates: list[WhatsAppTemplate]) -> None:
        """Check ``plan`` against the sender's listing: the name exists and the values fit."""
        # Several languages may share a name; the send names no language, so check them all.
        matches = [t for t in templates if t.name == plan.name]
        if not matches:
            names = sorted({t.name for t in templates})
            # An account may hold hundreds: name a few, count the rest.
            known = ", ".join(names[:_NAMED_TEMPLATES]) or "none"
            if len(names) > _NAMED_TEMPLATES:
                known += f" and {len(names) - _NAMED_TEMPLATES} more"
            raise WhatsAppValidationError(
                "template", plan.name, f"sender {plan.sender} has no such template (it has: {known})"
            )
        for candidate in matches:
            validate_template_fit(candidate, plan.values)

    def _listing_path(self, template_id: str | int | None, phone: str | None) -> str:
        """The template listing's path for ``phone`` (default: the connection's sender)."""
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
        return path

    def _send_steps(self, path: str, payload: dict[str, Any]) -> Generator[SendStep, Any, SendResult]:
        """The conversation of one send, without I/O: yields each :class:`Exchange` to make (and
        receives its ``(status, body)``, already judged by ``answers.check_status``) or a wait in
        seconds (receives None); returns the accepted message. Each transport drives it with its
        own request and sleep, so both retry exactly alike: only the API's own "not sent, try
        again" (reason 6, ``answers.reason_retry_delay``)."""
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
            status, body = yield Exchange("POST", url, MAX_SEND_ANSWER_BYTES, payload)
            try:
                result = parse_send_response(status, body, scrub=cfg.redactor.text)
            except WhatsAppAPIError as err:
                delay = reason_retry_delay(err, attempt, cfg)
                if delay is None:
                    raise
                self.log.warning("019sms answered reason 6 (%s); trying again in %.2f s", err.meaning, delay)
                yield delay
                continue
            self.log.log(
                self.message_log_level, "WhatsApp message to %s accepted, id %s", masked, result.unique
            )
            return result
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _falls_back(self, err: WhatsAppAPIError, fallback_template: str | WhatsAppTemplate | None) -> bool:
        """Whether a refused free-form message goes out as ``fallback_template`` instead.

        Only 7 and 8 say "not sent, but a template would be"; any other refusal would refuse the
        template too, or must end the caller by its own rule.
        """
        if not fallback_template or err.reason not in WINDOW_REASONS:
            return False
        self.log.warning(
            "%s. Sending template %r instead.", err, getattr(fallback_template, "name", fallback_template)
        )
        return True


# --- connection settings ------------------------------------------------------------------------


def environ_ca_bundle() -> str | None:
    """The CA bundle the environment names for HTTPS (as requests reads it), or None."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


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
        # The HTTP library would fail mid-send with an error quoting the header, token and all.
        raise WhatsAppConfigError(
            f"connection {conn_id!r}: the API token holds a character an HTTP header cannot carry "
            "(a space, a line break, a control or non-Latin-1 character); paste the token again"
        )
    return token


def extra_is_an_object(conn: Any) -> bool:
    """Whether the connection's raw extra is empty or a JSON object (else decoding it would log
    a parse error and return ``{}``: then "no sender" would hide the cause)."""
    raw = getattr(conn, "extra", None)
    if not isinstance(raw, str) or not raw.strip():
        return True
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _extra(conn_id: str, conn: Any, extra_of: Callable[[], Any]) -> dict[str, Any]:
    if not extra_is_an_object(conn):
        try:
            json.loads(conn.extra)
        except ValueError:
            raise WhatsAppConfigError(f"connection {conn_id!r}: extra is not valid JSON") from None
        raise WhatsAppConfigError(f"connection {conn_id!r}: extra must be a JSON object")
    extra = extra_of() or {}
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
                f"connection {conn_id!r}: the host names port {host_port} and the port field {port}; keep one"
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
            bad = [
                f for _, f, spec, conv in string.Formatter().parse(path) if f is not None and (spec or conv)
            ]
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
