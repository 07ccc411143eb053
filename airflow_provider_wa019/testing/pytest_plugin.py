"""Pytest fixtures for DAG tests against the 019sms WhatsApp simulator.

Registered automatically through the provider's ``pytest11`` entry point once the provider is
installed (elsewhere: ``pytest -p airflow_provider_wa019.testing.pytest_plugin``). No Airflow
import here, and the simulator itself is imported only when a fixture is used, so the plugin
costs nothing in test runs that never ask for it.

::

    def test_alert_is_sent(wa019_connection):            # AIRFLOW_CONN_WA019_DEFAULT is set
        wa019_connection.open_window("972501234567")
        run_my_dag()                                     # e.g. dag.test()
        assert wa019_connection.sent[0]["to"] == "972501234567"

    def test_retry_on_whatsapp_error(wa019_connection):
        wa019_connection.fail_next(reason=6)             # first send fails, the retry succeeds
        ...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_provider_wa019.testing.simulator import WhatsAppSimulator


@pytest.fixture
def wa019_simulator() -> Iterator[WhatsAppSimulator]:
    """A started :class:`WhatsAppSimulator` on a free loopback port, stopped after the test."""
    from airflow_provider_wa019.testing.simulator import WhatsAppSimulator

    with WhatsAppSimulator() as sim:
        yield sim


@pytest.fixture
def wa019_connection(
    wa019_simulator: WhatsAppSimulator, monkeypatch: pytest.MonkeyPatch
) -> WhatsAppSimulator:
    """The simulator, with ``AIRFLOW_CONN_WA019_DEFAULT`` pointing at it (JSON form) for the test."""
    for name, value in wa019_simulator.connection_env().items():
        monkeypatch.setenv(name, value)
    return wa019_simulator
