"""End-to-end tests: the provider in a real Airflow deployment, set up the way a user would.

One deployment per pytest session (``deployment`` fixture), started from nothing:

1. Debian's ``postgresql`` and ``chromium`` packages, installed with apt-get if missing (as root,
   no stdin; ``apt-get update`` only when something is missing);
2. the provider's simulator (``python -m airflow_provider_wa019.testing``) as its own process;
3. a throw-away PostgreSQL cluster on 127.0.0.1 (free port, temporary folder, run as the
   ``postgres`` user when the tests run as root), with an ``airflow`` database;
4. ``airflow db migrate``, then ``airflow api-server``, ``airflow scheduler``,
   ``airflow dag-processor`` and ``airflow triggerer`` (deferred tasks, deadline alerts' async
   callbacks) on 127.0.0.1 with LocalExecutor, the repo's ``example_dags`` as the DAGs folder and
   the simple auth manager (all users admins), configured through ``AIRFLOW__...`` variables
   only; ``start`` waits until ``/api/v2/monitor/health`` reports all four healthy;
5. a JWT from ``POST /auth/token``, sent on every REST call.

Everything the tests start runs in its own process group with its output in
``<output folder>/logs/<name>.log`` (task logs under ``airflow-home/logs``); the output folder
is printed at the end of the run. At the end every process group is stopped, then any process
still carrying this run's marker variable is killed, and the teardown fails if one survives.

Skipped only when ``WA019_SKIP_E2E=1`` (``bash scripts/test.sh --skip-e2e``), with the reason
shown in pytest's summary. A prerequisite that cannot be installed or started fails the tests.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from e2e_deployment import (
    CONN_ID,
    CUSTOMER,
    ON_CALL,
    SENDER,
    Deployment,
    DeploymentError,
    ensure_debian_packages,
    marked_pids,
)

SKIP_VAR = "WA019_SKIP_E2E"
E2E_DIR = Path(__file__).resolve().parent


_output_key = pytest.StashKey[Path]()
_notes_key = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get(SKIP_VAR) == "1"
    for item in items:
        if E2E_DIR not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if skip:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"{SKIP_VAR}=1 (scripts/test.sh --skip-e2e): end-to-end tests against a real "
                    "Airflow deployment were skipped on request"
                )
            )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item (``item.rep_call``): fixtures can see a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    out = config.stash.get(_output_key, None)
    if out is None:
        return
    terminalreporter.write_sep("-", "wa019 end-to-end")
    terminalreporter.write_line(f"output folder (process logs, task logs, screenshots): {out}")
    for note in config.stash.get(_notes_key, []):
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def e2e_notes(pytestconfig: pytest.Config) -> list[str]:
    """Lines printed in the end-of-run summary (screenshot paths, known upstream quirks seen)."""
    return pytestconfig.stash.setdefault(_notes_key, [])


@pytest.fixture(scope="session")
def e2e_output(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    out = tmp_path_factory.mktemp("wa019-e2e")
    pytestconfig.stash[_output_key] = out
    return out


@pytest.fixture(scope="session")
def sim_token() -> str:
    """The token the simulator accepts (and the connection carries); random, so a leak is findable."""
    return f"e2e-token-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def webhook_secret() -> str:
    """The connection's ``webhook_secret``: random, so a leak into any log is findable."""
    return f"e2e-hook-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def deployment(e2e_output: Path, sim_token: str) -> Iterator[Deployment]:
    """The running deployment: simulator, PostgreSQL, api-server, scheduler, dag-processor, triggerer."""
    (e2e_output / "logs").mkdir(exist_ok=True)
    try:
        tools = ensure_debian_packages(e2e_output / "logs")
    except DeploymentError as err:
        problem = f"end-to-end prerequisites: {err}"
    else:
        problem = ""
    if problem:  # outside the except block: the message alone, without a chained traceback
        pytest.fail(problem, pytrace=False)
    dep = Deployment(
        out_dir=e2e_output,
        run_id=uuid.uuid4().hex,
        tools=tools,
        sim_token=sim_token,
        sender=SENDER,
        open_windows=sorted({CUSTOMER, *ON_CALL}),
    )
    try:
        try:
            dep.start()
        except DeploymentError as err:
            problem = f"the Airflow deployment did not start: {err}"
        if problem:
            pytest.fail(problem, pytrace=False)
        yield dep
    finally:
        dep.stop()
    left = marked_pids(dep.run_id)
    if dep.swept or left:
        pytest.fail(
            "processes outlived their process groups and had to be killed one by one: "
            f"{dep.swept}; still running: {left}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def wa019_conn(deployment: Deployment, sim_token: str, webhook_secret: str) -> dict[str, object]:
    """``wa019_default`` created through the REST API, as a user or a deployment script would."""
    body = deployment.api.call(
        "POST",
        "/api/v2/connections",
        expected=(201,),
        json={
            "connection_id": CONN_ID,
            "conn_type": "wa019",
            "host": deployment.sim_url,
            "password": sim_token,
            "extra": json.dumps({"sender": SENDER, "webhook_secret": webhook_secret}),
        },
    ).json()
    assert body["password"] == "***", "the API must never echo the token"
    return body


@pytest.fixture(autouse=True)
def _still_running_after_each_test(deployment: Deployment) -> Iterator[None]:
    """Every component must still run after each test; a crash names the log to read."""
    yield
    deployment.ensure_running()
