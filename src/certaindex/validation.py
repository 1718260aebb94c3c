"""Argument checks shared by the settings dataclasses."""

from __future__ import annotations

from typing import Iterable


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ValueError with the message of the first failed check: one clear line per mistake."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
