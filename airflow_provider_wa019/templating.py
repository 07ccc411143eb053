"""What templating leaves of an operator's or notifier's arguments, made into what the hook takes.

Jinja renders a list from XCom as its text (``"['Dana', 'A-7']"``) unless the DAG renders native
objects; these helpers read such text back. Imported by the operators and the notifier at run
time; pure Python.
"""

from __future__ import annotations

from typing import Any

__all__ = ["recipient_list", "template_variables"]


def template_variables(value: Any) -> Any:
    """Template variables as templating left them, made into a list where that is meant.

    A string that is a list or tuple literal (what Jinja makes of an XCom list without
    ``render_template_as_native_obj``) becomes that list; any other string is one value. Other
    values pass through for the hook to check.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith(("[", "(")):
        import ast

        try:
            parsed = ast.literal_eval(text)
        # TypeError: "[{[1]: 2}]" (an unhashable key) is no literal either.
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (list, tuple)):
            return list(parsed)
    return [value]


def recipient_list(value: Any) -> list[str]:
    """One or several numbers: a list, a list literal (an XCom or Variable list rendered as text)
    or comma-separated numbers. Phone numbers never contain commas."""
    if not isinstance(value, str):
        return [str(n) for n in value]
    parsed = template_variables(value)
    if len(parsed) == 1 and "," in value and not value.lstrip().startswith(("[", "(")):
        parsed = value.split(",")
    return [str(n).strip() for n in parsed if str(n).strip()]
