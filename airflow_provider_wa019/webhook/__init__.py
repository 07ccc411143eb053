"""Receiving clients' WhatsApp messages: a webhook served by Airflow's api-server.

``POST /wa019/webhook/<conn_id>`` takes the platform's deliveries for the account of connection
``conn_id`` and records each message as one event of that connection's inbound asset
(:func:`airflow_provider_wa019.inbound.whatsapp_inbound`). The parts:

- :mod:`.plugin`: the Airflow plugin (entry point ``airflow.plugins``). Every Airflow component
  imports it; only the api-server reads its ``fastapi_apps``, and only then is the app built.
- :mod:`.app`: the FastAPI app and the order of the checks (404, 403, 401, 413/415/400).
- :mod:`.auth`: the connection's webhook settings (secret, address allow-list, trusted proxies),
  cached for a few seconds, and the access-log filter that keeps the secret out of logs.
- :mod:`.store`: one asset event per accepted message, de-duplicated by the message's ``unique``.

Imports nothing: the plugin module must stay cheap for schedulers and workers.
"""

from __future__ import annotations
