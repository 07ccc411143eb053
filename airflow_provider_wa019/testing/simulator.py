"""The public :class:`WhatsAppSimulator`: the simulated platform served over HTTP on loopback.

This module holds the class users meet (its docstring is the guide): the lifecycle (``start``,
``stop``, the context manager), the addresses and the connection helpers. It composes the
package's other modules, each with one job:

* ``model.py``: the platform's state and rules and each API answer, no sockets (``Platform``,
  which ``WhatsAppSimulator`` is);
* ``endpoints.py``: reading an API request's fields, checked in the vendor's order;
* ``templates.py``, ``faults.py``: the template book and rendering; the fault queue;
* ``records.py``: answers, refusals and the record of a request, token masked;
* ``checks.py``: checks of what the simulator is told (numbers, counts, seconds, times);
* ``control.py``: the ``/__sim__/...`` control endpoints;
* ``server.py``: the HTTP plumbing (threading server, keep-alive handler).

Everything it takes from the API contract (paths, reason codes, limits, placeholder and number
rules) comes from :mod:`airflow_provider_wa019.api`. Standard library plus pendulum only (no
Airflow, no requests), so DAG tests, benchmarks and ``python -m airflow_provider_wa019.testing``
can use it anywhere.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from email.message import Message
from typing import Any
from urllib.parse import quote

from airflow_provider_wa019.testing.control import CONTROL_PREFIX as CONTROL_PREFIX
from airflow_provider_wa019.testing.control import answer_control
from airflow_provider_wa019.testing.model import WINDOW as WINDOW
from airflow_provider_wa019.testing.model import Platform
from airflow_provider_wa019.testing.records import RecordedRequest as RecordedRequest
from airflow_provider_wa019.testing.records import Response
from airflow_provider_wa019.testing.server import Server

__all__ = ["DEFAULT_SENDER", "DEFAULT_TOKEN", "RecordedRequest", "WhatsAppSimulator"]

DEFAULT_TOKEN = "sim-token"
DEFAULT_SENDER = "972771234567"


class WhatsAppSimulator(Platform):
    """The 019sms WhatsApp API on ``http://127.0.0.1:<port>``, with a controllable clock and faults.

    Use it in your own tests::

        from airflow_provider_wa019.testing import WhatsAppSimulator

        def test_my_dag(monkeypatch):
            with WhatsAppSimulator() as sim:                       # random free port on 127.0.0.1
                monkeypatch.setenv("AIRFLOW_CONN_WA019_DEFAULT", sim.connection_json())
                sim.open_window("972501234567")                    # the client wrote to us just now
                ...                                                # run the DAG / task
                assert [m["to"] for m in sim.sent] == ["972501234567"]

    or with the pytest fixtures ``wa019_simulator`` / ``wa019_connection`` (see ``pytest_plugin``).

    What it models (from the vendor's "Send Message" page):

    * ``POST /api/whatsapp/sendMessage``: free-form text, allowed only within 24 h of the client's
      last inbound message (:meth:`open_window`). Reason 8 for a contact that never wrote and was
      never messaged, 7 when the window expired or only templates were sent since.
    * ``POST /api/whatsapp/sendTemplate``: approved template, allowed at any time; it starts a
      billing conversation but does not open the free-form window (only a client reply does).
    * ``GET /whatsapp-api/get-phone-templates/{phone}[/{templateId}]``: read-only listing.
    * Errors of the send endpoints come back as HTTP 200 with ``{"status": "FAIL", "reason": N}``,
      like 019's real API; transport faults (429, 5xx, slow answers, broken bodies) are injected
      on demand with :meth:`fail_next`.
    * ``/__sim__/...`` control endpoints let another process (a demo script, an end-to-end test
      against a real Airflow deployment) drive the simulator over HTTP.

    Numbers the simulator is *told* (senders, :meth:`open_window`, ``fail_next(to=...)``, the
    control endpoints) may be written the way people write them ("+972 50-123-4567",
    "00972..."): they are normalised to the API's digits-only form, and anything that is not 8-15
    digits then is refused. The ``from``/``to`` of a request are not normalised: the API takes
    digits only, so a ``to`` of "+972..." is reason 4, as on the real platform.

    :param token: the bearer token the simulator accepts.
    :param senders: the business accounts (``from`` numbers) that exist; ``sender`` is the first.
        Normalised to digits ("+972 77-123-4567" -> "972771234567"); ``ValueError`` if one is not
        8-15 digits then.
    :param host: address to bind; keep the loopback default in tests.
    :param port: port to bind; 0 picks a free one (read ``base_url`` after ``start()``).
    :param latency: seconds to sleep in every API request (realistic bulk benchmarks).
    :param max_concurrency: at most this many API requests are handled at once; others wait.
    :param templates: templates to register, as dicts of :meth:`add_template` arguments
        (``name``, ``body``, optional ``template_id``/``templateId``, ``language``, ...).
    :param now: freeze the clock at this moment (datetime or ISO string); by default it follows
        real time until :meth:`set_time` or :meth:`advance` is called.
    :param webhook_url: where :meth:`client_says` delivers clients' messages, as the platform
        would: the URL configured there, e.g.
        ``http://127.0.0.1:8080/wa019/webhook/wa019_default`` (see :meth:`set_webhook`).
    :param webhook_secret: set as that URL's ``secret`` parameter.

    Everything is thread-safe (one lock). The simulator is a context manager::

        with WhatsAppSimulator(templates=[{"name": "hello", "body": "Hi {{1}}"}]) as sim:
            ...
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        senders: Sequence[str] = (DEFAULT_SENDER,),
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        templates: Iterable[Mapping[str, Any]] | None = None,
        now: datetime | str | None = None,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        super().__init__(
            token, senders, latency=latency, max_concurrency=max_concurrency, templates=templates, now=now
        )
        if webhook_url is not None:
            self.set_webhook(webhook_url, webhook_secret)
        self._host = host
        self._port = port
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WhatsAppSimulator:
        """Bind the port and serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        server = Server((self._host, self._port), self._answer)
        self._server = server
        # A short poll interval makes stop() quick (~5 ms, not ~25): it matters for per-test fixtures.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="wa019-simulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and free the port (idempotent)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> WhatsAppSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    def _answer(
        self, method: str, path: str, query: str, headers: Message, raw: bytes, client_port: int
    ) -> Response:
        # What the server calls for every request (from its handler threads).
        if path.startswith(CONTROL_PREFIX):
            return answer_control(self, method, path, raw)
        return self.answer_api(method, path, query, headers, raw, client_port)

    # -- addresses and connections -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (only after ``start()``)."""
        if self._server is None:
            raise RuntimeError("simulator not started: call start() or use it as a context manager")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the connection's host (only after ``start()``)."""
        host = self._server.server_address[0] if self._server is not None else self._host
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def connection_json(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_...`` value (JSON form) pointing at this simulator.

        ``{"conn_type": "wa019", "host": base_url, "password": token, "extra": {"sender": ...}}``;
        keyword arguments are added to ``extra`` (e.g. ``timeout=5``).
        """
        return json.dumps(
            {
                "conn_type": "wa019",
                "host": self.base_url,
                "password": self.token,
                "extra": {"sender": self.sender, **extra},
            },
            separators=(",", ":"),  # no spaces: simpler to paste into a shell
        )

    def connection_uri(self, **extra: Any) -> str:
        """An ``AIRFLOW_CONN_...`` value (URI form) that Airflow parses back to the JSON form's fields.

        The form is ``wa019://:TOKEN@http%3A%2F%2F127.0.0.1%3APORT/?__extra__=<url-encoded JSON>``:

        * the whole base URL is percent-encoded as the host, so Airflow's ``Connection`` (both
          ``airflow.sdk`` and ``airflow.models``) reads ``host == "http://127.0.0.1:PORT"`` and
          ``port is None``, the same as the JSON form;
        * extras go in ``__extra__`` as JSON because plain ``?sender=972...`` query values are
          JSON-decoded by ``airflow.models.Connection``, turning the number into an ``int``.
        """
        payload = json.dumps({"sender": self.sender, **extra})
        return (
            f"wa019://:{quote(self.token, safe='')}@{quote(self.base_url, safe='')}/"
            f"?__extra__={quote(payload, safe='')}"
        )

    def connection_env(self, conn_id: str = "wa019_default", **extra: Any) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<CONN_ID>": connection_json(**extra)}``, ready for ``os.environ.update``."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_json(**extra)}
