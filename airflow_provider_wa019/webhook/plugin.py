"""The Airflow plugin that serves the webhook in the api-server (entry point ``airflow.plugins``).

Every Airflow component (scheduler, DAG processor, triggerer, workers, the CLI) imports the
plugins it finds; this module costs them nothing beyond itself: no FastAPI, SQLAlchemy or
provider code is imported here. ``fastapi_apps`` is computed the first time it is read, and
only the api-server reads it (Airflow 3.1 ``initialize_fastapi_plugins``, 3.3
``get_fastapi_plugins``, both called by the api-server's app factory; besides them only
``airflow plugins`` and the api-server's plugin listing read it). No guess from ``sys.argv`` is
needed, so it holds however the api-server is started (``airflow api-server``, gunicorn or
uvicorn workers, ``fastapi dev``).

Registered only through the entry point, which Airflow loads whatever ``[core]
lazy_discover_providers`` says (see get_provider_info.py for why not also in provider info).
"""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: Where the api-server mounts the app: ``POST <api-server>/wa019/webhook/<conn_id>``.
URL_PREFIX = "/wa019"
APP_NAME = "019sms WhatsApp webhook"


class _AppsOnFirstRead:
    """``fastapi_apps``, built when first read (on the class or an instance), once per process."""

    def __init__(self) -> None:
        self._apps: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def __get__(self, instance: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            with self._lock:
                if self._apps is None:
                    from airflow_provider_wa019.webhook.app import create_app

                    self._apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": APP_NAME}]
        return self._apps

    @property
    def built(self) -> bool:
        return self._apps is not None


class WhatsAppWebhookPlugin(AirflowPlugin):
    """Serves ``POST /wa019/webhook/<conn_id>`` in the api-server (see
    :mod:`airflow_provider_wa019.webhook.app`)."""

    name = "wa019_webhook"
    fastapi_apps = _AppsOnFirstRead()  # type: ignore[assignment]
