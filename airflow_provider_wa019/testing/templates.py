"""The account's message templates: registering, listing, and rendering one for a send.

:class:`TemplateBook` holds them (all senders share them); :func:`render` fills one with a send's
``bodyVariableN`` values, refusing what WhatsApp refuses, by the rules of
:mod:`airflow_provider_wa019.api` (placeholders, variable limits, text limits). No lock (the
model holds its own around every call) and no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow_provider_wa019.api import (
    MAX_TEMPLATE_CHARS,
    MAX_TEMPLATE_VARIABLES,
    Reason,
    count_placeholders,
    fill_template,
    template_variable_problem,
)
from airflow_provider_wa019.testing.records import Refusal


def template_arguments(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` as ``add_template`` arguments: the listing's ``templateId`` spelling is taken too."""
    arguments = dict(spec)
    if "templateId" in arguments:
        arguments["template_id"] = arguments.pop("templateId")
    return arguments


class TemplateBook:
    """The templates, in the order they were registered, with ids handed out from 1."""

    def __init__(self) -> None:
        self._templates: list[dict[str, Any]] = []
        self._next_id = 1

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Register ``entry`` (a template as the listing shows it, ``templateId`` None for the
        next free id); one with the same name and language replaces the old one. Returns a copy."""
        entry = dict(entry)
        if entry["templateId"] is None:
            entry["templateId"] = self._next_id
            self._next_id += 1
        entry["templateId"] = str(entry["templateId"])
        key = (entry["name"], entry["language"])
        self._templates = [t for t in self._templates if (t["name"], t["language"]) != key]
        self._templates.append(entry)
        return dict(entry)

    def listing(self) -> list[dict[str, Any]]:
        """Copies of every template, as ``get-phone-templates`` lists them."""
        return [dict(t) for t in self._templates]

    def sendable(self, name: str) -> dict[str, Any]:
        """The template a send of ``name`` uses: the latest of that name, which must be approved.

        :raises Refusal: reason 2, no such template or not approved.
        """
        template = next((t for t in reversed(self._templates) if t["name"] == name), None)
        if template is None:
            raise Refusal(Reason.BAD_SENDER_OR_JSON, f"no template named {name!r}")
        if str(template["status"]).lower() != "approved":
            raise Refusal(
                Reason.BAD_SENDER_OR_JSON, f"template {name!r} is {template['status']}, not approved"
            )
        return template


def render(template: Mapping[str, Any], variables: Mapping[int, Any]) -> str:
    """The text ``template`` sends with ``variables`` (``{n: bodyVariable<n>}``).

    :raises Refusal: reason 2, for variables the template does not take (or lacks), values that
        are empty, not text or refused by WhatsApp, or a text over ``MAX_TEMPLATE_CHARS``.
    """
    body = str(template["body"])
    needed = count_placeholders(body)
    name = template["name"]
    if any(i < 1 or i > MAX_TEMPLATE_VARIABLES for i in variables):
        raise Refusal(
            Reason.BAD_SENDER_OR_JSON,
            f"only bodyVariable1..bodyVariable{MAX_TEMPLATE_VARIABLES} exist",
        )
    if set(variables) != set(range(1, needed + 1)):
        raise Refusal(
            Reason.BAD_SENDER_OR_JSON,
            f"template {name!r} takes {needed} variable(s) (bodyVariable1..{needed}), "
            f"got {sorted(variables) or 'none'}",
        )
    for i in sorted(variables):
        value = variables[i]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
            raise Refusal(Reason.BAD_SENDER_OR_JSON, f"bodyVariable{i} is empty or not text")
        # Meta refuses the whole send (error 132018); 019 answers it like its other refusals.
        problem = template_variable_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise Refusal(Reason.BAD_SENDER_OR_JSON, f"bodyVariable{i}: {problem}")
    text = fill_template(body, [str(variables[i]) for i in range(1, needed + 1)])
    if len(text) > MAX_TEMPLATE_CHARS:
        raise Refusal(
            Reason.BAD_SENDER_OR_JSON,
            f"template {name!r} with its variables has {len(text)} characters; at most {MAX_TEMPLATE_CHARS}",
        )
    return text
