"""WhatsAppHook: the 019sms connection, its token, one ``requests`` session, timeouts and retries.

This module is the requests transport only: the connection's settings and every check before a
request come from :mod:`airflow_provider_wa019.hooks.base`, what an answer means (statuses,
retries, bounded bodies, transport failures) from :mod:`airflow_provider_wa019.answers`, the same
modules the async hook (:mod:`airflow_provider_wa019.hooks.whatsapp_async`) calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProxyError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.util.retry import Retry

from airflow_provider_wa019 import __version__
from airflow_provider_wa019.answers import (
    GATEWAY_STATUSES,
    MAX_LISTING_ANSWER_BYTES,
    NOT_PROCESSED_STATUSES,
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
from airflow_provider_wa019.api import (
    Reason,
    SendResult,
    WhatsAppTemplate,
    parse_templates_response,
)
from airflow_provider_wa019.constants import POOL_MAXSIZE

if TYPE_CHECKING:
    from airflow_provider_wa019.hooks.window import WindowStatus
from airflow_provider_wa019.exceptions import (
    WhatsAppAPIError,
    WhatsAppDeliveryUnknownError,
    WhatsAppError,
)

# Re-exported: the settings and their defaults have always been importable from here.
from airflow_provider_wa019.hooks.base import (  # noqa: F401
    DEFAULT_BACKOFF_FACTOR,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_TIMEOUT,
    MAX_ATTEMPTS_LIMIT,
    MAX_TIMEOUT_SECONDS,
    Exchange,
    WhatsAppHookBase,
    WhatsAppSettings,
    environ_ca_bundle,
)


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
    """urllib3's retry machinery with the provider's policy (:mod:`~airflow_provider_wa019.answers`):
    which statuses are retried, ``Retry-After`` capped (one rate-limit answer cannot park a worker
    slot for an hour), and the backoff both transports share."""

    max_retry_after: float = DEFAULT_MAX_RETRY_WAIT

    def new(self, **kw: Any) -> _TransportRetry:
        retry = super().new(**kw)
        retry.max_retry_after = self.max_retry_after
        return retry

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        # A 502/504 to a POST may come after the API took the message: never sent again here.
        return retried_by_transport(method, status_code)

    def get_retry_after(self, response: Any) -> float | None:
        return retry_after_seconds(response.headers.get("Retry-After"), self.max_retry_after)

    def get_backoff_time(self) -> float:
        # No redirects are followed, so the history is the run of failed tries.
        return transport_backoff(len(self.history), self.backoff_factor, self.backoff_max)


class WhatsAppHook(WhatsAppHookBase):
    """Send WhatsApp messages through the 019sms API.

    The connection (type ``wa019``) holds the API bearer token in its password, the API base URL
    in its host (default ``https://019sms.co.il``; ``http://127.0.0.1:PORT`` for the simulator),
    and in its extra: ``sender`` (the default ``from`` number), ``timeout`` (seconds, one number
    or ``[connect, read]``), ``proxies``, ``default_region`` (e.g. ``"IL"`` so ``050-123-4567``
    is understood), ``send_path``/``template_path``/``templates_path`` (endpoint overrides) and
    ``max_attempts``/``backoff_factor``/``max_retry_wait`` (retry tuning).

    One ``requests.Session`` is built per hook and reused for every call; use the hook as a
    context manager, or call :meth:`close`, to release its connections.

    Retries happen only where a message cannot have gone out: reason 6, HTTP 429/503 and
    failures to connect (502/504 too, for the read-only template listing). A read timeout or
    HTTP 500/502/504 to a send leaves delivery unknown and raises
    :class:`~airflow_provider_wa019.exceptions.WhatsAppDeliveryUnknownError` without a retry.

    For asyncio code (triggers, deadline alerts) use
    :class:`~airflow_provider_wa019.hooks.whatsapp_async.WhatsAppAsyncHook`: same connection,
    checks, rules and results.

    :param wa019_conn_id: the Airflow connection id.
    :param timeout: overrides the connection's timeout (seconds, or ``(connect, read)``).
    :param max_attempts: overrides the connection's number of tries of a transient failure.
    """

    # --- connection ------------------------------------------------------------------------

    @cached_property
    def session(self) -> requests.Session:
        """The one HTTP session of this hook, with auth, retries and proxies set up."""
        cfg = self.settings
        session = requests.Session()
        session.auth = _BearerAuth(cfg.token)
        session.headers.update(
            {
                "Accept": "application/json",
                # Only what AnswerReader decodes itself, with its size cap applied to the output.
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
        ca_bundle = environ_ca_bundle()
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
            # Which statuses: answers.retried_by_transport (through _TransportRetry.is_retry).
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
        payload = self._message_payload(to, body, sender, reply_to)
        return self._post_message(self.settings.send_path, payload)

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
        plan = self._template_plan(to, template, variables, header_type, header_link, sender)
        if check_template and not plan.known:
            if plan.sender not in self._template_cache:
                self._template_cache[plan.sender] = self.get_templates(phone=plan.sender)
            self._templates_named(plan, self._template_cache[plan.sender])
        return self._post_message(self.settings.template_path, plan.payload)

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
            if not self._falls_back(err, fallback_template):
                raise
        result = self.send_template(to, fallback_template, fallback_variables, sender=sender)
        return result, "template"

    def window(self, to: str) -> WindowStatus:
        """What the webhook has seen of client ``to``'s 24 h window for free-form messages.

        Asks the api-server's webhook app (``GET /wa019/window/...``) with the connection's
        ``webhook_secret``; the api-server is found at extra ``airflow_api_url`` or Airflow's
        ``[api] base_url``. ``status.open`` is True/False from the latest client message the
        webhook recorded in the last 24 h, or None when receiving is not configured or the
        api-server cannot be asked. Sends nothing to 019sms. The API stays the authority: a
        client who wrote before the webhook was set up is "closed" here.
        """
        from airflow_provider_wa019.hooks.window import WindowStatus, airflow_api_url, lookup_window
        from airflow_provider_wa019.masking import mask_number
        from airflow_provider_wa019.validation import normalize_number

        cfg = self.settings
        number = normalize_number(to, field="to", region=cfg.default_region)
        secret = cfg.webhook_secret
        if not isinstance(secret, str) or not secret:
            return WindowStatus(number, None, reason="receiving is off: the connection has no webhook_secret")
        api_url = airflow_api_url(cfg.airflow_api_url)
        if api_url is None:
            return WindowStatus(number, None, reason="the api-server's URL is unknown: set [api] base_url")
        status = lookup_window(api_url, self.wa019_conn_id, number, secret)
        if status.open is None:
            self.log.info("Window of %s unknown: %s", mask_number(number), status.reason)
        return status

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
        path = self._listing_path(template_id, phone)
        try:
            status, body = self._request("GET", cfg.base_url + path, limit=MAX_LISTING_ANSWER_BYTES)
        except WhatsAppDeliveryUnknownError as err:
            raise listing_error(err) from err
        return parse_templates_response(status, body, scrub=cfg.redactor.text)

    def _post_message(self, path: str, payload: dict[str, Any]) -> SendResult:
        """POST a message payload: drive the shared send conversation with requests and sleep."""
        steps = self._send_steps(path, payload)
        step = next(steps)
        try:
            while True:
                if isinstance(step, Exchange):
                    answer = self._request(step.method, step.url, limit=step.limit, json=step.payload)
                    step = steps.send(answer)
                else:
                    time.sleep(step)
                    step = steps.send(None)
        except StopIteration as done:
            return done.value

    def _request(self, method: str, url: str, *, limit: int, **kwargs: Any) -> tuple[int, bytes]:
        """One HTTP exchange (urllib3 retries what answers.retried_by_transport names, and failed
        connects, inside it), judged by answers.check_status.

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
            body = self._read_answer(response, url, limit, cut=status != 200)
        finally:
            response.close()  # a no-op after a complete read (the connection is back in the pool)
        check_status(method, status, body, cfg)
        return status, body

    def _read_answer(self, response: requests.Response, url: str, limit: int, *, cut: bool) -> bytes:
        """Hand the raw body to an AnswerReader, one socket read at a time (``read1``), so its
        deadline is checked between reads."""
        cfg = self.settings
        reader = AnswerReader(
            response.status_code,
            response.headers.get("Content-Encoding"),
            url,
            limit,
            cut=cut,
            read_timeout=cfg.timeout[1],
            redactor=cfg.redactor,
        )
        read1 = response.raw.read1
        try:
            while True:
                reader.remaining()
                chunk = read1(READ_CHUNK, decode_content=False)
                if not chunk or reader.feed(chunk):
                    break
        except ReadTimeoutError:
            raise reader.timed_out() from None
        except (Urllib3Error, OSError) as exc:
            # The answer broke off mid-body: the request was processed.
            raise reader.broke_off(exc.__class__.__name__) from None
        body = reader.body()
        response._content = body  # what response.content would have been
        response._content_consumed = True
        return body

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


def _transport_error(exc: requests.RequestException, url: str, cfg: WhatsAppSettings) -> WhatsAppError:
    """Read a requests failure as one of answers.Failure: "not sent" (retried by urllib3 already)
    or "delivery unknown"."""
    if isinstance(exc, requests.exceptions.ProxyError):
        # urllib3 raises ProxyError only while it has not connected through the proxy yet (the
        # proxy refused, timed out or failed the tunnel): the request never left for the API.
        cause = getattr(exc.args[0], "reason", None) if exc.args else None
        detail = _root(cause.original_error) if isinstance(cause, ProxyError) else exc.__class__.__name__
        return failure_error(Failure.PROXY, url, cfg, detail)
    if isinstance(exc, requests.ConnectTimeout):
        return failure_error(Failure.CONNECT_TIMEOUT, url, cfg)
    if isinstance(exc, requests.ReadTimeout):
        return failure_error(Failure.READ_TIMEOUT, url, cfg)
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return failure_error(Failure.BROKE_OFF, url, cfg, exc.__class__.__name__)
    if isinstance(exc, requests.exceptions.SSLError):
        return failure_error(Failure.TLS, url, cfg, exc.__class__.__name__)
    if isinstance(exc, requests.ConnectionError):
        cause = exc.args[0] if exc.args else None
        if isinstance(getattr(cause, "reason", None), (NewConnectionError, ConnectTimeoutError)):
            return failure_error(Failure.CONNECT, url, cfg, _root(cause.reason))
        return failure_error(Failure.DROPPED, url, cfg, _root(exc))
    return failure_error(Failure.OTHER, url, cfg, f"{exc.__class__.__name__}: {exc}")


def _root(exc: BaseException) -> str:
    text = str(exc)
    # urllib3 wraps the OS error text at the end: "...: [Errno 111] Connection refused".
    return text.rsplit(": ", 1)[-1].rstrip(")'\"") if ": " in text else text
