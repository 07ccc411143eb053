"""Test set-up shared by every test module.

The first block runs before anything imports Airflow: Airflow reads its configuration once, at
import, so AIRFLOW_HOME, the DAGs folder and the metadata DB must be in the environment by then.
(pytest loads entry-point plugins, this package's own ``pytest11`` plugin included, before this
file: such a plugin must not import Airflow at module level, or the settings below come too late.)

- AIRFLOW_HOME is a fresh temporary folder per pytest process, removed at exit.
- The metadata DB is a file-based SQLite DB inside it (in-memory SQLite does not work with
  ``dag.test()``); it is migrated lazily, once per process, by the first test that needs it
  (``run_dag``, ``airflow_dags_test`` or the ``airflow_db`` fixture), so tests that never touch
  Airflow do not pay for it.
- DAGS_FOLDER is an empty folder inside it. DAGs that tests define (usually inside the test
  function) are not found by parsing any folder: ``run_dag`` writes the DAG object itself to the
  DB before ``dag.test()``. Pointing DAGS_FOLDER at tests/ would not help (a DAG built inside a
  function is invisible to parsing) and would make every ``dag.test()`` re-import the test modules.
- ``[core] unit_test_mode`` is forced off: it swaps in Airflow's own ``unit_tests.cfg`` (made for
  Airflow's repository, LocalExecutor, example DAGs on) and buys nothing here.
- ``[secrets] use_cache`` is forced off so a connection changed by a test is read afresh.
- AIRFLOW_CONN_* / AIRFLOW_VAR_* / AIRFLOW_CONFIG inherited from the developer's shell are removed
  so they cannot leak into tests; tests set connections with ``monkeypatch`` (see ``wa019_env``).

Fixtures (below): ``airflow_db``; ``wa019_env``, the one way tests set a wa019 connection (to a
simulator or any address, for in-process runs and ``airflow dags test`` subprocesses alike);
``make_sim``, which starts simulators with a fast connection to them. The provider's own plugin
adds ``wa019_simulator``/``wa019_connection`` (what users get; tests/test_simulator.py checks it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

if "airflow.configuration" in sys.modules or "airflow.settings" in sys.modules:
    raise RuntimeError(
        "Airflow was imported before tests/conftest.py could point it at a temporary AIRFLOW_HOME "
        "(most likely by a pytest plugin that imports Airflow at module level). Make that import lazy."
    )

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="wa019-airflow-home-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)
(_AIRFLOW_HOME / "dags").mkdir()

for _name in list(os.environ):
    if _name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_")) or _name == "AIRFLOW_CONFIG":
        del os.environ[_name]

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(_AIRFLOW_HOME / "dags"),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__SECRETS__USE_CACHE": "False",
    }
)

# Everything below may import Airflow.
import inspect  # noqa: E402
from collections.abc import Iterable, Iterator  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from airflow_support import (  # noqa: E402
    FAST,
    WA019_CONN_ID,
    ConnectionSetter,
    SimulatorFactory,
    ensure_airflow_db,
    set_connection_env,
)

from airflow_provider_wa019.testing import WhatsAppSimulator  # noqa: E402

_SIMULATOR_ARGS = frozenset(inspect.signature(WhatsAppSimulator).parameters)
_UNSET: Any = object()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated metadata DB for this pytest process; returns AIRFLOW_HOME."""
    ensure_airflow_db()
    return _AIRFLOW_HOME


@pytest.fixture
def wa019_env(monkeypatch: pytest.MonkeyPatch) -> ConnectionSetter:
    """Set a wa019 connection through ``AIRFLOW_CONN_<ID>`` for this test only.

    Usage::

        def test_x(wa019_env):
            wa019_env(host="http://127.0.0.1:8080", password="tok", sender="972771234567")
            result = run_dag(my_dag)   # tasks see conn id "wa019_default"

        wa019_env(sim, conn_id="wa019_old", password="revoked", **FAST)  # to a simulator

    Given a simulator, host, password and sender default to its own; otherwise to no host, the
    password ``"tok"`` and the sender ``"972771234567"``. None leaves a field out; other keyword
    arguments are extras. Returns the dict that was stored (JSON form). monkeypatch removes the
    variable after the test; Airflow does not cache connections here (``[secrets] use_cache`` is
    off), so the next test never sees a stale one. ``airflow dags test`` subprocesses inherit it.
    """

    def _set(
        sim: WhatsAppSimulator | None = None,
        /,
        *,
        host: str | None = _UNSET,
        password: str | None = _UNSET,
        sender: str | None = _UNSET,
        port: int | None = None,
        conn_id: str = WA019_CONN_ID,
        conn_type: str = "wa019",
        **extra: object,
    ) -> dict[str, object]:
        if host is _UNSET:
            host = sim.base_url if sim is not None else None
        if password is _UNSET:
            password = sim.token if sim is not None else "tok"
        if sender is _UNSET:
            sender = sim.sender if sim is not None else "972771234567"
        if sender is not None:
            extra = {"sender": sender, **extra}
        return set_connection_env(
            monkeypatch, conn_id, conn_type=conn_type, host=host, password=password, port=port, extra=extra
        )

    return _set


@pytest.fixture
def make_sim(wa019_env: ConnectionSetter) -> Iterator[SimulatorFactory]:
    """Start simulators (:class:`WhatsAppSimulator`) for this test, each stopped at its end.

    ``make_sim(**kwargs)`` splits its keyword arguments: those :class:`WhatsAppSimulator` takes
    (``token``, ``senders``, ``templates``, ``latency``, ``now``, ...) start the simulator; the
    rest go to ``wa019_env`` on top of ``FAST`` (extras such as ``timeout``, or ``password``).
    ``connection``: True (the default) points ``wa019_default`` at it, a string names another
    connection id, False sets none. ``open_windows``: numbers that wrote to us just now.
    Returns the started simulator::

        @pytest.fixture
        def sim(make_sim):
            return make_sim(templates=TEMPLATES, open_windows=[CLIENT])
    """
    with ExitStack() as stack:

        def make(
            *, connection: bool | str = True, open_windows: Iterable[str] = (), **kwargs: Any
        ) -> WhatsAppSimulator:
            sim_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in _SIMULATOR_ARGS}
            sim = stack.enter_context(WhatsAppSimulator(**sim_kwargs))
            for number in open_windows:
                sim.open_window(number)
            if connection:
                conn_id = WA019_CONN_ID if connection is True else connection
                wa019_env(sim, conn_id=conn_id, **{**FAST, **kwargs})
            return sim

        yield make
