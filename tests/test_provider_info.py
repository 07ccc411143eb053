"""Provider registration: the metadata Airflow reads, checked against Airflow's own schemas."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema
import pytest

from airflow_provider_wa019.get_provider_info import get_provider_info

AIRFLOW_DIR = Path(airflow.__file__).parent


def test_provider_info_matches_airflows_runtime_schema():
    schema = json.loads((AIRFLOW_DIR / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_connection_form_matches_the_provider_yaml_schema():
    # provider_info.schema.json does not describe conn-fields / ui-field-behaviour; the
    # provider.yaml schema does, and the api-server builds the form from exactly these keys.
    yaml_schema = json.loads((AIRFLOW_DIR / "provider.yaml.schema.json").read_text())
    conn_schema = yaml_schema["properties"]["connection-types"]
    info = get_provider_info()
    jsonschema.validate(info["connection-types"], conn_schema)
    [conn] = info["connection-types"]
    assert conn["connection-type"] == "wa019"
    assert set(conn["ui-field-behaviour"]["hidden-fields"]) == {"schema", "login", "port"}
    assert conn["ui-field-behaviour"]["relabeling"] == {"password": "API token", "host": "Base URL"}
    assert {"sender", "timeout", "default_region", "send_path"} <= set(conn["conn-fields"])


def test_hook_form_methods_for_older_airflow_match_provider_info():
    # Airflow < 3.2 asks the hook instead of reading provider info: both must say the same.
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    [conn] = get_provider_info()["connection-types"]
    behaviour = WhatsAppHook.get_ui_field_behaviour()
    assert behaviour["hidden_fields"] == conn["ui-field-behaviour"]["hidden-fields"]
    assert behaviour["relabeling"] == conn["ui-field-behaviour"]["relabeling"]
    assert behaviour["placeholders"] == conn["ui-field-behaviour"]["placeholders"]


def test_prefixed_extras_from_older_forms_are_read(wa019_env):
    from airflow_provider_wa019.hooks.whatsapp import WhatsAppHook

    wa019_env(password="t", sender=None, extra__wa019__sender="972771234567", extra__wa019__timeout="7")
    settings = WhatsAppHook().settings
    assert (settings.sender, settings.timeout) == ("972771234567", (7.0, 7.0))


def test_everything_named_in_provider_info_imports():
    info = get_provider_info()
    assert info["package-name"] == importlib.metadata.metadata("airflow-provider-wa019")["Name"]
    for conn in info["connection-types"]:
        module, _, name = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert hook.conn_type == conn["connection-type"]
        assert hook.default_conn_name == "wa019_default"
    for section in ("hooks", "operators"):
        for entry in info[section]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for dotted in info.get("notifications", []):
        module, _, name = dotted.rpartition(".")
        getattr(importlib.import_module(module), name)


def test_entry_point_is_registered():
    [ep] = [
        ep
        for ep in importlib.metadata.entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_wa019")
    ]
    assert ep.load()() == get_provider_info()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["providers", "list", "--output", "json"], "airflow-provider-wa019"),
        (["providers", "hooks", "--output", "json"], "airflow_provider_wa019.hooks.whatsapp.WhatsAppHook"),
    ],
)
def test_airflow_cli_lists_the_provider(command, expected):
    out = subprocess.run(
        [sys.executable, "-m", "airflow", *command], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert expected in out
