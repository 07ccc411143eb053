"""What the webhook has seen of a client's 24 h window, asked from a worker.

The api-server's webhook records every client message (asset events in the metadata DB), and
its app answers ``GET /wa019/window/{conn_id}/{number}`` from them. Workers cannot read the
metadata DB themselves, so :meth:`WhatsAppHook.window` asks that endpoint, with the
connection's ``webhook_secret`` in a header (never the 019 API token, never in the URL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from pendulum import DateTime

__all__ = ["WindowStatus", "airflow_api_url", "lookup_window"]

#: Seconds to wait for the api-server: this is an optimisation, never worth a slow send.
WINDOW_LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class WindowStatus:
    """A client's free-form window as the webhook knows it.

    :ivar open: True or False when the webhook has an answer; None when it cannot know
        (receiving is not configured, the api-server could not be asked). A client who wrote
        before the webhook was set up, or whose message was not delivered, is "closed" here
        while the API may accept a free-form message: the API's answer stays the authority.
    :ivar last_inbound: when the client last wrote (within the last 24 h), or None.
    :ivar closes_at: when the window opened by that message closes, or None.
    :ivar reason: why ``open`` is None, for the log.
    """

    number: str
    open: bool | None
    last_inbound: DateTime | None = None
    closes_at: DateTime | None = None
    reason: str | None = None


def airflow_api_url(configured: Any = None) -> str | None:
    """Where the api-server is: ``configured`` (the extra ``airflow_api_url``), else Airflow's
    ``[api] base_url``, else the Execution API's URL without its ``/execution/`` path."""
    if isinstance(configured, str) and configured.strip():
        return configured.strip().rstrip("/")
    try:
        from airflow.configuration import conf
    except ImportError:  # pragma: no cover - Airflow is a dependency
        return None
    base = conf.get("api", "base_url", fallback="") or ""
    if base.strip():
        return base.strip().rstrip("/")
    execution = conf.get("core", "execution_api_server_url", fallback="") or ""
    if execution.strip().rstrip("/").endswith("/execution"):
        return execution.strip().rstrip("/")[: -len("/execution")]
    return None


def lookup_window(api_url: str, conn_id: str, number: str, secret: str) -> WindowStatus:
    """Ask the webhook app; every failure is a status with ``open=None``, never an exception."""
    import pendulum
    import requests

    url = f"{api_url}/wa019/window/{quote(conn_id, safe='')}/{quote(number, safe='')}"
    try:
        with requests.Session() as session:
            session.trust_env = False  # the api-server is ours: no proxy, no netrc
            response = session.get(
                url,
                headers={"X-Wa019-Secret": secret, "Accept": "application/json"},
                timeout=WINDOW_LOOKUP_TIMEOUT,
            )
    except requests.RequestException as exc:
        return WindowStatus(number, None, reason=f"the api-server could not be asked ({type(exc).__name__})")
    if response.status_code != 200:
        return WindowStatus(
            number, None, reason=f"the api-server's webhook answered HTTP {response.status_code}"
        )
    try:
        data = response.json()
        last = pendulum.parse(data["last_inbound"]) if data.get("last_inbound") else None
        closes = pendulum.parse(data["closes_at"]) if data.get("closes_at") else None
        is_open = data["window_open"]
    except (ValueError, KeyError, TypeError):
        return WindowStatus(number, None, reason="the api-server's answer was not understood")
    if not isinstance(is_open, bool):
        return WindowStatus(number, None, reason="the api-server's answer was not understood")
    return WindowStatus(number, is_open, last, closes)  # type: ignore[arg-type]
