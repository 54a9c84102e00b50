"""Colour for people: only on a terminal, never when ``NO_COLOR`` is set (no-color.org) or ``TERM=dumb``."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

CODES = {
    "error": "1;31",  # bold red
    "warn": "33",
    "ok": "32",
    "code": "1",  # bold: the user code of a device login
    "dim": "2",
    "command": "36",  # a command to run
}


def colour_on(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def paint(text: str, role: str, stream: TextIO) -> str:
    """``text`` in the colour of ``role`` when ``stream`` shows colour; else unchanged."""
    if not colour_on(stream):
        return text
    return f"\033[{CODES[role]}m{text}\033[0m"
