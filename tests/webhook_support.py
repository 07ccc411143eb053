"""Serving the webhook plugin's app for tests: exactly as the plugin hands it to Airflow, on
127.0.0.1 with uvicorn in a thread (a support module, imported by test modules)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from airflow_provider_wa019.webhook.plugin import URL_PREFIX, WhatsAppWebhookPlugin


def plugin_app() -> Any:
    """The webhook app exactly as the plugin hands it to Airflow, mounted as Airflow mounts it."""
    from fastapi import FastAPI

    [entry] = WhatsAppWebhookPlugin.fastapi_apps
    assert entry["url_prefix"] == URL_PREFIX == "/wa019"
    parent = FastAPI()
    parent.mount(entry["url_prefix"], entry["app"])
    return parent


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(
        app, log_config=None, access_log=True, proxy_headers=False, lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
