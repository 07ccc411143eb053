"""The Add Connection form in a real browser: Debian's headless Chromium driven by Playwright.

The React UI builds the form from the provider info alone (``connection-types`` in
``get_provider_info()``), so this is where a lost ``hook-name``, relabeling, hidden field or
``conn-fields`` entry shows. The connection is then read back through the REST API and tested by
the api-server, which proves that what was typed (the token in a password field) was saved.

Chromium comes from Debian's ``chromium`` package (``/usr/bin/chromium``); Playwright's own
browser download (``playwright install``) is never used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_deployment import MARKER_VAR, SENDER, Deployment, dumps

UI_CONN_ID = "wa019_from_ui"
TYPE_NAME = "019sms WhatsApp"  # hook-name in get_provider_info()
UI_TIMEOUT_MS = 20_000

#: As the probe of this machine kind ran Debian's Chromium: no sandbox as root, and no background
#: traffic (the network beyond 127.0.0.1 is closed).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]


@pytest.fixture
def page(deployment: Deployment, request: pytest.FixtureRequest, e2e_notes: list[str]) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(
            f"the browser check needs the playwright package from the test extra ({err}); "
            "install it with `pip install -e '.[test]'` (never `playwright install`: the browser "
            "is Debian's chromium)",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(deployment.tools.chromium),
            headless=True,
            args=CHROMIUM_ARGS,
            env={**os.environ, MARKER_VAR: deployment.run_id},  # swept at the end if left over
            timeout=60_000,
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1000})
            context.set_default_timeout(UI_TIMEOUT_MS)
            page = context.new_page()
            yield page
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                shot = deployment.out_dir / "screenshots" / "failure.png"
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                e2e_notes.append(f"screenshot of the page when the browser check failed: {shot}")
        finally:
            browser.close()


def _field_group(dialog: Any, label: str) -> Any:
    """The form field (role=group) whose label reads ``label``.

    Airflow 3.3.2 renders the extra fields with a ``<label for=...>`` that does not match the
    input's id, so ``get_by_label`` cannot find them; the label and the input share a group.
    """
    return dialog.get_by_role("group").filter(
        has=dialog.page.locator("label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*\*?\s*$"))
    )


def test_add_connection_form_in_chromium(
    deployment: Deployment, page: Any, sim_token: str, e2e_notes: list[str]
) -> None:
    from playwright.sync_api import expect

    dep = deployment
    shots = dep.out_dir / "screenshots"
    shots.mkdir(exist_ok=True)

    # Admin -> Connections -> Add Connection, as a user clicks it.
    page.goto(f"{dep.api_url}/", wait_until="domcontentloaded", timeout=60_000)
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    expect(page).to_have_url(re.compile(r"/connections$"))
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()

    dialog.get_by_label("Connection ID").fill(UI_CONN_ID)
    conn_type = dialog.get_by_role("combobox", name="Connection Type")
    conn_type.fill("019sms")
    option = page.get_by_role("option", name=TYPE_NAME, exact=True)
    expect(option, f"no connection type named {TYPE_NAME!r} (hook-name in provider info)").to_be_visible()
    option.click()

    # Standard fields: relabeled, with the unused ones hidden.
    host = dialog.get_by_label("Base URL", exact=True)
    token = dialog.get_by_label("API token", exact=True)
    expect(host, "no 'Base URL' field: relabeling of host lost?").to_be_visible()
    expect(token, "no 'API token' field: relabeling of password lost?").to_be_visible()
    expect(token, "the token must be a password input").to_have_attribute("type", "password")
    expect(host).to_have_attribute("placeholder", "https://019sms.co.il")
    for name in ("login", "port", "schema"):
        expect(dialog.locator(f"[name='{name}']"), f"the unused field {name!r} is shown").to_have_count(0)
    for label in ("Login", "Port", "Schema", "Host", "Password"):
        expect(_field_group(dialog, label), f"a field labelled {label!r} is shown").to_have_count(0)

    host.fill(dep.sim_url)
    token.fill(sim_token)
    _screenshot(dialog, shots / "connection-form-standard-fields.png", e2e_notes)

    # Extra fields from conn-fields, saved into extra under their bare names.
    dialog.get_by_role("button", name="Extra Fields", exact=True).click()
    sender = _field_group(dialog, "Sender number")
    expect(sender, "no 'Sender number' extra field (conn-fields in provider info)").to_have_count(1)
    sender.locator("input").fill(SENDER)
    expect(sender).to_contain_text("972771234567")  # the field's description
    page.set_viewport_size({"width": 1280, "height": 1800})  # the whole list of extra fields
    _screenshot(dialog, shots / "connection-form-extra-fields.png", e2e_notes)

    with page.expect_response(
        lambda r: r.url.endswith("/api/v2/connections") and r.request.method == "POST"
    ) as saved:
        dialog.get_by_role("button", name="Save").click()
    assert saved.value.status == 201, f"saving the form answered {saved.value.status}: {saved.value.text()}"
    expect(dialog).to_be_hidden()
    row = page.get_by_role("row").filter(has_text=UI_CONN_ID)
    expect(row).to_have_count(1)

    # Read back through the REST API.
    conn = dep.api.get(f"/api/v2/connections/{UI_CONN_ID}")
    assert conn["conn_type"] == "wa019", dumps(conn)
    assert conn["host"] == dep.sim_url, dumps(conn)
    assert conn["password"] == "***", "the token was not saved, or the API echoed it"
    assert (conn["login"], conn["schema"], conn["port"]) == (None, None, None), dumps(conn)
    extra = json.loads(conn["extra"])
    assert extra["sender"] == SENDER, dumps(conn)
    assert set(extra) >= {"sender", "default_region", "timeout", "max_attempts"}, dumps(conn)

    # The api-server runs the hook's test_connection() with what was saved (given the id alone,
    # Airflow 3.2+ tests the stored connection): the simulator accepts only the right token, so
    # this also proves the password field kept it intact.
    result = dep.api.call(
        "POST", "/api/v2/connections/test", json={"connection_id": UI_CONN_ID, "conn_type": "wa019"}
    ).json()
    assert result["status"] is True, f"test_connection() of the connection saved from the form: {result}"

    _check_test_button(page, row, e2e_notes)


def _screenshot(dialog: Any, path: Path, notes: list[str]) -> None:
    dialog.screenshot(path=str(path))
    assert path.stat().st_size > 10_000, f"the screenshot {path} looks empty"
    notes.append(f"screenshot of the connection form: {path}")


def _check_test_button(page: Any, row: Any, notes: list[str]) -> None:
    """The Test button on the list row: works, or fails only with Airflow 3.3.2's known bug.

    Airflow 3.3.2's UI posts ``port: 0`` for a connection without a port; the api-server takes it
    for another endpoint and answers HTTP 400 (fixed upstream, not released yet). Any other
    failure, or a failing test_connection(), fails this test.
    """
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as tested:
        row.get_by_role("button", name="Test Connection").click()
    resp = tested.value
    sent = json.loads(resp.request.post_data or "{}")
    if resp.status == 400 and sent.get("port") == 0 and "differs from the stored connection" in resp.text():
        notes.append(
            "UI Test button: HTTP 400 because the UI sent port 0 (known Airflow 3.3.2 bug, see README "
            "troubleshooting); test_connection() itself passed through POST /api/v2/connections/test"
        )
        return
    assert resp.status == 200, f"the UI's Test button got HTTP {resp.status}: {resp.text()} (sent {sent})"
    assert resp.json()["status"] is True, resp.text()
