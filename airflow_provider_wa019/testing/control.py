"""The ``/__sim__/...`` control endpoints: drive a simulator from another process over HTTP.

A demo script or an end-to-end test against a real Airflow deployment sets up scenarios and
reads the record with these; each one calls a public method of the
:class:`~airflow_provider_wa019.testing.model.Platform`:

=========================  ====================================================================
``GET  requests``           ``requests`` (as :meth:`RecordedRequest.to_dict`)
``GET  sent``               ``sent`` (``at`` as ISO text)
``GET  clock``              ``now()``
``GET  templates``          ``templates``
``POST open-window``        ``open_window(number, at, sender=...)``
``POST faults``             ``fail_next(**body)``
``POST templates``          ``add_template(**body)`` (``templateId`` taken too)
``POST reset``              ``reset()``
``POST clock``              ``set_time(set)``, ``advance(minutes=, seconds=)`` or real time
``POST webhook``            ``set_webhook(url, secret)``
``POST client-says``        ``client_says(number, text, quote=, type=, sender=, sender_name=,
                            times=, secret=, body=)``
``GET  deliveries``         ``deliveries`` (as :meth:`Delivery.to_dict`)
=========================  ====================================================================

Control requests are never recorded and never faulted. Bad input is a 400 with the error's text,
never a dropped connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from airflow_provider_wa019.testing.checks import check_number
from airflow_provider_wa019.testing.model import Platform
from airflow_provider_wa019.testing.records import Response
from airflow_provider_wa019.testing.templates import template_arguments

#: Paths under this are control requests.
CONTROL_PREFIX = "/__sim__/"


def answer_control(platform: Platform, method: str, path: str, raw: bytes) -> Response:
    """Answer one control request to ``platform``."""
    action = path[len(CONTROL_PREFIX) :].strip("/")
    try:
        data = json.loads(raw) if raw.strip() else {}
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        if method == "GET" and action == "requests":
            return Response.json(200, [r.to_dict() for r in platform.requests])
        if method == "GET" and action == "sent":
            return Response.json(200, [{**m, "at": m["at"].isoformat()} for m in platform.sent])
        if method == "GET" and action == "clock":
            return _clock(platform)
        if method == "GET" and action == "templates":
            return Response.json(200, platform.templates)
        if method == "POST" and action == "open-window":
            number = _json_string(data, "number")
            if not number:
                raise ValueError("'number' is required")
            platform.open_window(number, data.get("at"), sender=_json_string(data, "sender"))
            return _ok()
        if method == "POST" and action == "faults":
            _json_string(data, "to")  # fail_next takes an int too; JSON may not (see _json_string)
            platform.fail_next(**data)
            return _ok(pending=platform.pending_faults)
        if method == "POST" and action == "templates":
            return _ok(template=platform.add_template(**template_arguments(data)))
        if method == "POST" and action == "reset":
            platform.reset()
            return _ok()
        if method == "POST" and action == "clock":
            _set_clock(platform, data)
            return _clock(platform)
        if method == "GET" and action == "deliveries":
            return Response.json(200, [d.to_dict() for d in platform.deliveries])
        if method == "POST" and action == "webhook":
            platform.set_webhook(_json_string(data, "url"), _json_string(data, "secret"))
            return _ok()
        if method == "POST" and action == "client-says":
            number = _json_string(data, "number")
            if not number or "text" not in data:
                raise ValueError("'number' and 'text' are required")
            options = {k: v for k, v in data.items() if k not in ("number", "text")}
            return _ok(**platform.client_says(number, data["text"], **options))
    except (TypeError, ValueError, OverflowError, RecursionError) as err:
        # Bad input: tell the caller, never crash.
        return Response.json(400, {"ok": False, "error": str(err)})
    return Response.json(404, {"ok": False, "error": f"no such control endpoint: {method} {path}"})


def _ok(**fields: Any) -> Response:
    return Response.json(200, {"ok": True, **fields})


def _clock(platform: Platform) -> Response:
    return _ok(now=platform.now().isoformat())


def _set_clock(platform: Platform, data: Mapping[str, Any]) -> None:
    if data.get("set") is not None:
        platform.set_time(data["set"])
    elif "advance_minutes" in data or "advance_seconds" in data:
        # JSON numbers only: float("90") or float(true) would hide a client's mistake.
        platform.advance(
            minutes=_json_number(data, "advance_minutes"),
            seconds=_json_number(data, "advance_seconds"),
        )
    elif data.get("real_time"):
        platform.set_time(None)
    else:
        raise ValueError("give 'set' (ISO time), 'advance_minutes' or 'real_time': true")


def _json_string(data: Mapping[str, Any], key: str) -> str | None:
    """A control request's ``key`` (None when absent or null), which must be a JSON string.

    Phone numbers must be strings there: a JSON number past 2**53 loses digits in many encoders.
    """
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a JSON string, not {type(value).__name__}: {value!r:.60}")
    return value


def _json_number(data: Mapping[str, Any], key: str) -> float:
    """A control request's ``key`` (0 when absent), which must be a finite JSON number."""
    return check_number(key, data[key]) if key in data else 0.0
