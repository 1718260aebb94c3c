"""Argument checks shared by the settings dataclasses."""

from __future__ import annotations

import json
from typing import Any, Iterable


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first failed check: one clear line per mistake."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def json_object_line(line: str, where: str, error: type[Exception], *, column: bool = False) -> dict[str, Any]:
    """One line of a JSON Lines file as a JSON object, or ``error`` with one line naming ``where``
    (``file:line``): the check every JSON Lines reader makes before reading its fields."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        at = f" at column {exc.colno}" if column else ""
        raise error(f"{where}: not valid JSON ({exc.msg}{at})") from None
    if not isinstance(value, dict):
        raise error(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def parse_json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    """A command-line JSON object (e.g. ``--extra-body``); None when not given."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object")
    return value
