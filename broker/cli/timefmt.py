"""Durations for people."""

from __future__ import annotations


def until(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds <= 0:
        return "expired"
    seconds = int(seconds)
    if seconds < 120:
        return f"in {seconds}s"
    if seconds < 7200:
        return f"in {seconds // 60}m"
    if seconds < 172800:
        return f"in {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"in {seconds // 86400}d"


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds_in(text: str) -> float:
    """``90``, ``45s``, ``15m``, ``1h``, ``2d``: how many seconds; ``BadRequest`` for anything else."""
    from broker.core.errors import BadRequest

    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise BadRequest(f"{text!r} is no duration", "write it like 90, 45s, 15m, 1h or 2d") from None
    if value < 0:
        raise BadRequest(f"{text!r} is no duration", "write it like 90, 45s, 15m, 1h or 2d")
    return value * UNITS[unit]
