"""Provider metadata read by Airflow (entry point ``apache_airflow_provider``).

The api-server builds the connection form from this dict alone, without importing the hook,
so everything the form shows is declared here.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_wa019 import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe the provider, its hook, connection type and form to Airflow."""
    return {
        "package-name": "airflow-provider-wa019",
        "name": "019sms WhatsApp",
        "description": "Send WhatsApp messages through the 019sms WhatsApp Business API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "019sms WhatsApp",
                "external-doc-url": "https://019sms.co.il",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "019sms WhatsApp",
                "python-modules": ["airflow_provider_wa019.hooks.whatsapp"],
            }
        ],
        "operators": [
            {
                "integration-name": "019sms WhatsApp",
                "python-modules": [
                    "airflow_provider_wa019.operators.whatsapp",
                    "airflow_provider_wa019.operators.bulk",
                    "airflow_provider_wa019.operators.reply",
                ],
            }
        ],
        "notifications": [
            "airflow_provider_wa019.notifications.whatsapp.WhatsAppNotifier",
            "airflow_provider_wa019.notifications.hitl.WhatsAppHITLNotifier",
        ],
        # No "plugins" list: the webhook plugin is registered through the airflow.plugins entry
        # point, which Airflow loads whatever [core] lazy_discover_providers says. Airflow reads
        # this list only with lazy discovery off, and then 3.3 reports the same plugin found
        # twice as a plugin import error ("already registered, skipping").
        "connection-types": [
            {
                "connection-type": "wa019",
                "hook-class-name": "airflow_provider_wa019.hooks.whatsapp.WhatsAppHook",
                "hook-name": "019sms WhatsApp",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"password": "API token", "host": "Base URL"},
                    "placeholders": {
                        "password": "Bearer token from the 019 console",
                        "host": "https://019sms.co.il",
                        "extra": '{"proxies": {"https": "http://proxy:3128"}}',
                    },
                },
                "conn-fields": {
                    "sender": {
                        "label": "Sender number",
                        "description": "Your WhatsApp account, international digits without + (972771234567).",
                        "schema": {"type": ["string", "null"], "pattern": r"^\+?[0-9 ()\-]{8,20}$"},
                    },
                    "default_region": {
                        "label": "Default region",
                        "description": "Two-letter region for numbers written without a country code "
                        "(IL turns 050-123-4567 into 972501234567).",
                        "schema": {"type": ["string", "null"], "pattern": "^[A-Za-z]{2}$"},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Connect and read timeout of each request. Default 5 s connect, 30 s read.",
                        "schema": {"type": ["number", "null"], "minimum": 0.1},
                    },
                    "max_attempts": {
                        "label": "Tries of a transient failure",
                        "description": "Reason 6, HTTP 429/502/503/504 and failed connects are tried "
                        "this many times (default 3). Never anything that may have been delivered.",
                        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 10},
                    },
                    "send_path": {
                        "label": "Send endpoint path",
                        "description": "Override of /api/whatsapp/sendMessage.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "template_path": {
                        "label": "Template endpoint path",
                        "description": "Override of /api/whatsapp/sendTemplate.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "templates_path": {
                        "label": "Template listing path",
                        "description": "Override of /whatsapp-api/get-phone-templates/{phone}.",
                        "schema": {"type": ["string", "null"]},
                    },
                    # The webhook (POST <api-server>/wa019/webhook/<conn_id>): off without a secret.
                    "webhook_secret": {
                        "label": "Webhook secret",
                        "description": "Turns on receiving messages at /wa019/webhook/<connection id> "
                        "of the api-server. Give the platform that URL with ?secret=<this value>. "
                        "A long random value; a change takes effect within 5 s.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "webhook_allowed_ips": {
                        "label": "Webhook allowed addresses",
                        "description": "Addresses or networks (CIDR) that may deliver, separated by "
                        "commas, e.g. the platform's published sender addresses. Empty: any address.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "webhook_trusted_proxies": {
                        "label": "Webhook trusted proxies",
                        "description": "Your reverse proxies (addresses or CIDR, comma-separated): "
                        "X-Forwarded-For is read only from these. Empty: the socket peer is the client.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
