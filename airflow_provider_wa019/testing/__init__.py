"""Testing helpers for the 019sms WhatsApp provider: a loopback simulator of the API.

Stand-alone (standard library + pendulum; no Airflow, no requests), so it serves DAG tests,
benchmarks and demos alike::

    from airflow_provider_wa019.testing import WhatsAppSimulator

    with WhatsAppSimulator() as sim:
        os.environ.update(sim.connection_env())   # AIRFLOW_CONN_WA019_DEFAULT -> the simulator
        sim.open_window("972501234567")           # the client wrote to us: free-form allowed
        ...                                       # run your DAG or task
        assert sim.sent[0]["body"] == "hello"

In pytest, the fixtures ``wa019_simulator`` and ``wa019_connection`` do the same (the plugin is
registered automatically when the provider is installed). From a shell::

    python -m airflow_provider_wa019.testing --port 8019 --open-window 972501234567

How it is built, one job per module: see the docstring of ``simulator.py``.
"""

from __future__ import annotations

from airflow_provider_wa019.testing.addresses import refused_address, unresponsive_address
from airflow_provider_wa019.testing.simulator import (
    DEFAULT_SENDER,
    DEFAULT_TOKEN,
    RecordedRequest,
    WhatsAppSimulator,
)

__all__ = [
    "DEFAULT_SENDER",
    "DEFAULT_TOKEN",
    "RecordedRequest",
    "WhatsAppSimulator",
    "refused_address",
    "unresponsive_address",
]
